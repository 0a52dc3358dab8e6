"""Per-round time of a real deployment vs the simulation engine, same config.

Runs ``flwr run`` twice with the same run config, seed and partitions: once on
the simulation engine (``--federation-config num-supernodes=N``, one CPU per
client) and once on a local deployment started by :mod:`fedrec_flwr.ops.deploy`
(SuperLink + N SuperNodes on loopback). Prints each round's wall time (from
``results.json``, measured by the ServerApp), the mean after round 1, their
ratio, the final test HR@10 of both and their difference, and the cost of one
fresh ClientApp process (imports), which deployment pays per message.

Usage (from the repository root)::

    python benchmarks/bench_deploy.py --supernodes 2 --rounds 3 --local-epochs 1

Every Flower process it starts is stopped by pid before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedrec_flwr.ops.deploy import down, up  # noqa: E402
from fedrec_flwr.ops.processes import (  # noqa: E402
    FLOWER_ENV,
    flower_env,
    local_superlink_ports,
    processes_with_home,
    stop_processes,
)


def _flwr_run(args: list[str], home: Path, extra_env: dict[str, str], cwd: Path) -> float:
    env = flower_env(home, extra_env)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["flwr", "run", str(REPO), *args, "--stream"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError((proc.stdout + proc.stderr)[-3000:])
    return wall


def _summary(name: str, results_dir: Path, wall: float) -> dict[str, float]:
    results = json.loads((results_dir / "results.json").read_text())
    rounds = [r["wall-seconds"] for r in results["rounds"]]
    later = rounds[1:] or rounds
    failures = sum(r["failures"] for r in results["rounds"])
    print(
        f"{name:10} rounds (s): {' '.join(f'{t:6.2f}' for t in rounds)} | "
        f"mean after round 1: {sum(later) / len(later):6.2f} s | flwr run wall: {wall:6.1f} s"
        f" | failures: {failures} | final test HR@10: {results['final']['test']['hr@10']:.10f}"
    )
    return {
        "round-1": rounds[0],
        "mean-later": sum(later) / len(later),
        "hr@10": results["final"]["test"]["hr@10"],
    }


def _clientapp_process_cost() -> float:
    """Seconds a fresh interpreter needs to import Flower's ClientApp runtime and ours."""
    code = "import flwr.supernode.runtime.run_clientapp, fedrec_flwr.app.client_app"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared" / "data" / "ml-100k",
        help="absolute ML-100K folder (default: ../shared/data/ml-100k)",
    )
    parser.add_argument(
        "--superexec-poll",
        type=float,
        default=float(FLOWER_ENV["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]),
        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for the SuperNodes (Flower's default: 1.0)",
    )
    parser.add_argument("--engines", default="simulation,deployment")
    args = parser.parse_args()
    engines = args.engines.split(",")
    print(f"load average before: {os.getloadavg()}; cpus: {os.cpu_count()}")
    print(f"fresh ClientApp process (imports only): {_clientapp_process_cost():.2f} s")
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp_str:
        tmp = Path(tmp_str)
        (tmp / "cwd").mkdir()
        rc = (
            f"num-server-rounds={args.rounds} local-epochs={args.local_epochs} "
            f"data-dir='{args.data_dir.resolve()}'"
        )
        got = {}
        if "simulation" in engines:
            home = tmp / "sim-home"
            out = tmp / "sim-out"
            try:
                wall = _flwr_run(
                    [
                        "--federation-config",
                        f"num-supernodes={args.supernodes} client-resources-num-cpus=1",
                        "--run-config",
                        f"{rc} output-dir='{out}'",
                    ],
                    home,
                    local_superlink_ports(),
                    tmp / "cwd",
                )
            finally:
                stop_processes(lambda: processes_with_home(home))
            got["simulation"] = _summary("simulation", out, wall)
        if "deployment" in engines:
            state = tmp / "deploy"
            out = tmp / "dep-out"
            env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(args.superexec_poll)}
            try:
                dep = up(args.supernodes, state_dir=state, flwr_home=tmp / "cli", env=env)
                wall = _flwr_run(
                    [dep.connection, "--run-config", f"{rc} output-dir='{out}'"],
                    tmp / "cli",
                    {},
                    tmp / "cwd",
                )
            finally:
                if (state / "deploy.json").is_file():
                    down(state)
            got["deployment"] = _summary("deployment", out, wall)
        if len(got) == 2:
            sim, dep_ = got["simulation"], got["deployment"]
            print(
                f"deployment / simulation per round (after round 1): "
                f"{dep_['mean-later'] / sim['mean-later']:.2f}x "
                f"(+{dep_['mean-later'] - sim['mean-later']:.2f} s per round); "
                f"|HR@10 difference| = {abs(dep_['hr@10'] - sim['hr@10']):.3g}"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
