"""A real deployment on loopback: SuperLink + two SuperNodes as processes.

Started by :mod:`fedrec_flwr.ops.deploy` (the documented script) under a temporary
state directory; every process is stopped by pid in a fixture ``finally``, and
the tests check that nothing started from that directory is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_u_data

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import prepare_data
from fedrec_flwr.models import NCF, is_private
from fedrec_flwr.ops.deploy import Deployment, down, restart, up
from fedrec_flwr.ops.processes import flower_env, processes_with_home
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.testing.inprocess import InProcessGrid

pytestmark = pytest.mark.deployment

SLICE_USERS = 150  # users 1..150 of ML-100K: ~16k ratings, rounds dominated by Flower


@pytest.fixture(scope="module")
def ml100k_slice(tmp_path_factory: pytest.TempPathFactory, ml100k_dir: Path) -> Path:
    """ML-100K restricted to its first users, as a GroupLens ``u.data``."""
    rows = []
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]
    for line in lines:
        user, item, rating, ts = line.split("\t")
        if int(user) <= SLICE_USERS:
            rows.append((int(user), int(item), int(float(rating)), int(float(ts))))
    return write_u_data(tmp_path_factory.mktemp("ml100k-slice"), rows)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    state_dir = (tmp_path / "deploy").resolve()
    try:
        yield up(2, state_dir=state_dir, flwr_home=tmp_path / "flwr-cli", timeout=90)
    finally:
        if (state_dir / "deploy.json").is_file():
            down(state_dir)
    deadline = time.time() + 10
    while processes_with_home(state_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert processes_with_home(state_dir) == []  # nothing we started is left


def _flwr_run(dep: Deployment, run_config: str, log: Path) -> subprocess.Popen[bytes]:
    env = flower_env(dep.flwr_home)
    cmd = ["flwr", "run", str(REPO), dep.connection, "--stream", "--run-config", run_config]
    neutral = log.parent / "cwd"
    neutral.mkdir(exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=neutral, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text(errors="replace")


def _shared_names(cfg: RunConfig, num_items: int) -> tuple[list[str], list[str]]:
    m = cfg.model
    names = list(NCF(1, num_items, m.model, m.factors, m.mlp_layers).state_dict())
    return [n for n in names if not is_private(n)], [n for n in names if is_private(n)]


def test_deployment_trains_like_simulation(deployment, ml100k_slice, tmp_path):
    out = tmp_path / "results"
    rc = f"num-server-rounds=2 local-epochs=1 data-dir='{ml100k_slice}' output-dir='{out}'"
    log = tmp_path / "flwr-run.log"
    text = _finish(_flwr_run(deployment, rc, log), log, timeout=240)
    assert (out / "results.json").is_file(), text[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num-clients"] == 2 and results["rounds-with-failures"] == []
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    # train + evaluate replies of both nodes, each round
    assert all(r["failures"] == 0 and r["replies"] == 4 for r in results["rounds"])

    # User embeddings never left a SuperNode: the server received exactly the
    # shared arrays, and the saved model has no user rows.
    cfg = RunConfig.from_mapping({"data-dir": str(ml100k_slice)})
    prepared = prepare_data(cfg.data)
    shared, private = _shared_names(cfg, prepared.num_items)
    assert private == ["user_gmf.weight", "user_mlp.weight"]
    assert results["arrays-received"] == sorted(shared)
    assert not any(is_private(k) for k in torch.load(out / "model.pt")["state_dict"])

    # The same seed and partitions in this process give the same rounds (metrics,
    # bytes) and model bits: context.state kept each node's user embeddings
    # across rounds on the SuperNode as it does here.
    rc_map = {"num-server-rounds": 2, "local-epochs": 1, "data-dir": str(ml100k_slice)}
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc_map, shuffle_seed=3)
    again = json.loads(
        run_federated(grid, RunConfig.from_mapping(rc_map), tmp_path / "again").read_text()
    )

    def comparable(rounds):
        timing = ("wall-seconds", "client-train-seconds", "client-eval-seconds")
        return [{k: v for k, v in r.items() if k not in timing} for r in rounds]

    assert comparable(results["rounds"]) == comparable(again["rounds"])
    assert again["arrays-received"] == results["arrays-received"]
    hr, hr_again = results["final"]["test"]["hr@10"], again["final"]["test"]["hr@10"]
    assert abs(hr - hr_again) <= 1e-6 and hr > 0.1
    ours = torch.load(tmp_path / "again" / "model.pt")["state_dict"]
    theirs = torch.load(out / "model.pt")["state_dict"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_run_survives_losing_a_supernode(deployment, ml100k_slice, tmp_path):
    out = tmp_path / "results"
    rc = (
        f"num-server-rounds=2 local-epochs=1 min-nodes=1 data-dir='{ml100k_slice}' "
        f"output-dir='{out}'"
    )
    log = tmp_path / "flwr-run.log"
    proc = _flwr_run(deployment, rc, log)
    victim_log = Path(str(deployment.processes["supernode-1"]["log"]))
    deadline = time.time() + 90
    try:
        while "Receiving: train message" not in victim_log.read_text(errors="replace"):
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        # The machine is gone: the SuperNode and its ClientApp die without a word.
        os.killpg(deployment.pids["supernode-1"], signal.SIGKILL)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    # The SuperLink notices after two missed 30 s heartbeats (Flower 1.42).
    text = _finish(proc, log, timeout=240)
    assert (out / "results.json").is_file(), text[-3000:]
    results = json.loads((out / "results.json").read_text())
    first, second = results["rounds"]
    assert results["rounds-with-failures"] == [1]
    # Round 1: node 0 trained and evaluated; node 1's train message failed.
    assert (first["replies"], first["failures"]) == (2, 1)
    assert "Node Unavailable" in " ".join(first["failure-reasons"])
    # Round 2 ran with the remaining node only, without failures.
    assert (second["replies"], second["failures"]) == (2, 0)
    assert results["num-clients"] == 1
    assert second["test"]["hr@10"] > 0


def test_killed_deployment_resumes_bit_identically(ml100k_slice, tmp_path):
    """SuperLink killed after round 2 of 4 (SuperNodes with it), restarted, resumed."""
    from fedrec_flwr.serving.checkpoint import read_checkpoint

    first, second = tmp_path / "first", tmp_path / "second"
    base = f"num-server-rounds=4 local-epochs=1 data-dir='{ml100k_slice}'"
    state_dir = (tmp_path / "deploy").resolve()
    dep = up(2, state_dir=state_dir, flwr_home=tmp_path / "flwr-cli", timeout=90)
    log = tmp_path / "first.log"
    try:
        proc = _flwr_run(dep, f"{base} output-dir='{first}'", log)
        deadline = time.time() + 240
        while True:
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            path = first / "checkpoint.npz"
            if path.is_file() and read_checkpoint(first).server_round >= 2:
                break
            time.sleep(0.05)
        os.killpg(dep.pids["superlink"], signal.SIGKILL)
        proc.kill()
        proc.wait()
    finally:
        down(state_dir)
    assert read_checkpoint(first).server_round == 2
    dep = up(2, state_dir=state_dir, flwr_home=tmp_path / "flwr-cli", timeout=90)
    log = tmp_path / "second.log"
    try:
        rc = f"{base} output-dir='{second}' resume-from='{first}'"
        text = _finish(_flwr_run(dep, rc, log), log, timeout=300)
    finally:
        down(state_dir)
    assert (second / "results.json").is_file(), text[-3000:]
    resumed = json.loads((second / "results.json").read_text())

    whole = _uninterrupted(ml100k_slice, tmp_path / "whole")
    assert _round_metrics(resumed["rounds"]) == _round_metrics(whole["rounds"])
    ours = torch.load(tmp_path / "whole" / "model.pt")["state_dict"]
    theirs = torch.load(second / "model.pt")["state_dict"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert resumed["delivery"]["users-served"] == SLICE_USERS


def _uninterrupted(ml100k_slice: Path, out: Path, rounds: int = 4) -> dict:
    """The same run in this process (equal to a deployment's, as tested above)."""
    rc_map = {"num-server-rounds": rounds, "local-epochs": 1, "data-dir": str(ml100k_slice)}
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc_map, shuffle_seed=3)
    return json.loads(run_federated(grid, RunConfig.from_mapping(rc_map), out).read_text())


