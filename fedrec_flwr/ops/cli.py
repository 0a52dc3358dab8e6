"""``fedrec``: inspect and prepare datasets from the command line.

Examples
--------
``fedrec data stats ml-100k --partitioner occupation``
``fedrec data stats log --data-dir /data/events.parquet --log-columns user=uid,item=sku
--partitioner dirichlet --num-partitions 20 --dirichlet-alpha 0.1``
``fedrec data catalogue ml-100k --out /data/catalogue.txt``
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..datasets import DataFileError, DataOptions, build_partition_cache, read_cache_meta
from ..datasets.options import SOURCES
from ..datasets.partitioners import DATA_DECIDED, PARTITIONERS, PartitionStats
from ..datasets.validation import DUPLICATE_POLICIES
from ..protocol import NUM_PARTITIONS_KEY, NUM_USERS_KEY

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="group", required=True)
    data = commands.add_parser("data", help="inspect and prepare datasets")
    actions = data.add_subparsers(dest="action", required=True)
    for action, text in (
        ("stats", "prepare, partition and print dataset and per-partition statistics"),
        ("catalogue", "write the shared item catalogue a SuperNode needs"),
    ):
        p = actions.add_parser(action, help=text, description=text)
        p.add_argument("dataset", choices=SOURCES, metavar="DATASET", help=", ".join(SOURCES))
        p.add_argument("--data-dir", default="", help="files to read (default: download cache)")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--num-eval-negatives", type=int, default=99)
        p.add_argument("--implicit-threshold", type=float, default=0.0)
        p.add_argument("--k-core", type=int, default=0)
        p.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default="keep-latest")
        p.add_argument("--validation", choices=("strict", "lenient"), default="strict")
        p.add_argument("--log-columns", default="", help="e.g. user=uid,item=sku,timestamp=ts")
        p.add_argument("--partitioner", choices=PARTITIONERS, default="random")
        p.add_argument("--partition-by", default="occupation", help="attribute column")
        p.add_argument(
            "--num-partitions",
            type=int,
            default=None,
            help="default: decided by the data (natural, attribute) or 10",
        )
        p.add_argument("--dirichlet-alpha", type=float, default=0.5)
        p.add_argument("--power-law-exponent", type=float, default=1.0)
        if action == "stats":
            p.add_argument("--figure", default="", help="write the partition figure here")
            p.add_argument("--json", action="store_true", help="print JSON instead of tables")
            p.add_argument("--max-rows", type=int, default=50, help="partitions listed")
        else:
            p.add_argument("--out", required=True, help="catalogue file to write")
    return parser


# As RunConfig: Flower carries run-config integers as 64-bit.
_MAX_INT = 2**63 - 1


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse out-of-range number flags with one line naming the key, before any
    work (numpy would say only "expected non-negative integer" for a seed of -1)."""
    if args.seed < 0:
        raise ValueError(f"seed={args.seed}: must be a non-negative integer")
    lowest = {"seed": 0, "num-eval-negatives": 1, "k-core": 0, NUM_PARTITIONS_KEY: 1}
    if args.action == "stats":
        lowest["max-rows"] = 0
    for key, low in lowest.items():
        value = getattr(args, key.replace("-", "_"))
        if value is None:  # num-partitions: decided by the data
            continue
        if value < low:
            raise ValueError(f"{key}={value}: must be >= {low}")
        if value > _MAX_INT:
            raise ValueError(f"{key}={value}: must be at most {_MAX_INT} (64-bit integers)")
    for key in ("implicit-threshold", "dirichlet-alpha", "power-law-exponent"):
        value = getattr(args, key.replace("-", "_"))
        if not math.isfinite(value):
            raise ValueError(f"{key}={value}: must be a finite number")


def _options(args: argparse.Namespace) -> DataOptions:
    return DataOptions(
        dataset=args.dataset,
        data_dir=args.data_dir,
        seed=args.seed,
        num_eval_negatives=args.num_eval_negatives,
        implicit_threshold=args.implicit_threshold,
        k_core=args.k_core,
        duplicates=args.duplicates,
        validation=args.validation,
        partitioner=args.partitioner,
        partition_by=args.partition_by,
        dirichlet_alpha=args.dirichlet_alpha,
        power_law_exponent=args.power_law_exponent,
        log_columns=args.log_columns,
    )


def _stats_text(meta: dict[str, Any], max_rows: int) -> str:
    ds, prep = meta["dataset"], meta["preparation"] or {}
    report = prep.get("validation", {})
    dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
    stats = PartitionStats.from_dict(meta["partition-stats"])
    lines = [
        f"dataset {ds['name']}: {ds[NUM_USERS_KEY]} users, {ds['num-items']} items, "
        f"{ds['num-interactions']} interactions ({ds['num-train-interactions']} for training)",
        f"validation: read {report.get('rows-read')} rows, kept {report.get('rows-kept')}, "
        f"dropped {dropped or 'none'}",
        f"preparation: implicit-threshold {prep.get('implicit-threshold')} "
        f"(-{prep.get('rows-below-threshold')} rows), k-core {prep.get('k-core')} "
        f"(-{prep.get('rows-removed-by-k-core')} rows)",
        "",
        stats.table(max_rows),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedrec`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        _check_numbers(args)
        options = _options(args)
        k = args.num_partitions
        if k is None and options.partitioner not in DATA_DECIDED:
            k = 10
        directory = build_partition_cache(options, k)
        meta = read_cache_meta(directory)
        if args.action == "catalogue":
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / "catalogue.txt", out)
            print(f"wrote {meta['num-items']} item ids to {out}")
            return 0
        if args.json:
            print(json.dumps(meta, indent=1))
        else:
            print(_stats_text(meta, args.max_rows))
            print(f"\ncache: {directory}")
        if args.figure:
            path = PartitionStats.from_dict(meta["partition-stats"]).plot(args.figure)
            print(f"figure: {path}")
    except (DataFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
