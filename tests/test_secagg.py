"""Secure aggregation (``secure-aggregation=secaggplus``) through Flower's SecAgg+.

In-process runs (``InProcessGrid``: real messages, protobuf round trip) with a
recording mod *inside* the SecAgg+ mods: it keeps each node's plain reply (what
would have been sent without SecAgg+) and the arrays each node received, so the
aggregate can be checked against plain weighted FedAvg computed here.
"""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import CrashingGrid, checkerboard_rows, write_u_data
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.app.client_app import client_fn, partition_query, secagg_mods
from fedrec_flwr.client.adapter import numpy_client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.errors import ConfigError
from fedrec_flwr.privacy.secagg import (
    max_weight_for,
    mode_dispatch_mod,
    quantization_bound,
    run_secagg,
)
from fedrec_flwr.protocol import PARTITION_ID_KEY
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.serving.store import NodeStore
from fedrec_flwr.strategies.guard import sample_rank
from fedrec_flwr.testing.inprocess import InProcessGrid

logging.getLogger("flwr").setLevel(logging.WARNING)

SMALL = {
    "factors": 4,
    "mlp-layers": "8,4",
    "batch-size": 64,
    "top-k": "1",
    "num-eval-negatives": 20,
    "local-epochs": 1,
    "secure-aggregation": "secaggplus",
    # The recorder's app (below) answers no delivery; the delivery test turns it on.
    "deliver": "off",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("secagg"), checkerboard_rows(users_per_group=12))


def _nodes(k):
    return [{"partition-id": p, "num-partitions": k} for p in range(k)]


class _Recorder:
    """A mod inside the SecAgg+ mods: plain replies and received arrays per node."""

    def __init__(self, fail_partition=None, fail_round=None):
        self.received = {}  # (round, partition) -> list of arrays sent to the node
        self.replies = {}  # (round, partition) -> (weight, list of float64 arrays)
        self.fail = (fail_round, fail_partition)

    def __call__(self, msg: Message, ctxt: Context, call_next):
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        key = (int(fitins.config["server-round"]), ctxt.node_config[PARTITION_ID_KEY])
        if key == self.fail:
            raise RuntimeError("node lost")
        self.received[key] = parameters_to_ndarrays(fitins.parameters)
        reply = call_next(msg, ctxt)
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        self.replies[key] = (fitres.num_examples, parameters_to_ndarrays(fitres.parameters))
        return reply


def _app(recorder):
    """The FAB's app (dispatch mod, query handler), with the recorder inside."""
    mods = secagg_mods()
    secure = ClientApp(
        client_fn=lambda ctx: client_fn(ctx).to_client(), mods=[*mods[:2], recorder, *mods[2:]]
    )
    app = numpy_client_app(client_fn, mods=[mode_dispatch_mod(secure)])
    app.query()(partition_query)
    return app


def _plain_mean(replies):
    weights = np.array([w for w, _ in replies], dtype=np.float64)
    return [
        sum(w * a[i] for w, (_, a) in zip(weights, replies, strict=True)) / weights.sum()
        for i in range(len(replies[0][1]))
    ]


def _check_round(recorder, rnd, partitions, max_weight, cfg, next_round_arrays):
    replies = [recorder.replies[(rnd, p)] for p in partitions]
    expected = _plain_mean(replies)
    bound = quantization_bound(
        [float(w) for w, _ in replies],
        max_weight=max_weight,
        clipping_range=cfg.privacy.secagg_clipping_range,
        quantization_range=cfg.privacy.secagg_quantization_range,
    )
    assert bound.weights_exact
    worst = 0.0
    for got, want in zip(next_round_arrays, expected, strict=True):
        # The model goes out as float32: its rounding comes on top of the bound.
        tol = bound.mean + np.abs(want) * 2.0**-24 + 1e-12
        err = np.abs(got.astype(np.float64) - want)
        assert (err <= tol).all(), float((err - tol).max())
        worst = max(worst, float(err.max()))
    # The aggregate is not plain FedAvg by accident: quantisation leaves a trace.
    assert worst > 0
    return bound


