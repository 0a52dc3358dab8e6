"""Speed on ML-100K: Flower rounds vs the centralised epoch, per deployment shape.

Every federated number comes from a real ``flwr run . --stream`` simulation
(local SuperLink, Ray, the FAB) with one client at a time
(``client-resources-num-cpus=2`` on a 2-core machine), so a round's wall time
minus its clients' reported compute time is what Flower itself costs. Every run
uses ``local-epochs=1``: one round then does the arithmetic of one centralised
epoch, measured in this same script as the physical floor.

    python benchmarks/speed.py            # full: 10 / 100 groups, 943 clients, per-user mode
    python benchmarks/speed.py --quick    # CI: 10 groups and per-user mode, 2 rounds

Prints a markdown table and writes ``speed.png`` and ``speed.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _bench

# label, run-config overrides, supernodes
SHAPES: list[tuple[str, dict[str, Any], int]] = [
    ("10 groups", {}, 10),
    ("100 groups", {}, 100),
    ("943 clients (one user each)", {"partitioner": "natural"}, 943),
    ("10 groups · per-user mode (= 943 users)", {"client-mode": "per-user"}, 10),
]
QUICK = ("10 groups", "10 groups · per-user mode (= 943 users)")


def centralised_epoch_seconds(data_dir: str, seed: int, repeats: int = 2) -> float:
    """Best of ``repeats`` single-threaded training epochs over every user."""
    import numpy as np
    import torch

    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.datasets import prepare_data
    from fedrec_flwr.models import NCF
    from fedrec_flwr.train.group import train_epochs

    torch.set_num_threads(1)  # as each client
    cfg = RunConfig.from_mapping({"data-dir": data_dir, "seed": seed})
    d, m, train = cfg.data, cfg.model, cfg.training
    data = prepare_data(d).client_data()
    model = NCF(data.num_users, data.num_items, m.model, m.factors, m.mlp_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        train_epochs(
            model,
            data.train_users,
            data.train_items,
            data.train_set,
            epochs=1,
            batch_size=train.batch_size,
            optimizer=optimizer,
            num_negatives=train.num_negatives,
            rng=np.random.default_rng(r),
        )
        best = min(best, time.perf_counter() - t0)
    return best


def _summarise(label: str, results: dict[str, Any], peak_mib: float) -> dict[str, Any]:
    rounds = results["rounds"]
    steady = rounds[1:] or rounds  # round 1 also starts Ray actors and loads data
    wall = statistics.fmean(r["wall-seconds"] for r in steady)
    train = statistics.fmean(r["client-train-seconds"] for r in steady)
    evaluate = statistics.fmean(r["client-eval-seconds"] for r in steady)
    positives = results["dataset"]["num-train-interactions"]
    samples = positives * (1 + results["config"]["num-negatives"])
    return {
        "label": label,
        "clients": results["num-clients"],
        "round-1-seconds": rounds[0]["wall-seconds"],
        "round-seconds": wall,
        "train-seconds": train,
        "eval-seconds": evaluate,
        "overhead-seconds": wall - train - evaluate,
        "overhead-share": (wall - train - evaluate) / (train + evaluate),
        "throughput": samples / train,
        "bytes-down": statistics.fmean(r["bytes-sent"] for r in steady),
        "bytes-up": statistics.fmean(r["bytes-received"] for r in steady),
        "peak-rss-mib": peak_mib,
        "final-test-hr@10": rounds[-1]["test"]["hr@10"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", default=_bench.default_data_dir())
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    from fedrec_flwr.paths import runs_home

    out = Path(args.out) if args.out else runs_home().parent / "benchmarks" / "speed"
    out.mkdir(parents=True, exist_ok=True)
    shapes = [s for s in SHAPES if s[0] in QUICK] if args.quick else SHAPES
    rounds = 2 if args.quick else args.rounds
    central = centralised_epoch_seconds(args.data_dir, args.seed)
    from fedrec_flwr.progress import progress

    rows = []
    for label, overrides, nodes in progress(shapes, "speed shapes", unit="shapes"):
        rc = {
            "data-dir": args.data_dir,
            "seed": args.seed,
            "num-server-rounds": rounds,
            "local-epochs": 1,
            **overrides,
        }
        work = out / label.split(" (")[0].replace(" ", "").replace("·", "-")
        results, peak = _bench.flwr_simulation(rc, nodes, work, cpus_per_client=2)
        rows.append(_summarise(label, results, peak))
    table = [
        (
            r["label"],
            r["clients"],
            f"{r['round-seconds']:.2f}",
            f"{r['round-seconds'] / central:.2f}x",
            f"{r['train-seconds']:.2f}",
            f"{r['overhead-share']:.0%}",
            f"{r['throughput'] / 1e3:.0f}k",
            f"{r['bytes-down'] / 1e6:.2f} / {r['bytes-up'] / 1e6:.2f}",
            f"{r['peak-rss-mib']:.0f}",
        )
        for r in rows
    ]
    print(f"ML-100K NeuMF, local-epochs=1, clients one at a time ({_bench.stamp()})")
    print(f"centralised epoch (1 thread, the floor): {central:.2f} s\n")
    print(
        _bench.markdown_table(
            (
                "shape",
                "clients",
                "s/round",
                "vs central epoch",
                "client train s",
                "Flower overhead",
                "samples/s",
                "MB down / up",
                "peak RSS MiB",
            ),
            table,
        )
    )
    (out / "speed.json").write_text(json.dumps({"central-epoch": central, "rows": rows}, indent=2))
    _plot(central, rows, out / "speed.png")
    print(f"\nwrote {out / 'speed.json'} and {out / 'speed.png'}")
    return 0


def _plot(central: float, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.8))
    labels = [r["label"] for r in rows]
    compute = [r["train-seconds"] + r["eval-seconds"] for r in rows]
    overhead = [max(r["overhead-seconds"], 0.0) for r in rows]
    ax.barh(labels, compute, label="client compute")
    ax.barh(labels, overhead, left=compute, label="Flower overhead")
    ax.axvline(central, color="k", ls="--", label=f"centralised epoch {central:.1f}s")
    ax.axvline(2 * central, color="grey", ls=":", label="2x centralised epoch")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per round (steady state)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
