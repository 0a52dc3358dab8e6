"""The validation layer composed with Flower: DP wrappers, clipping mods, sampling.

All runs are in-process (``InProcessGrid``: real messages, protobuf round trip)
on the small checkerboard log, so each takes about a second.
"""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.app.client_app import client_fn, partition_query
from fedrec_flwr.client.adapter import numpy_client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.runs.federated import initial_arrays, run_federated
from fedrec_flwr.strategies import ValidatedStrategy
from fedrec_flwr.strategies.registry import build_strategy
from fedrec_flwr.testing.inprocess import InProcessGrid

logging.getLogger("flwr").setLevel(logging.WARNING)

SMALL = {"factors": 8, "mlp-layers": "16,8", "batch-size": 64, "top-k": "1"}
NUM_ITEMS = 60


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    data = write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())
    return {"data-dir": str(data), "num-eval-negatives": 20, "learning-rate": 0.01, **SMALL}


def _nodes(n):
    return [{"partition-id": p, "num-partitions": n} for p in range(n)]


def _poison(partition):
    """A train mod that turns one partition's replies into NaN (a hostile client)."""

    def mod(msg: Message, ctx, call_next) -> Message:
        reply = call_next(msg, ctx)
        if ctx.node_config["partition-id"] == partition and not reply.has_error():
            record = next(iter(reply.content.array_records.values()))
            for name in list(record):
                record[name] = type(record[name])(np.full_like(record[name].numpy(), np.nan))
        return reply

    return mod


def _app(*train_mods):
    app = numpy_client_app(client_fn, train_mods=list(train_mods))
    app.query()(partition_query)
    return app


def _norm(a, b):
    return float(np.sqrt(sum(((a[k].numpy() - b[k].numpy()) ** 2).sum() for k in a)))


def _start(strategy, grid, cfg, rounds=1):
    return strategy.start(
        grid=grid, initial_arrays=initial_arrays(cfg, NUM_ITEMS), num_rounds=rounds
    ).arrays


def test_hostile_client_in_a_real_run_is_dropped_and_logged(rc, tmp_path, caplog):
    cfg_map = {**rc, "num-server-rounds": 2}
    grid = InProcessGrid(_app(_poison(1)), _nodes(3), cfg_map, node_ids=[11, 12, 13])
    with caplog.at_level(logging.WARNING, logger="flwr"):
        path = run_federated(grid, RunConfig.from_mapping(cfg_map), tmp_path)
    results = json.loads(path.read_text())
    dropped = results["dropped-replies"]
    assert [(d["round"], d["node"]) for d in dropped] == [(1, 12), (2, 12)]
    assert all("non-finite values" in d["reason"] for d in dropped)
    assert "round 1: dropped train reply from node 12: array" in caplog.text
    model = torch.load(tmp_path / "model.pt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in model.values())
    assert results["rounds"][-1]["test"]["hr@10"] > 0


def test_server_side_dp_inside_the_validation_layer(rc):
    cfg = RunConfig.from_mapping(rc)
    grid = InProcessGrid(_app(_poison(2)), _nodes(3), rc)
    inner = build_strategy(cfg)
    clip = 0.05
    dp = DifferentialPrivacyServerSideFixedClipping(
        inner.strategy, noise_multiplier=0.0, clipping_norm=clip, num_sampled_clients=2
    )
    strategy = ValidatedStrategy(dp, inner.train_limits, inner.evaluate_limits)
    arrays = _start(strategy, grid, cfg)
    start = initial_arrays(cfg, NUM_ITEMS)
    # Two honest clients, each update clipped to `clip`: the average moves by <= clip.
    assert 0 < _norm(arrays, start) <= clip * (1 + 1e-5)
    assert [d[1] for d in strategy.dropped] == [103]
    # Without clipping the same clients move the model much further.
    free = _start(build_strategy(cfg), InProcessGrid(_app(_poison(2)), _nodes(3), rc), cfg)
    assert _norm(free, start) > 10 * clip


def test_server_side_dp_noise_keeps_the_model_finite(rc):
    cfg = RunConfig.from_mapping(rc)
    inner = build_strategy(cfg)
    dp = DifferentialPrivacyServerSideFixedClipping(
        inner.strategy, noise_multiplier=0.5, clipping_norm=0.1, num_sampled_clients=3
    )
    strategy = ValidatedStrategy(dp, inner.train_limits, inner.evaluate_limits)
    arrays = _start(strategy, InProcessGrid(_app(), _nodes(3), rc), cfg, rounds=2)
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())