def test_aggregate_equals_weighted_fedavg_within_the_bound(data_dir, tmp_path):
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, **SMALL}
    cfg = RunConfig.from_mapping(rc)
    recorder = _Recorder()
    grid = InProcessGrid(_app(recorder), _nodes(4), rc)
    results = json.loads(run_secagg(grid, cfg, tmp_path).read_text())
    section = results["secure-aggregation"]
    m = section["max-weight"]
    # Largest partition's interactions, rounded up to a power of two.
    largest = max(recorder.replies[(1, p)][0] for p in range(4))
    assert m == max_weight_for(largest, 2**22) and m >= largest > m / 2
    # Round 1's aggregate is what every node received in round 2.
    received = recorder.received[(2, 0)]
    bound = _check_round(recorder, 1, range(4), m, cfg, received)
    assert section["bounds"]["1"]["per-element-mean"] == pytest.approx(bound.mean)
    assert bound.mean < 2e-5
    # The results schema is the plain mode's, and no array reached the server.
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert set(r["val"]) >= {"hr@1", "ndcg@1"} and r["wall-seconds"] > 0
        assert r["bytes-sent"] > 0 and r["bytes-received"] > 0 and r["failures"] == 0
        assert r["train-loss"] > 0 and r["secagg-error-bound"] > 0
    assert results["arrays-received"] == []


@pytest.mark.parametrize("weight_key", ["users", "uniform"])
def test_weight_key_sets_the_secagg_weight(data_dir, tmp_path, weight_key):
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, "weight-key": weight_key, **SMALL}
    cfg = RunConfig.from_mapping(rc)
    recorder = _Recorder()
    grid = InProcessGrid(_app(recorder), _nodes(3), rc)
    results = json.loads(run_secagg(grid, cfg, tmp_path).read_text())
    weights = [recorder.replies[(1, p)][0] for p in range(3)]
    if weight_key == "uniform":
        assert weights == [1, 1, 1] and results["secure-aggregation"]["max-weight"] == 1
    else:
        assert all(1 < w < 100 for w in weights)  # users, not interactions
    _check_round(
        recorder,
        1,
        range(3),
        results["secure-aggregation"]["max-weight"],
        cfg,
        recorder.received[(2, 0)],
    )


def test_the_server_sees_only_masked_vectors(data_dir, tmp_path):
    rc = {"data-dir": str(data_dir), "num-server-rounds": 1, **SMALL}
    recorder = _Recorder()
    grid = InProcessGrid(_app(recorder), _nodes(3), rc)
    run_secagg(grid, RunConfig.from_mapping(rc), tmp_path)
    masked = []
    for reply in grid.replies:
        # No reply carries a plain array (secaggplus_mod empties them).
        assert all(len(r) == 0 for r in reply.content.array_records.values())
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            masked.append([bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]])
    assert len(masked) == 3
    q = 2**22
    for vectors in masked:
        flat = np.concatenate([v.ravel() for v in vectors[1:]]).astype(np.float64)
        # Unmasked, every quantised value lies in [0, Q]; masked, they are
        # uniform on [0, 2**32): almost none below Q, mean near 2**31.
        assert flat.size > 500
        assert (flat > q).mean() > 0.99
        assert abs(flat.mean() / 2**32 - 0.5) < 0.05
    # Two nodes' masked vectors differ though their plain models start equal.
    assert not np.array_equal(masked[0][1], masked[1][1])


def test_a_dropped_node_leaves_the_others_aggregate(data_dir, tmp_path):
    # 5 nodes, 3 shares, threshold 2: partition 2 fails in round 1 after the key
    # exchange; its neighbours' shares remove its pairwise masks.
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, **SMALL}
    cfg = RunConfig.from_mapping(rc)
    recorder = _Recorder(fail_partition=2, fail_round=1)
    grid = InProcessGrid(_app(recorder), _nodes(5), rc)
    results = json.loads(run_secagg(grid, cfg, tmp_path).read_text())
    assert results["rounds"][0]["failures"] >= 1
    m = results["secure-aggregation"]["max-weight"]
    _check_round(recorder, 1, [0, 1, 3, 4], m, cfg, recorder.received[(2, 0)])


