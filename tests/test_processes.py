"""Finding and stopping every process a run started (fedrec_flwr.ops.processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fedrec_flwr.ops.processes import (
    FLOWER_ENV,
    flower_env,
    free_port,
    processes_mentioning,
    processes_with_home,
    stop_processes,
)

# A parent that starts a child and sleeps: the child's command line does not
# carry the marker, only its parentage (like Flower's detached SuperLink children).
_PARENT = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "time.sleep(60)"
)


def _wait_for(check, timeout=10.0):
    deadline = time.time() + timeout
    while not check() and time.time() < deadline:
        time.sleep(0.05)
    return check()


def test_stops_marked_processes_and_their_children(tmp_path):
    marker = f"marker-{tmp_path.name}"
    home = tmp_path / "flwr-home"
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, marker], env=flower_env(home / "node-0")
    )
    try:
        assert _wait_for(lambda: len(processes_mentioning(marker)) == 2)
        found = processes_mentioning(marker)
        assert parent.pid in found  # the marked parent and its unmarked child
        assert sorted(processes_with_home(home)) == found  # both inherit FLWR_HOME below home
        assert processes_with_home(tmp_path / "elsewhere") == []
        stop_processes(lambda: processes_mentioning(marker), grace=5)
        assert processes_mentioning(marker) == []
        assert parent.wait(timeout=5) is not None
    finally:
        if parent.poll() is None:
            parent.kill()


def test_flower_env_is_offline_and_uses_this_interpreter(tmp_path):
    env = flower_env(tmp_path, {"EXTRA": "1"})
    assert env["FLWR_HOME"] == str(tmp_path) and env["EXTRA"] == "1"
    assert all(env[key] == value for key, value in FLOWER_ENV.items())
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert 0 < free_port() < 65536
