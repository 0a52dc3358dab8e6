"""Persist, resume, deliver, recommend, warm start (in-process, checkerboard log)."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CrashingGrid, checkerboard_rows, write_u_data
from flwr.serverapp.strategy import FedAdam, FedAvgM

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.errors import ConfigError
from fedrec_flwr.ops.cli import main as fedrec_main
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.serving.checkpoint import (
    CHECKPOINT_FILE,
    read_checkpoint,
    restore_strategy_state,
    strategy_state,
)
from fedrec_flwr.serving.recommender import NodeRecommender, UnknownUserError
from fedrec_flwr.serving.session import new_lineage
from fedrec_flwr.serving.store import NodeStore, StoreError, check_lineage
from fedrec_flwr.testing.inprocess import InProcessGrid

logging.getLogger("flwr").setLevel(logging.WARNING)

SMALL = {"factors": 8, "mlp-layers": "16,8", "batch-size": 64, "num-eval-negatives": 20}


def _nodes(n, state_dir):
    return [{"partition-id": p, "num-partitions": n, "state-dir": str(state_dir)} for p in range(n)]


class _Restarting(InProcessGrid):
    """Empties every node's ``context.state`` before round ``restart_at`` (restarted nodes)."""

    def __init__(self, *args, restart_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.restart_at = restart_at
        self.restarted = False

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        rounds = {
            r.get("server-round") for m in messages for r in m.content.config_records.values()
        }
        if self.restart_at in rounds and not self.restarted:
            for ctx in self.contexts.values():
                for key in list(ctx.state.keys()):
                    del ctx.state[key]
            self.restarted = True
        return super().send_and_receive(messages, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())


def _rc(data_dir, **extra):
    return {"data-dir": str(data_dir), "num-server-rounds": 4, **SMALL, **extra}


def _run(rc, out, state_dir, grid_cls=InProcessGrid, n=2, **grid_kwargs):
    grid = grid_cls(client_app, _nodes(n, state_dir), rc, **grid_kwargs)
    path = run_federated(grid, RunConfig.from_mapping(rc), out)
    return json.loads(path.read_text()), grid


def _metrics(results):
    return [
        (e["round"], e["train-loss"], e["val"], e["test"], e["val-loss"]) for e in results["rounds"]
    ]


def _model(out):
    return torch.load(out / "model.pt")["state_dict"]


def _same_model(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def plain(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    results, grid = _run(_rc(data_dir), out, tmp_path_factory.mktemp("nodes"))
    return results, out, grid


# --- the node store --------------------------------------------------------------


def test_store_keeps_rounds_and_loads_the_newest_not_after_the_bound(tmp_path):
    store = NodeStore(tmp_path, "run-1-ab", 0)
    for r in (1, 2, 4):
        store.save(r, {"user_gmf.weight": np.full((2, 3), r, np.float32)}, {}, ["a", "b"])
    assert store.load(0) is None
    assert store.load(3).server_round == 2
    got = store.load(9)
    assert got.server_round == 4 and got.private["user_gmf.weight"][0, 0] == 4
    assert got.user_ids.tolist() == ["a", "b"]
    store.prune([2], newest=4)  # checkpointed at 2: keep 2 and everything after
    assert store.rounds() == [2, 4]
    store.prune([3], newest=4)  # round 3's state is round 2's file (node not sampled)
    assert store.rounds() == [2, 4]
    store.prune([4], newest=4)
    assert store.rounds() == [4]


def test_store_names_a_corrupted_file(tmp_path):
    store = NodeStore(tmp_path, "run-1-ab", 3)
    path = store.save(1, {"user_gmf.weight": np.zeros((2, 3), np.float32)}, {}, ["a", "b"])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(StoreError, match=r"partition-3/round-000001\.npz.*cannot be read"):
        store.load(1)


def test_lineages_are_safe_unique_and_of_one_length():
    names = [new_lineage(0), new_lineage(0), new_lineage(2**64 - 1), new_lineage(123)]
    assert len(set(names)) == 4 and len({len(n) for n in names}) == 1
    assert all(check_lineage(n) == n for n in names)


@pytest.mark.parametrize("lineage", ["../x", "/etc", "a/b", "", "..", "x" * 200])
def test_a_server_cannot_steer_a_node_store_outside_its_folder(lineage):
    with pytest.raises(StoreError, match="state-run"):
        check_lineage(lineage)


# --- checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("cls", [FedAdam, FedAvgM])
def test_strategy_state_round_trips(cls):
    strategy = cls(server_momentum=0.9) if cls is FedAvgM else cls()
    strategy.current_arrays = {"w": np.arange(3.0)} if cls is FedAdam else None
    if cls is FedAdam:
        strategy.m_t, strategy.v_t = {"w": np.ones(3)}, {"w": np.full(3, 2.0)}
    else:
        strategy.momentum_vector = [np.ones(2), np.zeros(3)]
    state = strategy_state(strategy)
    fresh = cls(server_momentum=0.9) if cls is FedAvgM else cls()
    restore_strategy_state(fresh, state)
    assert strategy_state(fresh).keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(strategy_state(fresh)[key], value)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(plain, data_dir, tmp_path):
    results, out, _ = plain
    nodes = tmp_path / "nodes"
    first = tmp_path / "first"
    with pytest.raises(RuntimeError, match="server killed"):
        _run(_rc(data_dir), first, nodes, CrashingGrid, crash_at=3)
    assert read_checkpoint(first).server_round == 2
    second = tmp_path / "second"
    resumed, _ = _run(_rc(data_dir, **{"resume-from": str(first)}), second, nodes)
    assert _metrics(resumed) == _metrics(results)
    _same_model(_model(second), _model(out))
    assert resumed["lineage"] == read_checkpoint(first).lineage
    assert [e["round"] for e in resumed["rounds"]] == [1, 2, 3, 4]
    assert sorted(resumed["checkpoint-seconds"]) == ["3", "4"]  # this run's checkpoints


def _whole_and_resumed(rc, tmp_path):
    """One uninterrupted run, and one killed at round 3 then resumed (its own store)."""
    whole, _ = _run(rc, tmp_path / "whole", tmp_path / "n1")
    first = tmp_path / "first"
    with pytest.raises(RuntimeError, match="server killed"):
        _run(rc, first, tmp_path / "n2", CrashingGrid, crash_at=3)
    resumed, _ = _run({**rc, "resume-from": str(first)}, tmp_path / "second", tmp_path / "n2")
    assert _metrics(resumed) == _metrics(whole)
    _same_model(_model(tmp_path / "second"), _model(tmp_path / "whole"))
    return whole, resumed


def test_resumed_fedadam_run_keeps_the_server_moments(data_dir, tmp_path):
    _whole_and_resumed(_rc(data_dir, strategy="fedadam"), tmp_path)


def test_kept_adam_state_resumes_and_survives_restarted_nodes(plain, data_dir, tmp_path):
    rc = _rc(data_dir, **{"optimizer-state": "keep"})
    whole, _ = _whole_and_resumed(rc, tmp_path)
    store = NodeStore(tmp_path / "n1", whole["lineage"], 0)
    kept = store.load(4).optimizer
    assert kept and all(k.rsplit("/", 1)[1] in ("step", "exp_avg", "exp_avg_sq") for k in kept)
    again, grid = _run(rc, tmp_path / "restarted", tmp_path / "n3", _Restarting, restart_at=3)
    assert grid.restarted and _metrics(again) == _metrics(whole)
    # Negative controls: the kept moments change the run from round 2 on (so the
    # equalities above can fail), and a fresh-Adam store holds none.
    assert _metrics(whole)[:1] == _metrics(plain[0])[:1]
    assert _metrics(whole)[1:] != _metrics(plain[0])[1:]
    results, _, grid = plain
    root = next(iter(grid.contexts.values())).node_config["state-dir"]
    stored = NodeStore(Path(root), results["lineage"], 0).load(4)
    assert stored is not None and stored.private and stored.optimizer == {}


def test_restarted_nodes_reload_their_rows_from_the_store(plain, data_dir, tmp_path):
    results, out, _ = plain
    again, grid = _run(
        _rc(data_dir), tmp_path / "out", tmp_path / "nodes", _Restarting, restart_at=3
    )
    assert grid.restarted
    assert _metrics(again) == _metrics(results)
    _same_model(_model(tmp_path / "out"), _model(out))


def test_without_the_store_a_restarted_node_would_start_its_users_anew(plain, data_dir, tmp_path):
    """Negative control: wiping the store too changes the run (so the test above can fail)."""
    results, _, _ = plain

    class _Wipe(_Restarting):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if not self.restarted and any(
                r.get("server-round") == 3
                for m in messages
                for r in m.content.config_records.values()
            ):
                import shutil

                shutil.rmtree(tmp_path / "nodes")
            return super().send_and_receive(messages, timeout=timeout)

    again, _ = _run(_rc(data_dir), tmp_path / "out", tmp_path / "nodes", _Wipe, restart_at=3)
    assert _metrics(again)[:2] == _metrics(results)[:2]
    assert _metrics(again)[2:] != _metrics(results)[2:]


@pytest.mark.parametrize(
    "change, keys",
    [
        ({"factors": 16}, "factors=16"),
        ({"seed": 7, "model": "gmf"}, "seed=7.*model='gmf'|model='gmf'.*seed=7"),
        # The nodes' stores hold no Adam state to go on with.
        ({"optimizer-state": "keep"}, "optimizer-state='keep'"),
        # The SecAgg+ loop checkpoints other state than the Message-API rounds.
        ({"secure-aggregation": "secaggplus"}, "secure-aggregation='secaggplus'"),
    ],
)
def test_resume_refuses_a_config_that_changes_the_model(plain, data_dir, tmp_path, change, keys):
    _, out, _ = plain
    rc = _rc(data_dir, **{"resume-from": str(out), "num-server-rounds": 6, **change})
    with pytest.raises(ConfigError, match=f"resume-from: .*({keys})"):
        _run(rc, tmp_path / "o", tmp_path / "n")


def test_resume_names_a_missing_or_corrupted_checkpoint(tmp_path, data_dir):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/checkpoint.npz not found")):
        read_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match=r"checkpoint\.npz is corrupted"):
        read_checkpoint(tmp_path)


def test_resume_past_the_last_round_says_so(plain, data_dir, tmp_path):
    _, out, _ = plain
    with pytest.raises(ConfigError, match="already holds round 4 of num-server-rounds=4"):
        _run(_rc(data_dir, **{"resume-from": str(out)}), tmp_path / "o", tmp_path / "n")


_NODE_DP = {"dp": "node-client", "dp-clip": 5.0, "dp-noise-multiplier": 0.5}


def test_a_warm_start_with_node_dp_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"^init-from with dp='node-client': the earlier run's releases .* not be accounted",
    ):
        RunConfig.from_mapping({"init-from": "/x", **_NODE_DP})
    RunConfig.from_mapping({"resume-from": "/x", **_NODE_DP})  # a resume accounts them


def test_a_resumed_node_dp_run_is_bit_identical_and_keeps_counting_epsilon(
    data_dir, tmp_path, monkeypatch
):
    # The noise depends only on the server's noise seed and the round; the
    # accountant is given the checkpoint's releases, so epsilon goes on counting.
    from fedrec_flwr.privacy.nodedp import NOISE_SEED_ENV_VAR

    monkeypatch.setenv(NOISE_SEED_ENV_VAR, "77")
    rc = _rc(data_dir, **_NODE_DP)
    whole, resumed = _whole_and_resumed(rc, tmp_path)
    eps = whole["dp"]["epsilon-per-round"]
    assert resumed["dp"]["epsilon-per-round"] == eps and len(eps) == 4
    assert 0 < eps[0] < eps[1] < eps[2] < eps[3]  # four releases composed, not two
    # Another noise multiplier would release rounds 3 and 4 under another mechanism.
    other = {**rc, "dp-noise-multiplier": 0.6, "resume-from": str(tmp_path / "first")}
    with pytest.raises(ConfigError, match=r"noise-multiplier 0.5 -> 0.6"):
        _run(other, tmp_path / "third", tmp_path / "n2")


def test_a_resumed_audited_run_keeps_the_earlier_rounds_audit(data_dir, tmp_path):
    # The audit's records are checkpointed: resumed, the run's privacy-audit
    # section is the uninterrupted run's, every round audited once.
    whole, resumed = _whole_and_resumed(_rc(data_dir, **{"privacy-audit": True}), tmp_path)

    def audit(results):
        records = [
            {k: v for k, v in r.items() if k != "node"}  # Flower's node ids: per run
            for r in results["privacy-audit"]["records"]
        ]  # in reply order: sorted to compare
        return sorted(records, key=lambda r: (r["round"], r["partition-id"], r["attack"]))

    assert sorted({r["round"] for r in audit(whole)}) == [1, 2, 3, 4]
    assert audit(resumed) == audit(whole)
    assert resumed["privacy-audit"]["summary"] == whole["privacy-audit"]["summary"]


# --- delivery and recommendations -----------------------------------------------


def _node_dirs(results, nodes):
    return sorted((nodes / results["lineage"]).glob("partition-*"))


def test_every_node_writes_recommendations_for_all_its_users(data_dir, tmp_path):
    nodes = tmp_path / "nodes"
    rc = _rc(data_dir, **{"num-server-rounds": 6, "learning-rate": 0.01})
    results, _ = _run(rc, tmp_path / "out", nodes)
    assert results["delivery"]["users-served"] == 16
    assert results["delivery"]["round"] == results["selected"]["round"]
    rows = pd.concat(
        pd.read_parquet(d / "recommendations.parquet") for d in _node_dirs(results, nodes)
    )
    assert rows["user"].nunique() == 16 and (rows.groupby("user").size() == 10).all()
    log = pd.read_csv(data_dir / "u.data", sep="\t", names=["user", "item", "r", "t"])
    log = log.sort_values("t")
    seen, held = set(), 0
    for user, group in log.groupby("user"):
        items = [str(i) for i in group["item"]]
        train, heldout = items[:-2], items[-2:]
        recs = set(rows.loc[rows["user"] == str(user), "item"])
        assert not recs & set(train), user  # no list holds an item the user trained on
        held += bool(set(heldout) & recs)
        seen |= {user}
    assert held >= 12  # the held-out items are in most users' top 10
    csv = pd.concat(
        pd.read_csv(d / "recommendations.csv", dtype={"user": str, "item": str})
        for d in _node_dirs(results, nodes)
    )
    assert (
        csv["user"].tolist() == rows["user"].tolist()
        and csv["item"].tolist() == rows["item"].tolist()
    )


def test_recommend_api_and_cli_serve_from_a_node_folder(plain, capsys):
    results, out, grid = plain
    nodes = out.parent / grid.contexts[next(iter(grid.contexts))].node_config["state-dir"]
    folder = _node_dirs(results, nodes)[0]
    rec = NodeRecommender.load(folder)
    delivered = pd.read_parquet(folder / "recommendations.parquet")
    frame = rec.recommend(None, 10)
    assert frame["item"].tolist() == delivered["item"].tolist()
    one = rec.recommend([rec.user_ids[0]], 3)
    assert one["item"].tolist() == delivered["item"].tolist()[:3]
    with pytest.raises(UnknownUserError, match="user 'nobody' is not a user of this node"):
        rec.recommend(["nobody"], 3)
    assert (
        fedrec_main(
            ["recommend", "--node-dir", str(folder), "--users", rec.user_ids[0], "--k", "3"]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "user,rank,item,score" and len(printed) == 4
    assert fedrec_main(["recommend", "--node-dir", str(folder), "--users", "nobody"]) == 2
    assert "is not a user of this node" in capsys.readouterr().err


def test_full_ranking_metrics_are_reported_next_to_the_sampled_ones(plain):
    results, _, _ = plain
    for entry in results["rounds"]:
        for part in ("val", "test"):
            assert {"full-hr@10", "full-recall@10", "full-ndcg@10", "hr@10"} <= set(entry[part])
            # Over the whole catalogue the held-out item has more rivals than 20 negatives.
            assert entry[part]["full-hr@10"] <= entry[part]["hr@10"] + 1e-12


# --- warm start ------------------------------------------------------------------


def test_warm_start_keeps_known_users_rows_and_trains_a_grown_log(data_dir, tmp_path):
    nodes = tmp_path / "nodes"
    # Hashed groups: a user stays on its node as the log grows (as an organisation's would).
    first, _ = _run(
        _rc(data_dir, **{"num-server-rounds": 2, "partitioner": "hash"}), tmp_path / "first", nodes
    )
    rows = checkerboard_rows()
    grown = rows + [(3000 + u, 100 + (u % 30) + 1, 5, 2_000_000 + u) for u in range(1, 4)]
    grown += [(3000 + u, 100 + ((u + 7) % 30) + 1, 5, 2_000_100 + u) for u in range(1, 4)]
    grown += [(3000 + u, 100 + ((u + 9) % 30) + 1, 5, 2_000_200 + u) for u in range(1, 4)]
    grown += [(3000 + u, 100 + ((u + 11) % 30) + 1, 5, 2_000_300 + u) for u in range(1, 4)]
    grown_dir = write_u_data(tmp_path / "grown", grown)
    rc = {
        **_rc(grown_dir, **{"num-server-rounds": 1, "partitioner": "hash"}),
        "init-from": str(tmp_path / "first"),
        "learning-rate": 1e-9,
    }
    second, _ = _run(rc, tmp_path / "second", nodes)
    assert second["initialised-from"] == str(tmp_path / "first")
    delivered = np.load(tmp_path / "first" / "delivered.npz")
    # lr 1e-9 (Adam steps ~ lr): the arrays come back as the earlier run delivered them
    start = _model(tmp_path / "second")
    for name in ("item_gmf.weight", "output.weight"):
        np.testing.assert_allclose(start[name].numpy(), delivered[name], atol=1e-6)
    old = {}
    for folder in _node_dirs(first, nodes):
        pid = int(folder.name.split("-")[1])
        stored = NodeStore(nodes, first["lineage"], pid).load(first["delivery"]["round"])
        old.update(
            dict(zip(stored.user_ids.tolist(), stored.private["user_gmf.weight"], strict=True))
        )
    new_users = 0
    for folder in _node_dirs(second, nodes):
        stored = NodeStore(nodes, second["lineage"], int(folder.name.split("-")[1])).load(99)
        for uid, row in zip(
            stored.user_ids.tolist(), stored.private["user_gmf.weight"], strict=True
        ):
            if uid in old:
                np.testing.assert_allclose(row, old[uid], atol=1e-6)
            else:
                new_users += 1
    assert new_users == 3
