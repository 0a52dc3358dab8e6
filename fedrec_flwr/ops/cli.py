"""``fedrec``: inspect and prepare datasets, and serve a node's recommendations.

The data flags are :class:`~fedrec_flwr.datasets.DataOptions`' fields (same
names, defaults and checks as the run-config keys).

Examples
--------
``fedrec data stats ml-100k --partitioner occupation``
``fedrec data stats log --data-dir /data/events.parquet --log-columns user=uid,item=sku
--partitioner dirichlet --num-partitions 20 --dirichlet-alpha 0.1``
``fedrec data catalogue ml-100k --out /data/catalogue.txt``
``fedrec recommend --node-dir ~/.cache/fedrec-flwr/nodes/run-000000000000002a-ab12cd34/partition-0
--users 1,7 --k 10``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..datasets import DataFileError, DataOptions, build_partition_cache, read_cache_meta
from ..datasets.partitioners import DATA_DECIDED, PartitionStats
from ..protocol import NUM_USERS_KEY
from ..settings import MAX_INT, add_flags, key_of, setting

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="group", required=True)
    data = commands.add_parser("data", help="inspect and prepare datasets")
    actions = data.add_subparsers(dest="action", required=True)
    dataset, *flags = dataclasses.fields(DataOptions)
    assert dataset.name == "dataset"  # the positional argument
    for action, text in (
        ("stats", "prepare, partition and print dataset and per-partition statistics"),
        ("catalogue", "write the shared item catalogue a SuperNode needs"),
    ):
        p = actions.add_parser(action, help=text, description=text)
        choices = setting(dataset).choices
        p.add_argument("dataset", metavar="DATASET", help=", ".join(choices))
        add_flags(p, flags)
        p.add_argument(
            "--num-partitions",
            type=int,
            default=None,
            help="default: decided by the data (natural, attribute) or 10",
        )
        if action == "stats":
            p.add_argument("--figure", default="", help="write the partition figure here")
            p.add_argument("--json", action="store_true", help="print JSON instead of tables")
            p.add_argument("--max-rows", type=int, default=50, help="partitions listed")
        else:
            p.add_argument("--out", required=True, help="catalogue file to write")
    rec = commands.add_parser(
        "recommend",
        help="top-k recommendations from a node folder (after a run's delivery)",
        description="Serve recommendations from a node's folder: the delivered model, "
        "the node's stored user rows and its own log; nothing is fetched.",
    )
    rec.add_argument("--node-dir", required=True, help="<state-dir>/<run lineage>/partition-<id>")
    rec.add_argument("--users", default="", help="comma-separated raw user ids (default: all)")
    rec.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    rec.add_argument(
        "--exclude-seen",
        choices=("none", "train", "all"),
        default="train",
        help="leave out each user's training items (default), all their items, or none",
    )
    rec.add_argument("--out", default="", help=".csv or .parquet file (default: CSV on stdout)")
    return parser


def _recommend(args: argparse.Namespace) -> int:
    from ..serving.recommender import NodeRecommender, UnknownUserError

    if args.k < 1:
        raise ValueError(f"--k={args.k}: must be >= 1")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out={args.out}: name a .csv or .parquet file")
    recommender = NodeRecommender.load(args.node_dir)
    users = [u.strip() for u in args.users.split(",") if u.strip()] or None
    try:
        frame = recommender.recommend(users, args.k, exclude_seen=args.exclude_seen)
    except UnknownUserError as exc:
        raise ValueError(str(exc)) from None
    if out is None:
        frame.to_csv(sys.stdout, index=False)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    print(f"wrote {len(frame)} recommendations for {frame['user'].nunique()} users to {out}")
    return 0


# This CLI's own integer flags, beside DataOptions' integer fields.
_OWN_INTS = {"stats": ("num_partitions", "max_rows"), "catalogue": ("num_partitions",)}
_LOWEST = {"seed": 0, "num_eval_negatives": 1, "k_core": 0, "num_partitions": 1, "max_rows": 0}


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse out-of-range number flags with one line naming the key, before any
    work (numpy would say only "expected non-negative integer" for a seed of -1)."""
    if args.seed < 0:
        raise ValueError(f"seed={args.seed}: must be a non-negative integer")
    data = dataclasses.fields(DataOptions)
    ints = [f.name for f in data if type(f.default) is int] + list(_OWN_INTS[args.action])
    for name in ints:
        key, value = key_of(name), getattr(args, name)
        if value is None:  # num-partitions: decided by the data
            continue
        if name in _LOWEST and value < _LOWEST[name]:
            raise ValueError(f"{key}={value}: must be >= {_LOWEST[name]}")
        if value > MAX_INT:
            raise ValueError(f"{key}={value}: must be at most {MAX_INT} (64-bit integers)")
    for f in data:
        value = getattr(args, f.name)
        if type(f.default) is float and not math.isfinite(value):
            raise ValueError(f"{key_of(f.name)}={value}: must be a finite number")


def _options(args: argparse.Namespace) -> DataOptions:
    return DataOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions)})


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
    if args.group == "recommend":
        try:
            return _recommend(args)
        except (DataFileError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
