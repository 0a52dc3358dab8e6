"""Federated behaviour, end to end through real Flower records (no Ray).

`InProcessGrid` serialises every message and reply as on the wire, so what the
server sees here is what it would see from a SuperLink.
"""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data
from flwr.app import Context, RecordDict
from flwr.server import ServerApp as LegacyServerApp
from flwr.server import ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.app.client_app import client_fn, legacy_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import DataOptions, cache, prepare_data
from fedrec_flwr.models import private_arrays
from fedrec_flwr.protocol import PRIVATE_STATE_KEY
from fedrec_flwr.runs.federated import initial_arrays, run_federated
from fedrec_flwr.strategies import WeightedFedAvg
from fedrec_flwr.testing.inprocess import InProcessGrid

logging.getLogger("flwr").setLevel(logging.WARNING)

SMALL = {"factors": 8, "mlp-layers": "16,8", "batch-size": 64, "top-k": "1"}
# The ML-100K runs check structure and bits, not quality: one local epoch keeps
# them inside the fast tier.
ML100K = {**SMALL, "local-epochs": 1}


def _grid(run_config, num_partitions, **kwargs):
    nodes = [{"partition-id": p, "num-partitions": num_partitions} for p in range(num_partitions)]
    return InProcessGrid(client_app, nodes, run_config, **kwargs)


@pytest.fixture(scope="module")
def checkerboard(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())


def _checkerboard_run(data_dir, out_dir, learning_rate):
    rc = {
        "data-dir": str(data_dir),
        "num-server-rounds": 3,
        "local-epochs": 2,
        "learning-rate": learning_rate,
        "num-eval-negatives": 20,
        **SMALL,
    }
    path = run_federated(_grid(rc, 2), RunConfig.from_mapping(rc), out_dir)
    return json.loads(path.read_text())


def test_checkerboard_held_out_item_ranks_first(checkerboard, tmp_path):
    # Each client holds users of *both* groups, so item popularity cannot solve
    # it: only user x item structure puts the held-out item first.
    prepared = prepare_data(DataOptions(data_dir=str(checkerboard), num_eval_negatives=20))
    for p in range(2):
        groups = prepared.user_ids[prepared.client_data(p, 2).users] // 1000
        assert set(groups) == {0, 1}
    trained = _checkerboard_run(checkerboard, tmp_path / "a", learning_rate=0.01)
    assert trained["rounds"][-1]["test"]["hr@1"] >= 0.8
    # Control: the same run without learning ranks it first for nobody.
    frozen = _checkerboard_run(checkerboard, tmp_path / "b", learning_rate=1e-7)
    assert frozen["rounds"][-1]["test"]["hr@1"] < 0.2


@pytest.fixture(scope="module")
def ml100k_run(ml100k_dir, tmp_path_factory):
    """Two rounds on ML-100K with three user groups; replies arrive shuffled."""
    rc = {"data-dir": str(ml100k_dir), "num-server-rounds": 2, **ML100K}
    grid = _grid(rc, 3, shuffle_seed=0)
    out = tmp_path_factory.mktemp("run")
    path = run_federated(grid, RunConfig.from_mapping(rc), out)
    return grid, json.loads(path.read_text()), out, rc


def test_user_embeddings_never_leave_the_client(ml100k_run):
    grid, _, out, _ = ml100k_run
    private = [
        arr.numpy()
        for ctx in grid.contexts.values()
        for arr in ctx.state.array_records[PRIVATE_STATE_KEY].values()
    ]
    assert len(private) == 3 * 2  # GMF and MLP user tables on each of 3 nodes
    # train + evaluate, 2 rounds, 3 nodes; then one delivery reply per node
    assert len(grid.replies) == 2 * 2 * 3 + 3
    for reply in grid.replies:
        for record in reply.content.array_records.values():
            for name, array in record.items():
                assert "user" not in name
                value = array.numpy()
                assert not any(value.shape == p.shape and np.allclose(value, p) for p in private), (
                    name
                )
        for record in reply.content.metric_records.values():
            counts = ("num-users", "users-served")  # sizes, not user data
            assert not any("user" in key and key not in counts for key in record)
    saved = torch.load(out / "model.pt")["state_dict"]
    assert saved and not any("user" in name for name in saved)


