"""Scale: seconds per round and peak memory as users, items and clients grow.

Synthetic power-law logs (``bench_data.generate``: ML-20M's shape at 20M, 138k
users x 27k items) are prepared by the real pipeline (``dataset = "log"``) and
trained for one federated round (``local-epochs=1``) through the real ServerApp
and ClientApp code on ``InProcessGrid`` (serialised messages, clients one after
another in one process, one thread). Each (size, clients) point runs in a fresh
process so its peak RSS is its own.

    python benchmarks/scale.py            # 1M and 20M interactions x 100 and 1,000 clients
    python benchmarks/scale.py --quick    # CI: 20k and 100k interactions x 10 and 100 clients
    python benchmarks/scale.py --sizes 20000000 --clients 1000 --reuse   # add one point

Each point is also saved as ``run-<interactions>-<clients>/point.json``; ``--reuse``
takes a point from there instead of re-running it, so the slow 20M points can be
measured one at a time and the table and plot still cover every point in ``--out``.

Prints a markdown table and writes ``scale.png`` and ``scale.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _bench

FULL_SIZES, FULL_CLIENTS = (1_000_000, 20_000_000), (100, 1000)
QUICK_SIZES, QUICK_CLIENTS = (20_000, 100_000), (10, 100)


def _one(log: Path, clients: int, out: Path) -> dict[str, Any]:
    """One point, in this (fresh) process."""
    from bench_data import _shape  # noqa: F401  (same shapes as the data benchmark)

    rc = {
        "dataset": "log",
        "data-dir": str(log),
        "num-server-rounds": 1,
        "local-epochs": 1,
    }
    t0 = time.perf_counter()
    results = _bench.run_federated_inprocess(rc, clients, out)
    wall = time.perf_counter() - t0
    rnd = results["rounds"][0]
    return {
        "interactions": results["dataset"]["num-interactions"],
        "users": results["dataset"]["num-users"],
        "items": results["dataset"]["num-items"],
        "clients": clients,
        "round-seconds": rnd["wall-seconds"],
        "train-seconds": rnd.get("client-train-seconds"),
        "total-seconds": wall,
        "bytes-per-round": rnd["bytes-sent"] + rnd["bytes-received"],
        "peak-rss-gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "test-hr@10": rnd["test"]["hr@10"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--clients", default="")
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--reuse", action="store_true", help="take points already measured in --out"
    )
    parser.add_argument("--one", nargs=3, metavar=("LOG", "CLIENTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        log, clients, out_dir = args.one
        print(json.dumps(_one(Path(log), int(clients), Path(out_dir))))
        return 0
    from bench_data import generate

    from fedrec_flwr.paths import runs_home

    out = Path(args.out) if args.out else runs_home().parent / "benchmarks" / "scale"
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    clients = QUICK_CLIENTS if args.quick else FULL_CLIENTS
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.clients:
        clients = tuple(int(c) for c in args.clients.split(","))
    points = []
    from fedrec_flwr.progress import progress

    for n in progress(sizes, "scale sizes", unit="sizes"):
        log = out / f"synthetic-{n}.csv"
        if not log.is_file() and not (
            args.reuse and all((out / f"run-{n}-{k}" / "point.json").is_file() for k in clients)
        ):
            generate(log, n)
        for k in clients:
            saved = out / f"run-{n}-{k}" / "point.json"
            if args.reuse and saved.is_file():
                points.append(json.loads(saved.read_text()))
                continue
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(log), str(k), str(out / f"run-{n}-{k}")],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"scale point {n} x {k} failed:\n{proc.stderr[-3000:]}")
            points.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            saved.write_text(json.dumps(points[-1], indent=2))
            print(f"point: {json.dumps(points[-1])}", file=sys.stderr, flush=True)
    if args.reuse:  # every point measured in --out, not only this call's
        points = [json.loads(f.read_text()) for f in out.glob("run-*-*/point.json")]
        points.sort(key=lambda p: (p["interactions"], p["clients"]))
    table = [
        (
            f"{p['interactions']:,}",
            f"{p['users']:,} x {p['items']:,}",
            p["clients"],
            f"{p['round-seconds']:.1f}",
            f"{p['bytes-per-round'] / 1e6:.1f}",
            f"{p['peak-rss-gib']:.2f}",
        )
        for p in points
    ]
    print(f"One federated round, local-epochs=1, one thread ({_bench.stamp()})\n")
    print(
        _bench.markdown_table(
            ("interactions", "users x items", "clients", "s/round", "MB/round", "peak GiB"), table
        )
    )
    (out / "scale.json").write_text(json.dumps(points, indent=2))
    _plot(points, out / "scale.png")
    print(f"\nwrote {out / 'scale.json'} and {out / 'scale.png'}")
    return 0


def _slope(xs: list[float], ys: list[float]) -> str:
    """Log-log slope over the points (cost ~ interactions^slope), as a label suffix."""
    if len(xs) < 2:
        return ""
    import numpy as np

    slope = np.polyfit(np.log(xs), np.log(ys), 1)[0]
    return f", slope {slope:.2f}"


def _plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in sorted({p["clients"] for p in points}):
        pts = sorted((p for p in points if p["clients"] == k), key=lambda p: p["interactions"])
        xs = [p["interactions"] for p in pts]
        secs = [p["round-seconds"] for p in pts]
        gib = [p["peak-rss-gib"] for p in pts]
        ax1.loglog(xs, secs, "o-", label=f"{k} clients{_slope(xs, secs)}")
        ax2.loglog(xs, gib, "o-", label=f"{k} clients{_slope(xs, gib)}")
    ax1.set_xlabel("interactions")
    ax1.set_ylabel("seconds per round")
    ax2.set_xlabel("interactions")
    ax2.set_ylabel("peak RSS (GiB)")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
