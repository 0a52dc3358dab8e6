"""Hardening of the reply path (issue 12): each case as it was reproduced, and its control.

Unit cases send mock replies through ``Message`` to the strategies
``build_strategy`` makes; integration cases run the real ServerApp code
against the real ClientApp in process (``InProcessGrid``) on the small
checkerboard log.
"""

import itertools
import json
import logging
import math
import re
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian

from fedrec_flwr.app.client_app import client_fn, partition_query
from fedrec_flwr.client.adapter import numpy_client_app
from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.datasets import prepare_data
from fedrec_flwr.runs import federated
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.strategies import (
    PartitionMismatchError,
    ValidatedStrategy,
    WeightedFedAvg,
    check_user_sums,
    clip_bound,
    exact_metric_aggregation,
    order_replies,
    update_norm,
)
from fedrec_flwr.strategies.registry import STRATEGIES, build_strategy
from fedrec_flwr.testing.inprocess import InProcessGrid

ROWS = 5
GLOBAL = {
    "item_gmf.weight": np.linspace(-1, 1, ROWS * 3, dtype=np.float32).reshape(ROWS, 3),
    "output.weight": np.ones((1, 3), dtype=np.float32),
    "output.bias": np.array(0.5, dtype=np.float32),
}
HONEST_WEIGHTS = [10, 20, 30, 40]
K = 5  # num-partitions every honest reply reports
SMALL = {"factors": 8, "mlp-layers": "16,8", "batch-size": 64, "top-k": "1"}


pytestmark = pytest.mark.usefixtures("server_identity")


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("flwr").setLevel(logging.WARNING)