def test_client_side_clipping_mod_with_dp_wrapper(rc):
    cfg = RunConfig.from_mapping(rc)
    inner = build_strategy(cfg)
    clip = 0.02
    dp = DifferentialPrivacyClientSideFixedClipping(
        inner.strategy, noise_multiplier=0.0, clipping_norm=clip, num_sampled_clients=2
    )
    strategy = ValidatedStrategy(dp, inner.train_limits, inner.evaluate_limits)
    grid = InProcessGrid(_app(fixedclipping_mod), _nodes(2), rc)
    arrays = _start(strategy, grid, cfg)
    start = initial_arrays(cfg, NUM_ITEMS)
    train_replies = [r for r in grid.replies if r.content.array_records]
    assert len(train_replies) == 2
    for reply in train_replies:  # each client clipped its own update
        assert _norm(next(iter(reply.content.array_records.values())), start) <= clip * 1.0001
    assert 0 < _norm(arrays, start) <= clip * 1.0001
    assert not strategy.dropped


def _sampled_partitions(grid, cfg, rounds=4):
    strategy = build_strategy(cfg)
    arrays = initial_arrays(cfg, NUM_ITEMS)
    out = []
    for rnd in range(1, rounds + 1):
        messages = strategy.configure_train(rnd, ArrayRecord(dict(arrays)), ConfigRecord(), grid)
        out.append(
            sorted(
                grid.contexts[m.metadata.dst_node_id].node_config["partition-id"] for m in messages
            )
        )
    return out


def test_sampling_is_keyed_on_partition_and_seed_not_node_ids(rc):
    cfg = RunConfig.from_mapping({**rc, "fraction-train": 0.5})
    a = _sampled_partitions(InProcessGrid(client_app, _nodes(4), rc, node_ids=[5, 6, 7, 8]), cfg)
    b = _sampled_partitions(InProcessGrid(client_app, _nodes(4), rc, node_ids=[90, 3, 41, 2]), cfg)
    assert a == b and all(len(s) == 2 for s in a)
    assert len({tuple(s) for s in a}) > 1  # the sample changes from round to round
    other_seed = RunConfig.from_mapping({**rc, "fraction-train": 0.5, "seed": 7})
    c = _sampled_partitions(InProcessGrid(client_app, _nodes(4), rc), other_seed)
    assert c != a


def test_partial_sampling_runs_are_bit_identical(rc, tmp_path):
    run = {**rc, "fraction-train": 0.5, "num-server-rounds": 3}
    cfg = RunConfig.from_mapping(run)
    first = InProcessGrid(client_app, _nodes(4), run, node_ids=[5, 6, 7, 8])
    second = InProcessGrid(client_app, _nodes(4), run, node_ids=[44, 3, 91, 12], shuffle_seed=1)
    run_federated(first, cfg, tmp_path / "a")
    run_federated(second, cfg, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt")["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "a" / "results.json").read_text())["rounds"]
    rb = json.loads((tmp_path / "b" / "results.json").read_text())["rounds"]
    assert [r["test"] for r in ra] == [r["test"] for r in rb]


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": "fedadam", "server-learning-rate": 0.01},
        {"strategy": "krum"},
        {"strategy": "fedtrimmedavg"},
        {"item-aggregation": "rowwise", "weight-key": "users"},
        {"finetune-epochs": 1, "proximal-mu": 0.1},
    ],
    ids=["fedadam", "krum", "trimmedavg", "rowwise-users", "finetune-prox"],
)
def test_same_seed_same_bits_for_other_strategies(rc, tmp_path, overrides):
    run = {**rc, **overrides, "num-server-rounds": 2}
    cfg = RunConfig.from_mapping(run)
    models = []
    for k, ids in enumerate(([1, 2, 3], [30, 20, 10])):
        grid = InProcessGrid(client_app, _nodes(3), run, node_ids=ids, shuffle_seed=k)
        run_federated(grid, cfg, tmp_path / str(k))
        models.append(torch.load(tmp_path / str(k) / "model.pt")["state_dict"])
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert all(torch.isfinite(v).all() for v in models[0].values())
