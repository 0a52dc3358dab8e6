"""Shared plumbing of the benchmark scripts (not part of the package).

Federated runs go through ``InProcessGrid``: the real ServerApp code
(``run_federated``) against the real ClientApp with every message serialised as
on the wire, one client after another in this process. It gives the same
per-round metrics and model bits as ``flwr run`` (``tests/test_flower_e2e.py``),
so quality numbers do not depend on the engine; engine costs are measured by
``speed.py`` with ``flwr run`` itself.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_ML100K = REPO.parent / "shared" / "data" / "ml-100k"


def default_data_dir() -> str:
    """The shared ML-100K copy when present, else '' (download into the cache)."""
    return str(SHARED_ML100K) if (SHARED_ML100K / "ml-100k.inter").is_file() else ""


def run_config_pairs(text: str) -> dict[str, Any]:
    """``key=value`` pairs separated by spaces (TOML values), as ``--run-config`` takes them."""
    return tomllib.loads("\n".join(text.split()))


def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)


def run_federated_inprocess(
    run_config: Mapping[str, Any], num_partitions: int, out_dir: Path
) -> dict[str, Any]:
    """One federated run in this process; returns its ``results.json``."""
    from fedrec_flwr.app.client_app import app as client_app
    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.runs.federated import run_federated
    from fedrec_flwr.testing.inprocess import InProcessGrid

    quiet_flower()
    rc = dict(run_config)
    nodes = [{"partition-id": p, "num-partitions": num_partitions} for p in range(num_partitions)]
    path = run_federated(InProcessGrid(client_app, nodes, rc), RunConfig.from_mapping(rc), out_dir)
    return json.loads(path.read_text())


def run_centralized_inprocess(run_config: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """One centralised run in this process; returns its ``results.json``."""
    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.runs.centralized import run_centralized

    # One thread, as each federated client: comparable timings, whatever the machine.
    rc = {"num-threads": 1, **run_config, "output-dir": str(out_dir)}
    path, _ = run_centralized(RunConfig.from_mapping(rc), log=False)
    return json.loads(path.read_text())


def parallel_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """``map`` over processes (each job single-threaded, so 2 cores = 2 jobs),
    with a progress bar on a terminal and plain progress lines otherwise."""
    from fedrec_flwr.progress import progress

    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in progress(jobs, "benchmark runs", unit="runs")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = progress(pool.map(fn, jobs), "benchmark runs", total=len(jobs), unit="runs")
        return list(done)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    vals = list(values)
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stamp() -> str:
    """Where and when: numbers only mean something next to the machine."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · load {load:.2f} · "
        f"Python {sys.version.split()[0]}"
    )


# --- `flwr run` simulations, as a user runs them ---------------------------------


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def flwr_simulation(
    run_config: Mapping[str, Any],
    num_supernodes: int,
    work_dir: Path,
    *,
    cpus_per_client: int = 1,
    timeout: float = 3600,
) -> tuple[dict[str, Any], float]:
    """``flwr run . --stream`` with a private FLWR_HOME and free ports.

    Returns the run's ``results.json`` and the peak summed RSS (MiB) of every
    process of the run (SuperLink, Ray, ServerApp, ClientApps), sampled every
    0.2 s. Every process the run started is stopped before returning.
    """
    import subprocess

    from fedrec_flwr.ops.processes import (
        flower_env,
        local_superlink_ports,
        processes_mentioning,
        stop_processes,
    )

    work_dir.mkdir(parents=True, exist_ok=True)
    home = work_dir / "flwr-home"
    out = work_dir / "results"
    env = flower_env(home, local_superlink_ports())
    items = {**run_config, "output-dir": str(out)}
    rc = " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())
    federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"
    cmd = [
        "flwr",
        "run",
        str(REPO),
        "--stream",
        "--federation-config",
        federation,
        "--run-config",
        rc,
    ]
    neutral = work_dir / "cwd"  # Ray puts the caller's cwd on sys.path
    neutral.mkdir(exist_ok=True)
    log_path = work_dir / "flwr-run.log"
    peak = 0
    try:
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=neutral, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + timeout
            while proc.poll() is None:
                if time.time() > deadline:
                    proc.kill()
                    raise TimeoutError(f"flwr run exceeded {timeout:.0f}s; log: {log_path}")
                run = processes_mentioning(str(home), proc.pid)
                peak = max(peak, sum(_rss_kib(p) for p in run))
                time.sleep(0.2)
        if proc.returncode != 0 or not (out / "results.json").is_file():
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"flwr run failed ({proc.returncode}); log tail:\n{tail}")
    finally:
        stop_processes(lambda: processes_mentioning(str(home)))
    return json.loads((out / "results.json").read_text()), peak / 1024