def test_the_fab_app_serves_both_modes(data_dir, tmp_path):
    # The ClientApp pyproject names answers the SecAgg+ workflow when the run
    # config asks for it (its dispatch mod), and the Message API otherwise.
    rc = {"data-dir": str(data_dir), "num-server-rounds": 1, **SMALL}
    grid = InProcessGrid(client_app, _nodes(3), rc)
    results = json.loads(run_secagg(grid, RunConfig.from_mapping(rc), tmp_path).read_text())
    assert results["strategy"] == "SecAggFedAvg" and results["rounds"][0]["failures"] == 0


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"strategy": "krum"}, "strategy='krum'"),
        ({"strategy": "fedmedian"}, "strategy='fedmedian'"),
        ({"item-aggregation": "rowwise"}, "item-aggregation='rowwise'"),
        ({"max-update-norm": 1.0}, "max-update-norm=1.0"),
        ({"privacy-audit": True}, "privacy-audit=True"),
        (
            {"dp": "node-server", "dp-clip": 1.0, "dp-noise-multiplier": 1.0},
            "dp='node-server'",
        ),
        ({"secagg-num-shares": 2}, "secagg-num-shares=2"),
        ({"secagg-reconstruction-threshold": 3}, "secagg-reconstruction-threshold=3"),
    ],
)
def test_combinations_that_need_each_reply_fail_in_one_line(edit, named):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"secure-aggregation": "secaggplus", **edit})
    message = str(info.value)
    assert named in message and "\n" not in message


def test_the_bound_follows_flowers_quantisation():
    b = quantization_bound([100.0, 300.0], max_weight=512.0)
    delta = 16 / 2**22
    assert b.weights_exact and b.per_node == delta and b.sum == 2 * delta
    assert b.mean == pytest.approx(2 * delta * 512 / 400)
    # A max weight that is not a power of two quantises the weights as well.
    assert not quantization_bound([100.0, 300.0], max_weight=300.0).weights_exact
    assert max_weight_for(300, 2**22) == 512 and max_weight_for(1, 2**22) == 1
    assert max_weight_for(2**23, 2**22) == 2**23


@pytest.mark.flower
def test_flwr_run_with_secaggplus(tmp_path, ml100k_dir):
    """The FAB under `flwr run` (SuperLink, Ray): SecAgg+ rounds, results written."""
    from conftest import flwr_run

    out = tmp_path / "results"
    run_config = (
        f"num-server-rounds=2 local-epochs=1 data-dir='{ml100k_dir}' output-dir='{out}' "
        "secure-aggregation='secaggplus'"
    )
    code, log, _ = flwr_run(tmp_path, run_config, supernodes=3)
    assert code == 0 and (out / "results.json").is_file(), log[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["strategy"] == "SecAggFedAvg" and results["arrays-received"] == []
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert all(r["failures"] == 0 and r["bytes-received"] > 0 for r in results["rounds"])
    assert results["rounds"][-1]["test"]["hr@10"] > 0.3
    assert results["secure-aggregation"]["bounds"]["2"]["per-element-mean"] < 1e-4
    # Under flwr run too, every node wrote its users' recommendations.
    assert results["delivery"]["users-served"] == 943 and results["delivery"]["failures"] == []


def test_user_level_dp_under_secaggplus_adds_a_share_of_the_noise_per_node(data_dir, tmp_path):
    from flwr.app import RecordDict

    from fedrec_flwr.client.numpy_client import NCFClient
    from fedrec_flwr.datasets import load_client_data

    dp = {
        "client-mode": "per-user",
        "weight-key": "users",
        "dp": "user",
        "dp-clip": 0.5,
        "dp-noise-multiplier": 3.0,
        "min-nodes": 3,
    }
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, **SMALL, **dp}
    cfg = RunConfig.from_mapping(rc)
    client = NCFClient(load_client_data(cfg.data, 0, 3), cfg, RecordDict(), noise_seed=1)
    # Variances add up in the masked sum of >= min-nodes replies: sigma^2 = 3 share^2.
    assert client.trainer.dp.noise_multiplier == pytest.approx(3.0 / np.sqrt(3))
    grid = InProcessGrid(client_app, _nodes(3), rc)
    results = json.loads(run_secagg(grid, cfg, tmp_path).read_text())
    report = results["dp"]
    assert report["noise-multiplier"] == 3.0
    assert report["node-noise-multiplier"] == pytest.approx(3.0 / np.sqrt(3))
    assert [r["epsilon"] for r in results["rounds"]] == report["epsilon-per-round"]


