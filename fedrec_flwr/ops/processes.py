"""Flower processes from Python: the offline environment, free ports, and
finding and stopping everything a run started.

``flwr run`` leaves the local SuperLink it starts running detached (Flower's
design), and SuperNodes start children of their own. "Stop what I started"
therefore means: every process whose command line mentions a marker (a private
``FLWR_HOME``), plus all of their descendants. The deployment launcher, the
test suite and the benchmarks share these helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

__all__ = [
    "FLOWER_ENV",
    "descendants",
    "flower_env",
    "free_port",
    "local_superlink_ports",
    "processes_mentioning",
    "processes_with_home",
    "stop_processes",
]

#: Set for every Flower process started here: offline, quiet, and no
#: per-run ``uv sync`` of the app's dependencies (see the README).
FLOWER_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # SuperExec looks for new ClientApp tasks every second by default; each
    # round has two (train, evaluate), so a 0.1 s poll saves ~0.9 s per round
    # on average, for ~1.6% of a core per idle SuperExec.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}


def flower_env(home: Path | str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus :data:`FLOWER_ENV`, ``extra`` and
    ``FLWR_HOME=home``, with this interpreter's ``bin`` first on ``PATH`` so
    that ``flwr`` and ``flower-*`` are the ones installed beside it."""
    env = {**os.environ, **FLOWER_ENV, **(extra or {})}
    env["FLWR_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def local_superlink_ports() -> dict[str, str]:
    """Fresh ports for the ``:local:`` SuperLink that ``flwr run`` starts, as
    environment variables, so that runs side by side do not share one."""
    return {
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _live_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every readable, non-zombie process."""
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(proc.name)] = (int(fields[1]), cmd)
    return table


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live process below them, sorted."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in _live_processes().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


def processes_mentioning(marker: str, *extra_roots: int) -> list[int]:
    """Live processes whose command line mentions ``marker``, the
    ``extra_roots``, and all their descendants; never this process."""
    table = _live_processes()
    roots = [pid for pid, (_, cmd) in table.items() if marker in cmd and pid != os.getpid()]
    return [pid for pid in descendants([*roots, *extra_roots]) if pid in table]


def processes_with_home(home: Path | str) -> list[int]:
    """Live processes whose ``FLWR_HOME`` is ``home`` or lies below it.

    Flower's children (superexec, ServerApp and ClientApp processes) inherit
    the environment but not a telling command line, so the environment is the
    reliable mark of "started for this home".
    """
    marker = f"FLWR_HOME={home}".encode()
    found = []
    for pid in _live_processes():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if any(e == marker or e.startswith(marker + b"/") for e in env):
                found.append(pid)
    return found


def stop_processes(find: Callable[[], list[int]], grace: float = 10.0) -> None:
    """SIGTERM what ``find()`` returns, then SIGKILL what is left after
    ``grace`` seconds. ``find`` is called again while waiting, so children
    started meanwhile are caught too; our own exited children are reaped."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in find():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + grace
        while time.time() < deadline:
            pids = find()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
