"""Hostile replies are dropped with their reason, for every strategy we ship.

Each case sends four honest replies plus one hostile reply and checks that the
hostile one is dropped (node and reason recorded), and that the aggregate is
finite and bit-identical to the aggregate of the honest replies alone.
"""

import logging
import math
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from fedrec_flwr.config import RunConfig
from fedrec_flwr.strategies import (
    ReplyLimits,
    ValidatedStrategy,
    WeightedFedAvg,
    array_spec,
    check_arrays,
    check_reply,
    check_weight,
)
from fedrec_flwr.strategies.registry import STRATEGIES, build_strategy

ROWS = 5
GLOBAL = {
    "item_gmf.weight": np.linspace(-1, 1, ROWS * 3, dtype=np.float32).reshape(ROWS, 3),
    "output.weight": np.ones((1, 3), dtype=np.float32),
    "output.bias": np.array(0.5, dtype=np.float32),  # a 0-d array
}
HONEST_WEIGHTS = [10, 20, 30, 40]
NUM_PARTITIONS = 5
WEIGHT_KEY = {0: "num-examples"}  # the weight key of the strategy under test


pytestmark = pytest.mark.usefixtures("server_identity")


class _Grid:
    """Just enough of a Grid for configure_train (node ids only)."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _honest_arrays(k):
    rng = np.random.default_rng(k)
    return {n: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) for n, v in GLOBAL.items()}


def _reply(node, arrays, metrics):
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(content, reply_to=instruction)


def _metrics(pid, weight):
    counts = [(pid + r) % 3 for r in range(ROWS)]  # row 4 of partition 2: 0
    return {
        "num-examples": weight,
        "num-users": 3,
        "train-loss": 0.1 * (pid + 1),
        "partition-id": pid,
        "num-partitions": NUM_PARTITIONS,
        "item-counts": counts,
    }


def _honest():
    return [
        _reply(100 + k, _honest_arrays(k), _metrics(k, w)) for k, w in enumerate(HONEST_WEIGHTS)
    ]


def _with(arrays=None, drop=None, weight="unchanged", **metric_changes):
    out = _honest_arrays(9)
    out.update(arrays or {})
    if drop:
        del out[drop]
    metrics = _metrics(4, 25)
    metrics.update(metric_changes)
    if weight != "unchanged":
        metrics[WEIGHT_KEY[0]] = weight
    return {k: v for k, v in out.items()}, {k: v for k, v in metrics.items() if v is not None}


def _nan_item():
    bad = _honest_arrays(9)["item_gmf.weight"].copy()
    bad[1, 2] = math.nan
    return bad


def _inf_item(sign):
    bad = _honest_arrays(9)["item_gmf.weight"].copy()
    bad[0, 0] = sign * math.inf
    return bad


HOSTILE = {
    "nan": (lambda: _with({"item_gmf.weight": _nan_item()}), r"non-finite values"),
    "+inf": (lambda: _with({"item_gmf.weight": _inf_item(1)}), r"non-finite values"),
    "-inf": (lambda: _with({"item_gmf.weight": _inf_item(-1)}), r"non-finite values"),
    "0-d nan": (
        lambda: _with({"output.bias": np.array(math.nan, dtype=np.float32)}),
        r"'output.bias' has non-finite",
    ),
    "wrong shape": (
        lambda: _with({"item_gmf.weight": np.zeros((ROWS + 1, 3), np.float32)}),
        r"shape \(6, 3\), expected \(5, 3\)",
    ),
    "wrong dtype": (
        lambda: _with({"item_gmf.weight": np.zeros((ROWS, 3), np.float64)}),
        r"dtype float64, expected float32",
    ),
    "missing key": (lambda: _with(drop="output.weight"), r"missing \['output.weight'\]"),
    "extra key": (
        lambda: _with({"user_gmf.weight": np.zeros((3, 3), np.float32)}),
        r"unexpected \['user_gmf.weight'\]",
    ),
    "weight 0": (lambda: _with(weight=0), r"is not positive"),
    "weight negative": (lambda: _with(weight=-5), r"is not positive"),
    "weight nan": (lambda: _with(weight=math.nan), r"is not finite"),
    "weight inf": (lambda: _with(weight=math.inf), r"is not finite"),
    "weight 1e12": (lambda: _with(weight=1e12), r"exceeds the cap (1000|3000)"),
    "weight missing": (lambda: _with(weight=None), r"'num-(examples|users)' is missing"),
    "metric nan": (lambda: _with(**{"train-loss": math.nan}), r"'train-loss' has non-finite"),
    "partition taken": (lambda: _with(**{"partition-id": 0}), r"already belongs to node 100"),
    "partition-id >= num-partitions": (
        lambda: _with(**{"partition-id": NUM_PARTITIONS}),
        r"partition-id 5 is not below num-partitions=5",
    ),
    "num-partitions missing": (
        lambda: _with(**{"num-partitions": None}),
        r"'num-partitions' is missing beside 'partition-id'",
    ),
    "num-users above the cap": (
        lambda: _with(**{"num-users": 10**6}),
        r"num-users'?=1000000 exceeds the cap (100|3000)",
    ),
    "weight beyond 2**53": (lambda: _with(weight=10**300), r"exceeds (the cap|2\*\*53)"),
    "huge metric": (lambda: _with(**{"train-loss": 1e300}), r"'train-loss' has values beyond"),
}

SHIPPED = [*STRATEGIES, "fedavg-rowwise", "fedavg-users", "fedavg-uniform", "dp-fedavg"]


def _strategy(name):
    overrides = {"strategy": name}
    if name == "fedavg-rowwise":
        overrides = {"item-aggregation": "rowwise"}
    elif name in ("fedavg-users", "fedavg-uniform"):
        overrides = {"weight-key": name.split("-")[1]}
    elif name == "dp-fedavg":
        overrides = {}
    cfg = RunConfig.from_mapping({**overrides, "fraction-train": 1.0})
    cap = 3000 if name == "fedavg-users" else 1000
    strategy = build_strategy(cfg, max_train_weight=cap, max_evaluate_weight=100, num_items=ROWS)
    if name == "dp-fedavg":
        # Validation outermost: DP clipping never sees a malformed reply.
        dp = DifferentialPrivacyServerSideFixedClipping(
            strategy.strategy, noise_multiplier=0.0, clipping_norm=1e6, num_sampled_clients=4
        )
        strategy = ValidatedStrategy(dp, strategy.train_limits, strategy.evaluate_limits)
    return strategy


def _aggregate(name, replies):
    strategy = _strategy(name)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid([100, 101, 102, 103, 104])))
    return strategy, strategy.aggregate_train(1, replies)


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("flwr").setLevel(logging.ERROR)


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("name", SHIPPED)
def test_hostile_reply_is_dropped_and_changes_nothing(name, case, monkeypatch):
    monkeypatch.setitem(WEIGHT_KEY, 0, "num-users" if name == "fedavg-users" else "num-examples")
    make, reason = HOSTILE[case]
    arrays, metrics = make()
    hostile = _reply(999, arrays, metrics)
    honest = _honest()
    mixed = [*honest[:2], hostile, *honest[2:]]
    strategy, (agg, train_metrics) = _aggregate(name, mixed)
    assert len(strategy.dropped) == 1
    rnd, node, why = strategy.dropped[0]
    assert (rnd, node) == (1, 999)
    assert re.search(reason, why), why
    _, (expected, expected_metrics) = _aggregate(name, _honest())
    assert agg is not None and set(agg) == set(GLOBAL)
    for key in GLOBAL:
        value = agg[key].numpy()
        assert np.isfinite(value).all()
        assert value.tobytes() == expected[key].numpy().tobytes(), key
    assert dict(train_metrics) == dict(expected_metrics)


@pytest.mark.parametrize("name", SHIPPED)
def test_no_valid_reply_keeps_the_previous_model(name):
    replies = [
        _reply(200 + k, *_with({"item_gmf.weight": _nan_item()}, **{"partition-id": 5 + k}))
        for k in range(3)
    ]
    strategy, (agg, metrics) = _aggregate(name, replies)
    assert agg is None and metrics is None  # Flower then keeps the global arrays
    assert [d[1] for d in strategy.dropped] == [200, 201, 202]


def test_hostile_evaluate_replies_are_dropped():
    def ev(node, pid, users, hr_sum):
        return _reply(
            node,
            None,
            {
                "num-examples": users,
                "num-users": users,
                "partition-id": pid,
                "num-partitions": 5,
                "val-hr@10-sum": hr_sum,
            },
        )

    honest = [ev(1, 0, 4, 3.0), ev(2, 1, 6, 1.0)]
    strategy = _strategy("fedavg")
    hostile = [ev(3, 2, 0, 1.0), ev(4, 3, 5, math.nan), ev(5, 4, 1e12, 1.0)]
    out = strategy.aggregate_evaluate(1, [*hostile, *honest])
    assert out["val-hr@10"] == pytest.approx(4 / 10)
    assert [d[1] for d in strategy.dropped] == [3, 4, 5]


# --- the pure checks --------------------------------------------------------------


def test_check_arrays_accepts_the_sent_arrays():
    record = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    assert check_arrays(record, array_spec(record)) is None
    assert array_spec(record)["output.bias"] == ((), "float32")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (10, None),
        (2.5, None),
        (0, "is not positive"),
        (-1, "is not positive"),
        (math.nan, "is not finite"),
        (-math.inf, "is not finite"),
        (1e12, "exceeds the cap 100"),
        (True, "is not a number"),
        ("7", "is not a number"),
    ],
)
def test_check_weight(value, reason):
    got = check_weight(value, "num-examples", max_weight=100)
    assert got is None if reason is None else reason in got


def test_partition_cap_and_metric_lists():
    content = RecordDict(
        {
            "m": MetricRecord(
                {"num-examples": 50, "partition-id": 2, "num-partitions": 3, "item-counts": [1, -1]}
            )
        }
    )
    capped = ReplyLimits(partition_caps={2: 40})
    assert "exceeds what partition 2 holds (40)" in check_reply(content, capped, None)
    lists = ReplyLimits(list_lengths={"item-counts": 2})
    content["a"] = ArrayRecord({"x": Array(np.zeros(1, np.float32))})
    spec = {"x": ((1,), "float32")}
    assert "'item-counts' has negative values" in check_reply(content, lists, spec)
    lists3 = ReplyLimits(list_lengths={"item-counts": 3})
    assert "must be a list of 3 values, got 2" in check_reply(content, lists3, spec)


def test_two_array_records_are_refused():
    content = RecordDict(
        {
            "m": MetricRecord({"num-examples": 5}),
            "a": ArrayRecord({"x": Array(np.zeros(1, np.float32))}),
            "b": ArrayRecord({"x": Array(np.zeros(1, np.float32))}),
        }
    )
    assert "expected one ArrayRecord, found 2" in check_reply(
        content, ReplyLimits(), {"x": ((1,), "float32")}
    )


def test_weighted_fedavg_is_a_drop_in_inside_the_wrapper():
    assert isinstance(_strategy("fedavg").strategy, WeightedFedAvg)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"weight-key": "clicks"}, r"weight-key='clicks': unknown; accepted: interactions, users"),
        ({"item-aggregation": "sparse"}, r"item-aggregation='sparse': unknown; accepted: dense"),
        (
            {"item-aggregation": "rowwise", "strategy": "krum"},
            r"row-wise item aggregation is a fedavg option",
        ),
        ({"finetune-scope": "items"}, r"finetune-scope='items': unknown; accepted: all, private"),
        ({"proximal-mu": -0.1}, r"proximal-mu=-0.1: must be a finite number >= 0"),
        ({"max-client-weight": math.inf}, r"max-client-weight=inf: must be a finite"),
        ({"trimmed-beta": 0.5}, r"trimmed-beta=0.5: must be in \[0, 0.5\)"),
        ({"strategy": "fedsgd"}, r"accepted: fedavg, fedadam, fedyogi, fedavgm, krum, fedmedian"),
    ],
)
def test_strategy_knobs_are_validated(override, match):
    from fedrec_flwr.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        RunConfig.from_mapping(override)