def test_private_state_persists_and_keeps_training(ml100k_dir):
    rc = {"data-dir": str(ml100k_dir), "num-server-rounds": 1, **ML100K}
    grid = _grid(rc, 3)
    arrays = initial_arrays(RunConfig.from_mapping(rc), 1682)
    strategy = WeightedFedAvg()
    ctx = grid.contexts[101]
    fresh = private_arrays(client_fn(Context(1, 101, ctx.node_config, RecordDict(), rc)).model)
    snapshots = []
    for _ in range(2):
        arrays = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1).arrays
        state = ctx.state.array_records[PRIVATE_STATE_KEY]
        snapshots.append({k: v.numpy().copy() for k, v in state.items()})
        # A client built for the next message resumes from the stored embeddings.
        resumed = private_arrays(client_fn(ctx).model)
        assert all(np.array_equal(resumed[k], snapshots[-1][k]) for k in resumed)
    for name, initial in fresh.items():
        assert not np.array_equal(initial, snapshots[0][name])  # round 1 trained them
        assert not np.array_equal(snapshots[0][name], snapshots[1][name])  # round 2 too


def test_results_files(ml100k_run):
    _, results, out, rc = ml100k_run
    assert (out / "metrics.png").stat().st_size > 10_000
    assert results["mode"] == "federated" and results["num-clients"] == 3
    assert results["config"]["data-dir"] == rc["data-dir"]
    assert "row that comes first in the file" in results["protocol"]["tie-rule"]
    assert results["dataset"]["num-users"] == 943
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for entry in results["rounds"]:
        assert entry["bytes-sent"] > 0 and entry["bytes-received"] > 0
        assert entry["wall-seconds"] > 0 and entry["failures"] == 0
        sampled = {"hr@1", "ndcg@1", "hr@10", "ndcg@10"}
        full = {f"full-{m}@{k}" for m in ("hr", "recall", "ndcg") for k in (1, 10)}
        assert set(entry["val"]) == set(entry["test"]) == sampled | full
        assert 0 < entry["test"]["hr@10"] < 1 and entry["train-loss"] > 0
    assert results["selected"]["round"] in (1, 2)
    assert results["selected"]["by"] == "val-hr@10"


def test_same_seed_same_bits_whatever_the_arrival_order(ml100k_run, ml100k_dir, tmp_path):
    _, first, out, rc = ml100k_run
    grid = _grid(rc, 3, shuffle_seed=123, node_ids=[7, 5, 3])
    path = run_federated(grid, RunConfig.from_mapping(rc), tmp_path)
    again = json.loads(path.read_text())
    strip = ("wall-seconds", "client-train-seconds", "client-eval-seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in first["rounds"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in again["rounds"]
    ]
    a, b = (
        torch.load(out / "model.pt")["state_dict"],
        torch.load(tmp_path / "model.pt")["state_dict"],
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_raw_log_is_parsed_once_per_process(checkerboard, tmp_path, monkeypatch):
    from fedrec_flwr.datasets import prepare

    calls = []
    original = prepare._load_source
    monkeypatch.setattr(prepare, "_load_source", lambda o: calls.append(o.data_dir) or original(o))
    prepare.prepare_data.cache_clear()
    cache.load_client_data.cache_clear()
    rc = {"data-dir": str(checkerboard), "num-server-rounds": 3, "num-eval-negatives": 20, **SMALL}
    run_federated(_grid(rc, 3), RunConfig.from_mapping(rc), tmp_path)
    assert calls == [str(checkerboard)]  # server and 3 clients x 3 rounds x 2 messages


def test_client_errors_are_reported_not_swallowed(ml100k_dir, tmp_path):
    rc = {"data-dir": str(ml100k_dir), "num-server-rounds": 1, **ML100K}
    grid = InProcessGrid(client_app, [{"num-partitions": 2}, {"num-partitions": 2}], rc)
    with pytest.raises(RuntimeError, match="partition-id=None: expected an integer"):
        run_federated(grid, RunConfig.from_mapping(rc), tmp_path)


def test_legacy_client_fn_app_with_legacy_fedavg(ml100k_dir):
    rc = {"data-dir": str(ml100k_dir), **ML100K}
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(legacy_app, nodes, rc)
    strategy = LegacyFedAvg(min_fit_clients=2, min_evaluate_clients=2, min_available_clients=2)
    server = LegacyServerApp(config=ServerConfig(num_rounds=1), strategy=strategy)
    server(
        grid,
        Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=rc),
    )
    # Each node trained (private state written) and answered train and evaluate.
    assert all(PRIVATE_STATE_KEY in c.state.array_records for c in grid.contexts.values())
    assert len([r for r in grid.replies if not r.has_error()]) >= 4
    assert not [r for r in grid.replies if r.has_error()]
