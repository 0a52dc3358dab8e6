"""Serving speed: users per second for top-10 over the whole catalogue on one node.

One process, ``--threads`` torch threads (default 2), synthetic data: a seeded
random model (every weight drawn from N(0, 0.1), default ``factors`` and
``mlp-layers`` of :class:`fedrec_flwr.config.ModelOptions`) and a seeded
synthetic seen-items log (each user 20-150 uniformly random items, repeats
allowed) that is excluded from the recommendations. Sizes: ML-100K
(943 users x 1,682 items) and MovieLens-20M (138,493 x 26,744).

    python benchmarks/serve.py                              # both sizes, GMF and NeuMF
    python benchmarks/serve.py --sizes ml-100k --models gmf --threads 1
    python benchmarks/serve.py --quick                      # tiny sizes, a few seconds
    python benchmarks/serve.py --json serve.json            # also write the numbers

Per (model, size) it prints the seconds for every user's top-10 with
:func:`fedrec_flwr.serving.scoring.top_k` (the exact fast paths of
``NCF.score_all``; after a warm-up on one chunk, the median of up to 5 repeats
while they take under 2 s in all), users/s, the process's peak RSS and its increase over the
run, and, measured in the same run, the naive path (``model.forward`` over all
pairs of a sample of users, same masking and top-10) with the speed-up and the
share of the sample whose top-10 lists agree. Targets, on 2 cores: the whole
20M log under 60 s for GMF and under 10 min for NeuMF.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bench
import numpy as np
import torch

from fedrec_flwr.config import ModelOptions
from fedrec_flwr.models import Recommender, build_model
from fedrec_flwr.serving.scoring import top_k

SIZES = {"ml-100k": (943, 1682), "20m": (138_493, 26_744)}
QUICK_SIZES = {"ml-100k": (60, 300), "20m": (200, 600)}
# Whole-log seconds targets on 2 cores, at the 20M size.
TARGETS = {("gmf", "20m"): 60.0, ("neumf", "20m"): 600.0}
K = 10
# forward() materialises every pair's embeddings: keep its chunks small.
NAIVE_MAX_CELLS = 2**18


class _Naive(Recommender):
    """The reference path: the base-class ``score_all`` (``forward`` on every pair)."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def catalogue_size(self) -> int:
        return self.model.catalogue_size()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model(users, items)

    def reset_parameters(self, seed: int) -> None:
        self.model.reset_parameters(seed)


def _model(name: str, num_users: int, num_items: int, seed: int) -> Recommender:
    opts = ModelOptions()
    model = build_model(
        name, num_users, num_items, factors=opts.factors, mlp_layers=opts.mlp_layers, seed=seed
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model.eval()


def _seen_log(num_users: int, num_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 151, num_users)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    return users, rng.integers(0, num_items, users.size, dtype=np.int64)


def _timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Median seconds of ``fn`` over repeats (up to 5, until 2 s are spent) and its result."""
    times: list[float] = []
    while not times or (len(times) < 5 and sum(times) < 2.0):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _measure(name: str, size: str, dims: tuple[int, int], seed: int) -> dict[str, Any]:
    num_users, num_items = dims
    rss_before = _bench.peak_rss_mib()
    model = _model(name, num_users, num_items, seed)
    seen_users, seen_items = _seen_log(num_users, num_items, seed + 1)
    users = np.arange(num_users, dtype=np.int64)
    excluded = {"exclude_users": seen_users, "exclude_items": seen_items}
    # Warm-up on a full chunk's shapes (thread pool, kernels, allocator).
    top_k(model, users[: 2**24 // num_items], K, **excluded)
    seconds, items = _timed(lambda: top_k(model, users, K, **excluded)[0])
    rss_after = _bench.peak_rss_mib()
    # The naive path on a sample (the first users: the log is random anyway).
    sample = users[: int(np.clip(2**21 // num_items, 8, num_users))]
    naive = _Naive(model)
    top_k(naive, sample[:2], K, max_cells=NAIVE_MAX_CELLS, **excluded)
    naive_seconds, naive_items = _timed(
        lambda: top_k(naive, sample, K, max_cells=NAIVE_MAX_CELLS, **excluded)[0]
    )
    target = TARGETS.get((name, size))
    return {
        "model": name,
        "size": size,
        "users": num_users,
        "items": num_items,
        "seen-pairs": int(seen_users.size),
        "seconds": seconds,
        "users-per-second": num_users / seconds,
        "peak-rss-mib": rss_after,
        "rss-increase-mib": rss_after - rss_before,
        "naive-sample-users": int(sample.size),
        "naive-users-per-second": sample.size / naive_seconds,
        "speed-up": (num_users / seconds) / (sample.size / naive_seconds),
        "sample-agreement": float(np.mean(np.all(naive_items == items[: sample.size], axis=1))),
        "target-seconds": target,
        "target-met": None if target is None else seconds < target,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "size",
        "users x items",
        "seconds (all users)",
        "users/s",
        "peak RSS MiB (+increase)",
        "naive users/s",
        "speed-up",
        "sample top-10 agree",
        "target",
    ]
    body = []
    for r in rows:
        target = (
            "—"
            if r["target-seconds"] is None
            else f"< {r['target-seconds']:.0f} s: {'met' if r['target-met'] else 'missed'}"
        )
        body.append(
            [
                r["model"],
                r["size"],
                f"{r['users']:,} x {r['items']:,}",
                f"{r['seconds']:.3g}",
                f"{r['users-per-second']:,.0f}",
                f"{r['peak-rss-mib']:,.0f} (+{r['rss-increase-mib']:,.0f})",
                f"{r['naive-users-per-second']:,.1f}",
                f"{r['speed-up']:,.1f}x",
                f"{r['sample-agreement']:.0%}",
                target,
            ]
        )
    return _bench.markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="ml-100k,20m", help="comma-separated: ml-100k, 20m (default: both)"
    )
    parser.add_argument(
        "--models", default="gmf,neumf", help="comma-separated model names (default: gmf,neumf)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="model and log seed (default: 0)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (a few seconds; targets not checked)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--out", type=Path, default=None, help="folder for serve.json")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; accepted: {', '.join(SIZES)}")
    torch.set_num_threads(args.threads)
    dims = QUICK_SIZES if args.quick else SIZES
    rows = []
    for size in sizes:
        for name in models:
            row = _measure(name, size, dims[size], args.seed)
            if args.quick:
                row["target-seconds"] = row["target-met"] = None
            rows.append(row)
    print(
        f"Top-{K} over the whole catalogue, seen items excluded, one process, "
        f"{args.threads} threads{' (quick sizes)' if args.quick else ''} · {_bench.stamp()}\n"
    )
    print(_table(rows))
    text = json.dumps({"threads": args.threads, "k": K, "rows": rows}, indent=2) + "\n"
    if args.json is not None:
        args.json.write_text(text)
    out = args.out or Path(tempfile.gettempdir())
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