def _round_metrics(rounds):
    return [(r["round"], r["train-loss"], r["val"], r["test"], r["val-loss"]) for r in rounds]


def _serverapp_pids(state_dir: Path) -> list[int]:
    """The ``flwr-serverapp`` processes of the deployment in ``state_dir``."""
    found = []
    for pid in processes_with_home(state_dir):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"flwr-serverapp" in cmdline:
            found.append(pid)
    return found


def test_restarted_supernode_goes_on_where_it_was(ml100k_slice, tmp_path):
    """A SuperNode killed after round 2 and restarted reloads its users' rows.

    With SuperNode authentication (``up(secure=True)``) the restarted node keeps
    its node id, so round 3's message waiting for it reaches it; its
    ``context.state`` is gone, and the node store brings the rows back. The
    result equals an uninterrupted run bit for bit.
    """
    out = tmp_path / "results"
    state_dir = (tmp_path / "deploy").resolve()
    dep = up(2, state_dir=state_dir, flwr_home=tmp_path / "flwr-cli", timeout=120, secure=True)
    log = tmp_path / "flwr-run.log"
    try:
        rc = f"num-server-rounds=4 local-epochs=1 data-dir='{ml100k_slice}' output-dir='{out}'"
        proc = _flwr_run(dep, rc, log)
        victim = Path(str(dep.processes["supernode-1"]["log"]))
        deadline = time.time() + 240
        while True:  # round 2's evaluate reply sent: the node is idle until round 3
            text = victim.read_text(errors="replace")
            tail = text.split("Sending: evaluate message")
            if len(tail) >= 3 and "Sent successfully" in tail[2]:
                break
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.02)
        # Hold the ServerApp while the node restarts: between rounds, as a node
        # restarting while the server aggregates (an offline node's waiting
        # message would otherwise be answered "unavailable" by the SuperLink).
        server = _serverapp_pids(state_dir)
        assert server, "no flwr-serverapp process found"
        for pid in server:
            os.kill(pid, signal.SIGSTOP)
        try:
            restart(dep, "supernode-1", timeout=60)
        finally:
            for pid in server:
                os.kill(pid, signal.SIGCONT)
        text = _finish(proc, log, timeout=300)
    finally:
        down(state_dir)
    assert (out / "results.json").is_file(), text[-3000:]
    assert victim.read_text(errors="replace").count("SuperNode ID") == 2  # it came back
    results = json.loads((out / "results.json").read_text())
    assert results["rounds-with-failures"] == [], results["rounds"]
    whole = _uninterrupted(ml100k_slice, tmp_path / "whole")
    assert _round_metrics(results["rounds"]) == _round_metrics(whole["rounds"])
    ours = torch.load(tmp_path / "whole" / "model.pt")["state_dict"]
    theirs = torch.load(out / "model.pt")["state_dict"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert results["delivery"]["users-served"] == SLICE_USERS


def test_the_audit_runs_in_a_real_deployment(deployment, ml100k_slice, tmp_path):
    """The privacy audit on the replies a real SuperLink receives: the same records
    as the in-process grid's for the same seed (the server holds the data here, so
    it knows the truth; with nodes' own logs it reports only what it infers,
    ``tests/test_privacy_audit.py``)."""
    out = tmp_path / "results"
    rc = (
        f"num-server-rounds=1 local-epochs=1 data-dir='{ml100k_slice}' output-dir='{out}' "
        "privacy-audit=true"
    )
    log = tmp_path / "flwr-run.log"
    text = _finish(_flwr_run(deployment, rc, log), log, timeout=240)
    assert (out / "results.json").is_file(), text[-3000:]
    audit = json.loads((out / "results.json").read_text())["privacy-audit"]
    rc_map = {
        "num-server-rounds": 1,
        "local-epochs": 1,
        "data-dir": str(ml100k_slice),
        "privacy-audit": True,
    }
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc_map, shuffle_seed=3)
    again = json.loads(
        run_federated(grid, RunConfig.from_mapping(rc_map), tmp_path / "again").read_text()
    )["privacy-audit"]

    def records(section):
        rows = [{k: v for k, v in r.items() if k != "node"} for r in section["records"]]
        return sorted(rows, key=lambda r: (r["partition-id"], r["attack"]))

    assert records(audit) == records(again)
    assert {r["partition-id"] for r in records(audit)} == {0, 1}
    # The control: without protection the best attack reads the groups' items.
    assert max(r["auc"] for r in records(audit) if r["auc"] is not None) > 0.9