class _Grid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _record(arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _reply(node, arrays, metrics):
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = _record(arrays)
    return Message(content, reply_to=instruction)


def _metrics(pid, weight, **changes):
    out = {
        "num-examples": weight,
        "num-users": 3,
        "train-loss": 0.1 * (pid + 1),
        "partition-id": pid,
        "num-partitions": K,
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def _honest_arrays(k, glob=GLOBAL):
    rng = np.random.default_rng(k)
    return {n: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) for n, v in glob.items()}


def _honest(glob=GLOBAL):
    return [
        _reply(100 + k, _honest_arrays(k, glob), _metrics(k, w))
        for k, w in enumerate(HONEST_WEIGHTS)
    ]


def _strategy(run_config=None, **kwargs):
    cfg = RunConfig.from_mapping(run_config or {})
    return build_strategy(cfg, **kwargs)


def _train(strategy, replies, server_round=1, glob=GLOBAL):
    list(strategy.configure_train(server_round, _record(glob), ConfigRecord(), _Grid([1, 2])))
    return strategy.aggregate_train(server_round, replies)


def _bits(record):
    return {k: v.numpy().tobytes() for k, v in record.items()}


def _dist(a, b):
    return math.sqrt(
        sum(float(((a[k].numpy().astype(float) - b[k].numpy()) ** 2).sum()) for k in a)
    )


# --- case 1: FedOpt's float64 aggregate ----------------------------------------------


def test_fedadam_aggregate_comes_back_in_the_sent_dtypes():
    strategy = ValidatedStrategy(FedAdam(eta=0.1))
    agg, _ = _train(strategy, _honest())
    # Before: float64 came back, and every round-2 reply was dropped for its float32.
    assert {k: str(v.dtype) for k, v in agg.items()} == {k: "float32" for k in GLOBAL}
    bare = FedAdam(eta=0.1)
    list(bare.configure_train(1, _record(GLOBAL), ConfigRecord(), _Grid([1, 2])))
    expected, _ = bare.aggregate_train(1, _honest())
    assert str(expected["output.weight"].dtype) == "float64"  # Flower's own output
    for name in GLOBAL:
        assert agg[name].numpy().tobytes() == expected[name].numpy().astype("float32").tobytes()
    second = {n: v.numpy() for n, v in agg.items()}
    agg2, _ = _train(strategy, _honest(second), server_round=2, glob=second)
    assert not strategy.dropped and agg2 is not None
    assert _dist(agg2, agg) > 0


class _InfStrategy(WeightedFedAvg):
    """A wrapped strategy whose aggregate is not finite (as an overflow would be)."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        arrays["output.weight"] = Array(np.full((1, 3), np.inf, dtype=np.float32))
        return arrays, metrics


def test_a_non_finite_aggregate_keeps_the_previous_model():
    strategy = ValidatedStrategy(_InfStrategy())
    agg, metrics = _train(strategy, _honest())
    # Before: the inf aggregate became the next global model.
    assert agg is None and metrics is not None  # Flower keeps the previous arrays
    assert strategy.rejected == [
        (1, "the aggregate's array 'output.weight' has non-finite values (NaN or inf)")
    ]
    control = ValidatedStrategy(WeightedFedAvg())
    agg, _ = _train(control, _honest())
    assert agg is not None and not control.rejected


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    data = write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())
    # These apps answer train/evaluate only: no delivery after the last round.
    return {
        "data-dir": str(data),
        "num-eval-negatives": 20,
        "learning-rate": 0.01,
        "deliver": "off",
        **SMALL,
    }


def _nodes(n, k=None):
    return [{"partition-id": p, "num-partitions": k or n} for p in range(n)]


def _app(*train_mods):
    app = numpy_client_app(client_fn, train_mods=list(train_mods))
    app.query()(partition_query)
    return app


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_keeps_training_after_round_one(name, rc, tmp_path, monkeypatch, caplog):
    aggregates = []
    original = ValidatedStrategy.aggregate_train

    def spy(self, server_round, replies):
        out = original(self, server_round, replies)
        aggregates.append(out[0])
        return out

    monkeypatch.setattr(ValidatedStrategy, "aggregate_train", spy)
    run = {**rc, "strategy": name, "num-server-rounds": 3}
    grid = InProcessGrid(_app(), _nodes(3), run)
    with caplog.at_level(logging.INFO, logger="flwr"):
        results = json.loads(run_federated(grid, RunConfig.from_mapping(run), tmp_path).read_text())
    assert results["dropped-replies"] == [] and results["rounds-with-dropped-replies"] == []
    assert results["clipped-weights"] == [] and results["num-partitions"] == 3
    assert all(r["replies"] == 6 for r in results["rounds"])  # 3 train + 3 evaluate
    assert len(aggregates) == 3 and all(a is not None for a in aggregates)
    for previous, current in itertools.pairwise(aggregates):
        assert _dist(current, previous) > 0  # the model moved in rounds 2 and 3
        assert all(current[k].numpy().dtype == np.float32 for k in current)
    assert "rounds with dropped replies: none" in caplog.text
    # Every NCF reply reports partition-id and num-partitions (case 10).
    for reply in grid.replies:
        metrics = next(iter(reply.content.metric_records.values()))
        assert metrics["num-partitions"] == 3 and 0 <= metrics["partition-id"] < 3


def _poison(partition):
    def mod(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        if ctx.node_config["partition-id"] == partition and not reply.has_error():
            record = next(iter(reply.content.array_records.values()))
            for name in list(record):
                record[name] = Array(np.full_like(record[name].numpy(), np.nan))
        return reply

    return mod


def test_rounds_with_dropped_replies_are_reported(rc, tmp_path, caplog):
    run = {**rc, "num-server-rounds": 2}
    grid = InProcessGrid(_app(_poison(1)), _nodes(3), run)
    with caplog.at_level(logging.INFO, logger="flwr"):
        results = json.loads(run_federated(grid, RunConfig.from_mapping(run), tmp_path).read_text())
    assert results["rounds-with-failures"] == []  # nothing failed: replies were dropped
    assert results["rounds-with-dropped-replies"] == [1, 2]
    assert re.search(
        r"final test HR@10 \S+ NDCG@10 \S+; rounds with dropped replies: \[1, 2\]", caplog.text
    )


# --- case 2: weight caps and clipping ------------------------------------------------


def _hostile(weight, pid=4, arrays=None, **changes):
    return _reply(999, arrays or _honest_arrays(9), _metrics(pid, weight, **changes))


def test_an_inflated_weight_is_clipped_to_a_multiple_of_the_median():
    # Server holding only the item catalogue: no data-derived cap (max_train = inf).
    strategy = _strategy()
    honest = _honest()
    hostile = _hostile(10**6)
    agg, _ = _train(strategy, [*honest, hostile])
    # Lower median of [10, 20, 30, 40, 1e6] is 30: the claim is clipped to 4 x 30.
    weights = [*HONEST_WEIGHTS, 120]
    arrays = [_honest_arrays(k) for k in range(4)] + [_honest_arrays(9)]
    for name in GLOBAL:
        expected = np.average([a[name] for a in arrays], axis=0, weights=weights)
        np.testing.assert_allclose(agg[name].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert strategy.clipped == [
        {"round": 1, "kind": "train", "node": 999, "partition": 4, "claimed": 1e6, "used": 120.0}
    ]
    # Its share, 120/220, is within the documented bound m / (m + floor(K/2)) = 4/6.
    assert 120 / (sum(HONEST_WEIGHTS) + 120) <= 4 / (4 + 5 // 2)
    # Before: 1e6 of 1e6 + 100 -- the aggregate was the hostile reply's arrays.
    assert _dist(agg, _record(_honest_arrays(9))) > 0.05


def test_honest_weights_are_not_clipped_and_a_weight_beyond_2_53_is_dropped():
    strategy = _strategy()
    agg, _ = _train(strategy, [*_honest(), _hostile(1e300)])
    assert strategy.clipped == []
    assert [(d[1], d[2]) for d in strategy.dropped] == [
        (999, "weight 'num-examples'=1e+300 exceeds 2**53, larger than any count")
    ]
    bare = WeightedFedAvg()
    expected, _ = bare.aggregate_train(1, _honest())
    assert _bits(agg) == _bits(expected)  # exact FedAvg for honest replies


def test_clip_bound_is_the_lower_median_times_the_multiple():
    assert clip_bound([10, 20, 30, 40], 4.0) == 80.0  # lower median 20 (not 25)
    assert clip_bound([7], 4.0) == 28.0
    assert clip_bound([10, 20], 0.0) == math.inf and clip_bound([], 4.0) == math.inf


def _caps_file(tmp_path, text):
    path = tmp_path / "caps.toml"
    path.write_text(text)
    return str(path)


def test_declared_caps_drop_above_and_are_exact_below(tmp_path):
    caps = _caps_file(tmp_path, "[num-examples]\n0 = 10\n1 = 20\n3 = 400\n4 = 24\n")
    strategy = _strategy({"node-weight-caps": caps})
    honest = _honest()
    honest[3] = _reply(103, _honest_arrays(3), _metrics(3, 400))
    agg, _ = _train(strategy, [*honest, _hostile(25)])
    assert [(d[1], d[2]) for d in strategy.dropped] == [
        (999, "weight 'num-examples'=25 exceeds what partition 4 holds (24)")
    ]
    # Partition 3 claims 400 > 4 x median, but it has a declared cap: not clipped.
    assert strategy.clipped == []
    expected, _ = WeightedFedAvg().aggregate_train(1, honest)
    assert _bits(agg) == _bits(expected)
    # Control: without the file, 400 is clipped to 4 x 20.
    free = _strategy()
    _train(free, honest)
    assert [(c["partition"], c["used"]) for c in free.clipped] == [(3, 80.0)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, r"node-weight-caps='.*caps\.toml': cannot read it"),
        ("[num-examples\n0 = 1\n", r"caps\.toml': not valid TOML \(Expected ']'"),
        ("[num-clicks]\n0 = 1\n", r"unexpected 'num-clicks'; only the tables \[num-examples\]"),
        ("0 = 5\n", r"unexpected '0'; only the tables"),
        ("[num-users]\na = 5\n", r"\[num-users\] key 'a' is not a partition-id"),
        ("[num-users]\n-1 = 5\n", r"\[num-users\] key '-1' is not a partition-id"),
        ("[num-examples]\n0 = -3\n", r"\[num-examples\] 0 = -3 is not a positive finite number"),
        ("[num-examples]\n0 = true\n", r"\[num-examples\] 0 = True is not a positive"),
        ("[num-examples]\n0 = inf\n", r"\[num-examples\] 0 = inf is not a positive"),
    ],
)
def test_a_malformed_caps_file_is_one_config_error(tmp_path, text, match):
    path = _caps_file(tmp_path, text) if text is not None else str(tmp_path / "caps.toml")
    with pytest.raises(ConfigError, match=match) as err:
        _strategy({"node-weight-caps": path})
    assert "\n" not in str(err.value) and "e.g. [num-examples] 0 = 9800" in str(err.value)


def test_a_malformed_caps_file_fails_before_any_round(rc, tmp_path):
    run = {**rc, "node-weight-caps": "caps.toml"}
    grid = InProcessGrid(_app(), _nodes(2), run)
    with pytest.raises(ConfigError, match=r"node-weight-caps='caps\.toml' is a relative path"):
        run_federated(grid, RunConfig.from_mapping(run), tmp_path)
    assert grid.replies == []


def _inflate(partition, by):
    def mod(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        if ctx.node_config["partition-id"] == partition and not reply.has_error():
            record = next(iter(reply.content.metric_records.values()))
            record["num-examples"] = record["num-examples"] + by
        return reply

    return mod


def test_a_server_with_the_data_caps_each_partition_by_its_true_size(rc, tmp_path):
    options = RunConfig.from_mapping(rc).data
    truth = [prepare_data(options).client_data(p, 3) for p in range(3)]
    run = {**rc, "num-server-rounds": 2}
    grid = InProcessGrid(_app(_inflate(1, 1)), _nodes(3), run)
    results = json.loads(run_federated(grid, RunConfig.from_mapping(run), tmp_path).read_text())
    n = truth[1].num_train
    # Before: the cap was the dataset's size, so one extra example passed.
    assert results["dropped-replies"] == [
        {"round": r, "node": 102, "reason": f"weight 'num-examples'={n + 1} exceeds what "
         f"partition 1 holds ({n})"}
        for r in (1, 2)
    ]  # fmt: skip
    assert results["clipped-weights"] == []
    sizes = federated.partition_sizes(options, 3)
    assert sizes.examples == {p: truth[p].num_train for p in range(3)}
    assert sizes.users == {p: truth[p].num_users for p in range(3)}


# --- case 3: evaluation sums -----------------------------------------------------------


def _ev(node, pid, users, hr_sum, **extra):
    metrics = {
        "num-examples": users,
        "num-users": users,
        "partition-id": pid,
        "num-partitions": K,
        "loss": 0.5,
        "val-hr@10-sum": hr_sum,
        **extra,
    }
    return _reply(node, None, metrics)


def test_evaluate_sums_outside_zero_to_num_users_are_dropped():
    strategy = _strategy(max_evaluate_weight=100)
    honest = [_ev(1, 0, 4, 3.0), _ev(2, 1, 6, 6.0)]  # 6 of 6: the edge passes
    hostile = [
        _ev(3, 2, 5, 1e6),
        _ev(4, 3, 5, -1.0),
        _ev(5, 4, 5, 5.5),
        _ev(6, 4, 1000, 10.0),
    ]
    out = strategy.aggregate_evaluate(1, [*hostile, *honest])
    assert out["val-hr@10"] == pytest.approx(np.average([3 / 4, 1.0], weights=[4, 6]))
    reasons = {node: why for _, node, why in strategy.dropped}
    assert reasons[3] == (
        "metric 'val-hr@10-sum'=1000000.0 is outside [0, 5]: a per-user value in [0, 1] "
        "summed over the reply's 5 users"
    )
    assert "'val-hr@10-sum'=-1.0 is outside [0, 5]" in reasons[4]
    assert "'val-hr@10-sum'=5.5 is outside [0, 5]" in reasons[5]
    assert reasons[6] == "weight 'num-examples'=1000 exceeds the cap 100"
    # Before: the 1e6 sum was accepted and val HR@10 came out far above 1.


def test_per_user_sums_are_chosen_by_key():
    record = MetricRecord(
        {
            "num-examples": 5,
            "num-users": 5,
            "val-loss-sum": 1e3,  # not per-user in [0, 1]: only finite
            "global-val-ndcg@10-sum": 5.0,
            "test-hr@5-sum": 0.0,
        }
    )
    assert check_user_sums(record) is None
    record["global-test-ndcg@20-sum"] = 5.5
    assert check_user_sums(record) == (
        "metric 'global-test-ndcg@20-sum'=5.5 is outside [0, 5]: a per-user value in [0, 1] "
        "summed over the reply's 5 users"
    )


def test_an_uncapped_evaluate_weight_is_clipped_with_its_sums():
    strategy = _strategy()  # item-catalogue deployment: no caps at all
    replies = [_ev(1, 0, 4, 3.0), _ev(2, 1, 6, 3.0), _ev(3, 2, 10**6, 10**6)]
    out = strategy.aggregate_evaluate(1, replies)
    # Lower median 6: node 3 counts as 24 users with its own per-user HR of 1.
    assert out["val-hr@10"] == pytest.approx((3.0 + 3.0 + 24.0) / (4 + 6 + 24))
    assert [(c["kind"], c["node"], c["used"]) for c in strategy.clipped] == [("evaluate", 3, 24.0)]


# --- case 4: update norm ---------------------------------------------------------------


def _scaled(factor=1000.0, value=None):
    arrays = {n: (np.full_like(v, value) if value else v * factor) for n, v in GLOBAL.items()}
    return _hostile(25, arrays=arrays)


@pytest.mark.parametrize("hostile", ["x1000", "1e30"])
def test_a_scaled_update_moves_fedavg_unless_the_norm_is_bounded(hostile):
    bad = _scaled() if hostile == "x1000" else _scaled(value=1e30)
    honest_norms = [update_norm(r.content["arrays"], GLOBAL) for r in _honest()]
    assert max(honest_norms) < 1.0
    honest_agg, _ = _train(_strategy(), _honest())
    free_agg, _ = _train(_strategy(), [*_honest(), bad])
    # 25/125 of a model 1000x the global one: FedAvg moves by about 200x its norm.
    assert _dist(free_agg, honest_agg) > 100 * max(honest_norms)
    bounded = _strategy({"max-update-norm": 2.0})
    agg, _ = _train(bounded, [*_honest(), bad])
    assert len(bounded.dropped) == 1
    assert re.fullmatch(
        r"update norm \|\|w_k - w\|\| = \S+ exceeds max-update-norm 2", bounded.dropped[0][2]
    )
    assert _bits(agg) == _bits(honest_agg)


@pytest.mark.parametrize("name", ["fedmedian", "krum", "fedtrimmedavg"])
def test_robust_strategies_resist_a_scaled_update_without_the_bound(name):
    honest_norm = max(update_norm(r.content["arrays"], GLOBAL) for r in _honest())
    free_agg, _ = _train(_strategy(), [*_honest(), _scaled()])
    agg, _ = _train(_strategy({"strategy": name}), [*_honest(), _scaled()])
    # FedAvg is moved ~200x an honest update; these stay within the honest updates.
    assert _dist(free_agg, _record(GLOBAL)) > 100 * honest_norm
    assert _dist(agg, _record(GLOBAL)) < 2 * honest_norm


def test_update_norm_by_hand():
    sent = {"a": np.zeros(3, np.float32), "b": np.array(1.0, np.float32)}
    record = _record({"a": np.array([3.0, 0.0, 0.0], np.float32), "b": np.array(5.0, np.float32)})
    assert update_norm(record, sent) == 5.0  # sqrt(3^2 + 4^2)


# --- case 5: duplicate replies ---------------------------------------------------------


def test_a_second_reply_from_the_same_node_is_dropped():
    honest = _honest()
    again = _reply(101, _honest_arrays(7), _metrics(1, 20))
    strategy = _strategy()
    agg, _ = _train(strategy, [*honest[:2], again, *honest[2:]])
    assert [(d[1], d[2]) for d in strategy.dropped] == [
        (101, "node 101 already replied in round 1; its first reply counts")
    ]
    expected, _ = _train(_strategy(), honest)
    assert _bits(agg) == _bits(expected)  # before: node 101 counted twice


# --- case 10: num-partitions -------------------------------------------------------------


def test_nodes_with_different_num_partitions_stop_the_run(rc, tmp_path):
    nodes = [*_nodes(2), {"partition-id": 2, "num-partitions": 3}]
    grid = InProcessGrid(_app(), nodes, rc)
    with pytest.raises(
        PartitionMismatchError,
        match=r"^nodes disagree on num-partitions: node 101 \(partition-id 0\) says 2, node 102 "
        r"\(partition-id 1\) says 2, node 103 \(partition-id 2\) says 3; start every SuperNode "
        r"with the same --node-config num-partitions",
    ):
        run_federated(grid, RunConfig.from_mapping(rc), tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_with_sampling_the_mismatch_is_found_before_training(rc, tmp_path):
    run = {**rc, "fraction-train": 0.5, "min-nodes": 1}
    nodes = [*_nodes(3), {"partition-id": 3, "num-partitions": 5}]
    grid = InProcessGrid(_app(), nodes, run)
    with pytest.raises(PartitionMismatchError, match=r"node 104 \(partition-id 3\) says 5"):
        run_federated(grid, RunConfig.from_mapping(run), tmp_path)
    assert grid.replies and not any(r.content.array_records for r in grid.replies)  # queries only


def test_a_later_reply_with_another_num_partitions_is_dropped():
    strategy = _strategy()
    _train(strategy, _honest())
    late = [
        _reply(200, _honest_arrays(5), _metrics(4, 25, **{"num-partitions": 6})),
        _reply(201, _honest_arrays(6), _metrics(4, 25, **{"num-partitions": None})),
    ]
    _train(strategy, [*_honest(), *late], server_round=2)
    assert [(d[0], d[1], d[2]) for d in strategy.dropped] == [
        (2, 200, "num-partitions=6 differs from the federation's 5"),
        (2, 201, "'num-partitions' is missing beside 'partition-id'"),
    ]
    assert strategy.num_partitions == K


def test_num_partitions_is_a_count_not_a_metric():
    records = [
        RecordDict({"m": MetricRecord({"num-examples": w, "num-partitions": 2, "loss": 1.0})})
        for w in (1, 3)
    ]
    assert dict(exact_metric_aggregation(records, "num-examples")) == {"loss": 1.0}


@pytest.mark.parametrize("mode", ["group", "per-user"])
def test_every_client_reply_carries_num_partitions(rc, tmp_path, mode):
    run = {**rc, "client-mode": mode, "num-server-rounds": 1, "local-epochs": 1}
    grid = InProcessGrid(_app(), _nodes(2), run)
    results = json.loads(run_federated(grid, RunConfig.from_mapping(run), tmp_path).read_text())
    # Honest weights equal the data-derived caps exactly: nothing dropped or clipped.
    assert results["dropped-replies"] == [] and results["clipped-weights"] == []
    assert len(grid.replies) == 4
    for reply in grid.replies:
        metrics = next(iter(reply.content.metric_records.values()))
        assert (metrics["partition-id"], metrics["num-partitions"]) in {(0, 2), (1, 2)}


# --- case 14: Flower's own strategy tests' replies ---------------------------------------


def _mock_reply(arrays, num_examples):
    """As Flower's ``strategy_utils_test.create_mock_reply``: Mock metadata."""
    message = Mock(spec=Message)
    message.content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": num_examples})}
    )
    message.has_error.side_effect = lambda: False
    message.has_content.side_effect = lambda: True
    return message