def _aggregate_of_round_1(data_dir, tmp_path, nodes):
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, **SMALL}
    recorder = _Recorder()
    run_secagg(InProcessGrid(_app(recorder), nodes, rc), RunConfig.from_mapping(rc), tmp_path)
    return recorder.received[(2, 0)]


def test_secaggplus_runs_are_reproducible_and_leave_numpys_generator_alone(data_dir, tmp_path):
    # Flower rounds stochastically with NumPy's global generator: seeded per
    # node and round, two runs give the same aggregate bit for bit.
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = _aggregate_of_round_1(data_dir, tmp_path / "a", _nodes(3))
    assert np.array_equal(np.random.get_state()[1], before)  # state put back
    np.random.seed(8)  # the caller's generator does not matter
    second = _aggregate_of_round_1(data_dir, tmp_path / "b", _nodes(3))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # Negative control: another node seed rounds differently (so the seed is
    # what fixes the rounding), within the bound of the first.
    nodes = [{**n, "dp-noise-seed": 99} for n in _nodes(3)]
    other = _aggregate_of_round_1(data_dir, tmp_path / "c", nodes)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    worst = max(
        float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(first, other, strict=True)
    )
    assert worst < 1e-4


def test_a_partial_sample_is_drawn_by_seed_round_and_partition_not_node_id(data_dir, tmp_path):
    # fraction-train < 1: the sampled partitions are the Message-API strategies'
    # (sample_rank), whatever node ids Flower gave the nodes.
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, "fraction-train": 0.5, **SMALL}
    cfg = RunConfig.from_mapping(rc)
    expected = {
        rnd: sorted(sorted(range(4), key=lambda p: sample_rank(cfg.data.seed, rnd, 0, p))[:2])
        for rnd in (1, 2)
    }
    seen = []
    for tag, node_ids in (("a", [101, 102, 103, 104]), ("b", [9004, 17, 523, 8])):
        recorder = _Recorder()
        grid = InProcessGrid(_app(recorder), _nodes(4), rc, node_ids=node_ids)
        run_secagg(grid, cfg, tmp_path / tag)
        trained = {rnd: sorted(p for r, p in recorder.replies if r == rnd) for rnd in (1, 2)}
        assert trained == expected
        seen.append(recorder.received[(2, expected[2][0])])
    assert all(np.array_equal(a, b) for a, b in zip(*seen, strict=True))


def test_server_optimisers_step_from_the_secure_mean(data_dir, tmp_path):
    # FedAdam under SecAgg+ is Flower's FedAdam applied to the masked sum's mean:
    # round 1's mean is the same in a FedAvg run (seeded rounding), so the
    # round-2 model is FedAdam's formula on it, computed here by hand.
    from flwr.serverapp.strategy import FedAdam

    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, **SMALL}
    runs = {}
    for name in ("fedavg", "fedadam"):
        recorder = _Recorder()
        keys = {**rc, "strategy": name}
        grid = InProcessGrid(_app(recorder), _nodes(3), keys)
        results = json.loads(
            run_secagg(grid, RunConfig.from_mapping(keys), tmp_path / name).read_text()
        )
        assert results["rounds"][-1]["failures"] == 0
        runs[name] = (recorder.received[(1, 0)], recorder.received[(2, 0)])
    (start, mean), (start_adam, got) = runs["fedavg"], runs["fedadam"]
    ref = FedAdam()  # Flower's defaults, as the registry builds it (eta 0.1)
    eta = ref.eta * np.sqrt(1 - ref.beta_2**2) / (1 - ref.beta_1**2)  # server_round 1
    for x0, x0b, m, g in zip(start, start_adam, mean, got, strict=True):
        np.testing.assert_array_equal(x0, x0b)
        delta = m.astype(np.float64) - x0
        want = x0 + eta * (1 - ref.beta_1) * delta / (
            np.sqrt((1 - ref.beta_2) * delta**2) + ref.tau
        )
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    # Not the mean itself: the server step moved the model.
    assert max(float(np.abs(g - m).max()) for m, g in zip(mean, got, strict=True)) > 1e-3


