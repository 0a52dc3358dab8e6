"""Data-pipeline benchmark on synthetic power-law interaction logs.

For each size it writes a CSV log once (power-law user activity and item
popularity; every user has at least 3 interactions), then, in a fresh process
so the peak memory is the pipeline's own, times each stage of the real code
path and prints one table:

  load+validate  read_log: chunked CSV parse, validation, duplicates (keep-latest)
  encode         IdEncoder on users and items
  split          temporal leave-one-out
  partition      RandomPartitioner (the default) into --num-partitions groups
  negatives      evaluation negatives (99 per user, excluding all the user's items)
  cache-write    partition cache on disk (grouped arrays + catalogue)
  client-load    one client reading its partition from the cache (median over 5
                 partitions; what a ClientApp process does per message)

"prepared" = load+validate + encode + split + partition (the issue's target:
20M interactions in < 2 min and < 4 GiB peak on 2 cores; client load < 0.5 s).
Peak memory is the child process's maximum RSS. Generating the 20M log takes
about 2 minutes and 0.5 GB of disk; ``--workdir`` keeps it between runs.

Usage::

    python benchmarks/bench_data.py            # 1M and 20M (138k users x 27k items)
    python benchmarks/bench_data.py --quick    # 100k and 1M, for CI-size checks
    python benchmarks/bench_data.py --sizes 5000000 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

_REPO = Path(__file__).resolve().parents[1]

# Shapes: 20M like ML-20M (138,493 users x 27,278 items); smaller sizes keep
# about 145 interactions per user like ML-20M, and scale the items with them.
_SHAPES = {20_000_000: (138_493, 27_278), 1_000_000: (6_040, 3_706), 100_000: (943, 1_682)}


def _shape(n: int) -> tuple[int, int]:
    if n in _SHAPES:
        return _SHAPES[n]
    users = max(10, round(138_493 * n / 20_000_000))
    items = max(200, round(27_278 * (n / 20_000_000) ** 0.5))
    return users, items


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Write a synthetic log (user,item,rating,timestamp) of ``n`` distinct pairs
    plus 1% re-ratings (repeated pairs with a later timestamp, which the
    keep-latest duplicate policy removes)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from fedrec_flwr.paths import staged

    users, items = _shape(n)
    rng = np.random.default_rng(seed)
    # User activity ~ rank^-0.7 (at least 3, at most a fifth of the catalogue);
    # item popularity ~ rank^-0.9: the long tails of real rating logs.
    weights = np.arange(1, users + 1) ** -0.7
    counts = 3 + rng.multinomial(n - 3 * users, weights / weights.sum())
    cap = items // 5
    while (excess := int(np.clip(counts - cap, 0, None).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = counts < cap
        counts[room] += rng.multinomial(excess, weights[room] / weights[room].sum())
    item_p = np.arange(1, items + 1) ** -0.9
    item_p /= item_p.sum()
    u = np.repeat(rng.permutation(users), counts)
    i = rng.choice(items, size=n, p=item_p)
    for _ in range(8):  # redraw repeated pairs; the few left are dropped below
        dup = np.flatnonzero(pd.Series(u * items + i).duplicated().to_numpy())
        if dup.size == 0:
            break
        i[dup] = rng.choice(items, size=dup.size, p=item_p)
    keep = ~pd.Series(u * items + i).duplicated().to_numpy()
    u, i = u[keep], rng.permutation(items)[i[keep]]
    t = rng.integers(789_652_009, 1_427_784_002, size=len(u))
    again = rng.choice(len(u), size=len(u) // 100, replace=False)
    u = np.r_[u, u[again]] + 1
    i = np.r_[i, i[again]] + 1
    t = np.r_[t, t[again] + rng.integers(1, 10**6, size=len(again))]
    order = rng.permutation(len(u))
    r = rng.integers(1, 11, size=len(u)) / 2.0
    table = pa.table({"user": u[order], "item": i[order], "rating": r, "timestamp": t[order]})
    with staged(path) as tmp:
        pacsv.write_csv(table, tmp)


def run_pipeline(path: Path, num_partitions: int, workdir: Path) -> dict[str, float]:
    """Time each stage in this process; return seconds and peak RSS."""
    from fedrec_flwr.datasets import (
        IdEncoder,
        InteractionSet,
        PreparedData,
        RandomPartitioner,
        read_log,
        sample_eval_negatives,
        temporal_leave_one_out,
    )

    # Each stage timed on its own: the cache's internals, not load_client_data.
    from fedrec_flwr.datasets.cache import _read_partition, _write_partition_cache

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded = read_log(path, chunksize=2_000_000)
    frame = loaded.interactions
    out["rows-read"] = loaded.report.rows_read
    out["duplicates-dropped"] = loaded.report.dropped["duplicate"]
    t1 = time.perf_counter()
    users_enc, items_enc = IdEncoder(), IdEncoder()
    user_codes = users_enc.fit_transform(frame["user"])
    item_codes = items_enc.fit_transform(frame["item"])
    timestamps = frame["timestamp"].to_numpy()
    del frame, loaded
    t2 = time.perf_counter()
    split = temporal_leave_one_out(user_codes, timestamps)
    t3 = time.perf_counter()
    num_users, num_items = len(users_enc), len(items_enc)
    partitioner = RandomPartitioner(num_partitions, 42)
    # The partitioner needs only the number of users here.
    stub = PreparedData(
        "bench",
        users_enc.classes_,
        items_enc.classes_,
        *(np.empty(0, np.int64),) * 4,
        np.empty((0, 0), np.int64),
        42,
    )
    assignment = partitioner.fit(stub).assignment_
    t4 = time.perf_counter()
    everything = InteractionSet(user_codes, item_codes, num_items)
    negatives = sample_eval_negatives(
        np.random.default_rng([42, 0xE7A1]), num_users, everything, 99
    )
    del everything
    t5 = time.perf_counter()
    prepared = PreparedData(
        "bench",
        users_enc.classes_,
        items_enc.classes_,
        user_codes[split.train_rows],
        item_codes[split.train_rows],
        item_codes[split.val_rows],
        item_codes[split.test_rows],
        negatives,
        42,
    )
    target = workdir / f"cache-{os.getpid()}"
    _write_partition_cache(target, prepared, assignment, partitioner.labels_, {})
    t6 = time.perf_counter()
    loads = []
    for pid in range(5):
        s = time.perf_counter()
        data = _read_partition(target, pid)
        loads.append(time.perf_counter() - s)
    shutil.rmtree(target)
    out.update(
        {
            "users": num_users,
            "items": num_items,
            "load+validate": t1 - t0,
            "encode": t2 - t1,
            "split": t3 - t2,
            "partition": t4 - t3,
            "prepared": t4 - t0,
            "negatives": t5 - t4,
            "cache-write": t6 - t5,
            "client-load": statistics.median(loads),
            "client-users": data.num_users,
            "peak-rss-gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k and 1M only")
    parser.add_argument("--sizes", type=int, nargs="*", help="interaction counts")
    parser.add_argument("--num-partitions", type=int, default=100)
    parser.add_argument("--workdir", default="", help="keeps generated logs between runs")
    parser.add_argument("--child", nargs=2, metavar=("LOG", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_pipeline(Path(args.child[0]), args.num_partitions, Path(args.child[1]))
        print(json.dumps(result))
        return 0
    sizes = args.sizes or ([100_000, 1_000_000] if args.quick else [1_000_000, 20_000_000])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedrec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}, workdir: {workdir}")
    columns = ["rows-read", "duplicates-dropped", "load+validate", "encode", "split",
               "partition", "prepared", "negatives", "cache-write", "client-load",
               "peak-rss-gib"]  # fmt: skip
    header = " ".join(f"{c:>13}" for c in columns)
    print(f"{'interactions':>12} {'users':>7} {'items':>6} {header}")
    for n in sizes:
        log = workdir / f"synthetic-{n}.csv"
        if not log.is_file():
            t = time.perf_counter()
            generate(log, n)
            print(f"# generated {log} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        env = dict(os.environ)  # the child imports the package from this checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(log), str(workdir),
             "--num-partitions", str(args.num_partitions)],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cells = " ".join(
            f"{r[c]:>13d}" if isinstance(r[c], int) else f"{r[c]:>13.3f}" for c in columns
        )
        print(f"{n:>12} {r['users']:>7} {r['items']:>6} {cells}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