def _mock_replies():
    rng = np.random.default_rng(0)
    arrays = [[rng.normal(size=(7, 3)) for _ in range(2)] for _ in range(3)]
    return arrays, [_mock_reply(a, w) for a, w in zip(arrays, [0.25, 0.4, 0.35], strict=True)]


def test_weighted_fedavg_takes_mock_replies():
    arrays, replies = _mock_replies()
    assert order_replies(replies) == replies  # no comparable ids: arrival order
    agg, _ = WeightedFedAvg().aggregate_train(1, replies)  # before: TypeError '<' on Mock
    for i, got in enumerate(agg.to_numpy_ndarrays()):
        expected = np.average([a[i] for a in arrays], axis=0, weights=[0.25, 0.4, 0.35])
        np.testing.assert_allclose(got, expected)


def test_validated_strategy_without_configure_train_checks_against_the_majority():
    _, replies = _mock_replies()
    expected, _ = FedAvg().aggregate_train(1, replies)
    wrapped = ValidatedStrategy(FedAvg())
    agg, _ = wrapped.aggregate_train(1, replies)  # before: RuntimeError
    assert _bits(agg) == _bits(expected) and not wrapped.dropped
    odd = _mock_reply([np.zeros((7, 5)), np.zeros((7, 3))], 0.5)
    nan = _mock_reply([np.full((7, 3), np.nan), np.zeros((7, 3))], 0.5)
    agg, _ = wrapped.aggregate_train(1, [replies[0], odd, replies[1], nan, replies[2]])
    assert [d[2] for d in wrapped.dropped] == [
        "array '0' has shape (7, 5), expected (7, 3)",
        "array '0' has non-finite values (NaN or inf)",
    ]
    assert _bits(agg) == _bits(expected)