def test_secaggplus_nodes_keep_their_store_and_write_recommendations(data_dir, tmp_path):
    # As in a plain run: every node files its users' private rows under the run
    # lineage after each round, and after the last round writes the top-k of the
    # validation-selected round for all its users, never an item they trained on.
    import pandas as pd

    rc = {"data-dir": str(data_dir), "num-server-rounds": 3, "learning-rate": 0.01}
    rc = {**rc, **SMALL, "deliver": "selected"}
    nodes = [{**n, "state-dir": str(tmp_path / "nodes")} for n in _nodes(3)]
    grid = InProcessGrid(client_app, nodes, rc)
    results = json.loads(run_secagg(grid, RunConfig.from_mapping(rc), tmp_path / "a").read_text())
    delivery = results["delivery"]
    assert delivery["failures"] == [] and delivery["users-served"] == 24
    assert delivery["round"] == results["selected"]["round"]
    folders = sorted((tmp_path / "nodes" / results["lineage"]).glob("partition-*"))
    assert len(folders) == 3
    for folder in folders:
        rounds = sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.npz"))
        assert delivery["round"] in rounds and rounds[-1] == 3
    rows = pd.concat(pd.read_parquet(f / "recommendations.parquet") for f in folders)
    assert rows["user"].nunique() == 24 and (rows.groupby("user").size() == 10).all()
    log = pd.read_csv(data_dir / "u.data", sep="\t", names=["user", "item", "r", "t"])
    for user, group in log.sort_values("t").groupby("user"):
        items = [str(i) for i in group["item"]]
        train = set(items[:-2])  # the last two are validation and test
        assert not set(rows.loc[rows["user"] == str(user), "item"]) & train, user
    # The store changes nothing in training: the same rounds as without it
    # (the recorder's app has no store mod); and deliver='off' delivers nothing.
    off = {**rc, "deliver": "off"}
    plain = InProcessGrid(_app(_Recorder()), _nodes(3), off)
    without = json.loads(run_secagg(plain, RunConfig.from_mapping(off), tmp_path / "b").read_text())
    keys = ("round", "val", "test")
    assert [{k: r[k] for k in keys} for r in without["rounds"]] == [
        {k: r[k] for k in keys} for r in results["rounds"]
    ]
    assert without["delivery"] is None and not (tmp_path / "b" / "delivered.npz").exists()


def _resumable_run(tmp_path, out, state, rc, grid_cls=InProcessGrid, **grid_kwargs):
    """A SecAgg+ run on 3 nodes of the real ClientApp, whose stores live in ``state``."""
    nodes = [{**n, "state-dir": str(tmp_path / state)} for n in _nodes(3)]
    grid = grid_cls(client_app, nodes, rc, **grid_kwargs)
    return json.loads(run_secagg(grid, RunConfig.from_mapping(rc), tmp_path / out).read_text())


def _rounds(results):
    keys = ("round", "train-loss", "val", "test", "val-loss", "secagg-error-bound")
    return [{k: r.get(k) for k in keys} for r in results["rounds"]]


