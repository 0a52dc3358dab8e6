"""Shared fixtures: the ML-100K copy in ../shared and small logs the tests write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedrec_flwr.protocol import SERVER_ROUND_KEY
from fedrec_flwr.testing.inprocess import InProcessGrid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The RecBole-format ML-100K copy that ships beside the repo for tests and CI."""
    path = Path(os.environ.get("FEDREC_TEST_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))
    if not (path / "ml-100k.inter").is_file():
        pytest.fail(f"ML-100K test copy not found at {path}; set FEDREC_TEST_ML100K")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory):
    """Keep every test's caches and default outputs out of the real home.

    Session-scoped so that module-scoped fixtures (which run before any
    function-scoped one) see it too: the partition cache is written on first use.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDREC_FLWR_HOME", str(tmp_path_factory.getbasetemp() / "fedrec-home"))
        yield


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give this process a task identity: Flower stamps the messages it creates with it."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


def write_u_data(path: Path, rows: list[tuple[int, int, int, int]]) -> Path:
    """Write rows (user, item, rating, timestamp) as a GroupLens u.data file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return path


def checkerboard_rows(users_per_group: int = 8, items_per_group: int = 30, seed: int = 0):
    """Two user groups with disjoint item blocks; each user rated its whole block.

    Group g's users are ``g*1000 + u``; its items ``g*100 + i``. Every user's
    held-out items come from its own block, and every item outside the user's
    history lies in the other block, so a model that learned the blocks ranks the
    held-out item first.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(2):
        for u in range(users_per_group):
            items = rng.permutation(items_per_group)
            for t, i in enumerate(items):
                rows.append((g * 1000 + u + 1, g * 100 + int(i) + 1, 5, 1_000_000 + t))
    order = rng.permutation(len(rows))
    return [rows[k] for k in order]


_SLOW_MARKERS = frozenset({"flower", "deployment", "benchmark"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put every test that starts real Flower processes or runs a benchmark in
    the slow tier, so ``-m "not slow"`` is the fast tier without a second list."""
    for item in items:
        if _SLOW_MARKERS & {mark.name for mark in item.iter_markers()}:
            item.add_marker(pytest.mark.slow)


def flwr_run(tmp_path: Path, run_config: str, *, supernodes: int = 2) -> tuple[int, str, Path]:
    """``flwr run`` of this repository's FAB with a private FLWR_HOME and free ports.

    Every process the run started is stopped before returning, and none may be
    left. Returns the exit code, stdout + stderr and the FLWR_HOME used.
    """
    import subprocess

    from fedrec_flwr.ops.processes import (
        flower_env,
        local_superlink_ports,
        processes_mentioning,
        stop_processes,
    )

    flwr_home = tmp_path / "flwr-home"
    cmd = ["flwr", "run", str(REPO), "--stream", "--run-config", run_config]
    cmd += ["--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1"]
    neutral = tmp_path / "cwd"  # Ray puts the SuperLink's cwd on sys.path
    neutral.mkdir()
    env = flower_env(flwr_home, local_superlink_ports())
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=neutral, capture_output=True, text=True, timeout=420, check=False
        )
    finally:
        stop_processes(lambda: processes_mentioning(str(flwr_home)))
    assert processes_mentioning(str(flwr_home)) == []  # nothing left running
    return proc.returncode, proc.stdout + proc.stderr, flwr_home


class CrashingGrid(InProcessGrid):
    """Raises when the server sends a message of round ``crash_at`` (a killed server).

    ``kind``: only a message of that type (``"evaluate"``: killed after the
    nodes trained and stored the round, before the server checkpointed it).
    """

    def __init__(self, *args, crash_at: int, kind: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.crash_at, self.kind = crash_at, kind

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            if self.kind is not None and m.metadata.message_type != self.kind:
                continue
            for record in m.content.config_records.values():
                if record.get(SERVER_ROUND_KEY) == self.crash_at:
                    raise RuntimeError("server killed")
        return super().send_and_receive(messages, timeout=timeout)