def test_validated_fedmedian_on_flowers_own_example():
    replies = [
        _mock_reply([np.array([1.0, 0.2, 0.5, 1.0])], 5),
        _mock_reply([np.array([0.2, 0.5, 1.0, 0.2])], 2),
        _mock_reply([np.array([0.5, 1.0, 0.2, 0.5])], 9),
    ]
    agg, _ = ValidatedStrategy(FedMedian()).aggregate_train(1, replies)
    np.testing.assert_equal(agg.to_numpy_ndarrays()[0], np.array([0.5, 0.5, 0.5, 0.5]))


def test_order_is_deterministic_for_real_ids_and_odd_partition_ids():
    replies = [
        _reply(9, None, {"num-examples": 1, "partition-id": 1.5}),
        _reply(3, None, {"num-examples": 1, "partition-id": math.nan}),
        _reply(5, None, {"num-examples": 1}),
        _reply(4, None, {"num-examples": 1, "partition-id": 0}),
    ]
    for seed in range(4):
        shuffled = [replies[i] for i in np.random.default_rng(seed).permutation(4)]
        assert [m.metadata.src_node_id for m in order_replies(shuffled)] == [4, 9, 3, 5]


def test_saved_model_is_float32_after_fedadam(rc, tmp_path):
    run = {**rc, "strategy": "fedadam", "num-server-rounds": 2}
    run_federated(InProcessGrid(_app(), _nodes(2), run), RunConfig.from_mapping(run), tmp_path)
    model = torch.load(tmp_path / "model.pt")["state_dict"]
    assert all(v.dtype == torch.float32 for v in model.values())


# --- found by tests/test_fuzz_replies.py ------------------------------------------------


def test_a_reply_naming_its_records_differently_is_dropped_not_fatal():
    bad = _hostile(25)
    bad.content = RecordDict({"arrays": bad.content["arrays"], "metrics0": bad.content["metrics"]})
    strategy = _strategy()
    agg, _ = _train(strategy, [*_honest(), bad])  # before: InconsistentMessageReplies
    assert [d[2] for d in strategy.dropped] == [
        "record names ['metrics0', 'arrays'] differ from the other replies' ['metrics', 'arrays']"
    ]
    expected, _ = _train(_strategy(), _honest())
    assert _bits(agg) == _bits(expected)


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"]
)
def test_ints_beyond_float_range_are_reasons_not_crashes(value):
    strategy = _strategy()
    _train(strategy, [*_honest(), _hostile(value), _hostile(25, **{"train-loss": value})])
    # Before: OverflowError from math.isfinite inside the checks.
    assert len(strategy.dropped) == 2
    assert all(len(why) < 120 for _, _, why in strategy.dropped)  # one short line each