def _same_model(a, b):
    a, b = torch.load(a / "model.pt")["state_dict"], torch.load(b / "model.pt")["state_dict"]
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("keys", "kind"),
    [
        ({}, None),  # killed as round 3's SecAgg+ stages begin
        ({"strategy": "fedadam"}, None),  # the server step's moments are in the checkpoint
        ({}, "evaluate"),  # killed after the nodes trained and stored round 3
        ({"optimizer-state": "keep"}, None),  # each node's Adam state is in its store
    ],
)
def test_a_resumed_secaggplus_run_is_bit_identical_to_an_uninterrupted_one(
    data_dir, tmp_path, keys, kind
):
    rc = {"data-dir": str(data_dir), "num-server-rounds": 4, "learning-rate": 0.01, **SMALL}
    rc = {**rc, **keys, "deliver": "selected"}
    whole = _resumable_run(tmp_path, "whole", "n1", rc)
    with pytest.raises(RuntimeError, match="server killed"):
        _resumable_run(tmp_path, "first", "n2", rc, CrashingGrid, crash_at=3, kind=kind)
    resumed_rc = {**rc, "resume-from": str(tmp_path / "first")}
    resumed = _resumable_run(tmp_path, "second", "n2", resumed_rc)
    # The same rounds (metrics and SecAgg+ error bounds), final model and delivery.
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    assert _rounds(resumed) == _rounds(whole)
    _same_model(tmp_path / "second", tmp_path / "whole")
    assert resumed["selected"] == whole["selected"]
    assert resumed["delivery"]["round"] == whole["delivery"]["round"]
    assert resumed["delivery"]["users-served"] == 24
    assert resumed["secure-aggregation"]["bounds"] == whole["secure-aggregation"]["bounds"]
    assert sorted(resumed["checkpoint-seconds"]) == ["3", "4"]  # this run's checkpoints
    stored = NodeStore(tmp_path / "n2", resumed["lineage"], 0).load(4)
    assert bool(stored.optimizer) == (keys.get("optimizer-state") == "keep")
    # Negative control: resumed on nodes that lost their stores, the users start
    # anew from round 3 (so the equalities above can fail).
    lost = _resumable_run(tmp_path, "third", "n3", resumed_rc)
    assert _rounds(lost)[:2] == _rounds(whole)[:2]
    assert _rounds(lost)[2:] != _rounds(whole)[2:]


def test_a_secaggplus_run_refuses_to_resume_a_plain_runs_checkpoint(data_dir, tmp_path):
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, **SMALL}
    plain = {**rc, "secure-aggregation": "off"}
    grid = InProcessGrid(client_app, _nodes(3), plain)
    run_federated(grid, RunConfig.from_mapping(plain), tmp_path / "plain")
    with pytest.raises(ConfigError, match=r"resume-from: .*secure-aggregation='secaggplus' "):
        resumed = {**rc, "num-server-rounds": 3, "resume-from": str(tmp_path / "plain")}
        _resumable_run(tmp_path, "again", "n", resumed)


def test_a_warm_started_secaggplus_run_keeps_the_delivered_model_and_rows(data_dir, tmp_path):
    # init-from under SecAgg+: the delivered shared arrays and each node's rows
    # of the delivered round are where the new run starts. At lr 1e-9 (Adam
    # steps ~ lr) one round leaves them where they were, up to SecAgg+'s
    # quantisation of the shared arrays.
    rc = {"data-dir": str(data_dir), "num-server-rounds": 2, "learning-rate": 0.01, **SMALL}
    first = _resumable_run(tmp_path, "first", "n", {**rc, "deliver": "selected"})
    warm = {**rc, "num-server-rounds": 1, "learning-rate": 1e-9}
    second = _resumable_run(tmp_path, "second", "n", {**warm, "init-from": str(tmp_path / "first")})
    assert second["initialised-from"] == str(tmp_path / "first")
    delivered = np.load(tmp_path / "first" / "delivered.npz")
    start = torch.load(tmp_path / "second" / "model.pt")["state_dict"]
    bound = second["rounds"][0]["secagg-error-bound"]
    for name in delivered.files:
        np.testing.assert_allclose(start[name].numpy(), delivered[name], atol=bound + 1e-6)

    def rows(results, rnd):
        out = {}
        for pid in range(3):
            stored = NodeStore(tmp_path / "n", results["lineage"], pid).load(rnd)
            names = [n for n in stored.private if n.startswith("user")]
            for i, uid in enumerate(stored.user_ids.tolist()):
                out[uid] = np.concatenate([stored.private[n][i] for n in names])
        return out

    old, new = rows(first, first["delivery"]["round"]), rows(second, 1)
    assert sorted(old) == sorted(new) and len(new) == 24
    assert all(np.allclose(new[u], old[u], atol=1e-6) for u in old)
    # Negative control: the same run without init-from starts its users anew.
    cold = _resumable_run(tmp_path, "cold", "n", warm)
    fresh = rows(cold, 1)
    assert not any(np.allclose(fresh[u], old[u], atol=1e-6) for u in old)
