"""On-disk cache of prepared, split and partitioned data.

Written once per configuration under ``$FEDREC_FLWR_HOME/prepared/<key>/``,
where the key hashes the data options, the number of partitions and a
fingerprint of the source files (name, size, modification time), so editing
the data or any option gives a new cache. Arrays are stored grouped by
partition with offsets and opened memory-mapped, so a client process reads only
its own partition's rows.

Layout: ``meta.json`` (options, labels, partition statistics, protocol),
``catalogue.txt`` (the shared item catalogue: one raw item id per line, in code
order), and ``.npy`` arrays: ``users`` (global user codes, grouped by
partition), ``user_offsets``, ``train_users`` (local index), ``train_items``,
``train_offsets``, ``val_items``, ``test_items``, ``eval_negatives``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import data_home, fedrec_home
from .catalogue import write_catalogue
from .negatives import InteractionSet
from .options import MOVIELENS, DataOptions
from .partitioners import DATA_DECIDED, make_partitioner, partition_stats
from .prepare import ClientData, PreparedData, prepare_data

__all__ = [
    "CACHE_FORMAT",
    "build_partition_cache",
    "cache_dir_for",
    "load_partition",
    "read_cache_meta",
    "read_partition",
    "write_partition_cache",
]

CACHE_FORMAT = 1
_ARRAYS = (
    "users",
    "user_offsets",
    "train_users",
    "train_items",
    "train_offsets",
    "val_items",
    "test_items",
    "eval_negatives",
)


def _source_path(options: DataOptions) -> Path:
    if options.data_dir:
        return Path(options.data_dir)
    if options.dataset in MOVIELENS:
        from .grouplens import fetch_movielens

        return fetch_movielens(options.dataset)
    return data_home() / options.dataset


def _fingerprint(path: Path) -> list[Any]:
    """Name, size and mtime of the source files (two levels deep for folders)."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            [p for p in path.iterdir() if p.is_file()]
            + [p for d in path.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()]
        )
    else:
        return [str(path), "missing"]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_dir_for(options: DataOptions, num_partitions: int | None, *, extra: Any = None) -> Path:
    """Directory of the cache for a configuration.

    Parameters
    ----------
    options : DataOptions
        Dataset, preparation and partitioner options.
    num_partitions : int or None
        Requested partitions (``None``: as many as the partitioner makes).
    extra : object, optional (default: None)
        More JSON-serialisable key material (node-local data adds its
        catalogue and partition id).
    """
    record = {
        "format": CACHE_FORMAT,
        "options": options.to_dict(),
        "num-partitions": num_partitions,
        "source": _fingerprint(_source_path(options)),
        "extra": extra,
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    return fedrec_home() / "prepared" / f"{options.dataset}-{key[:20]}"


def write_partition_cache(
    target: Path,
    prepared: PreparedData,
    assignment: np.ndarray,
    labels: list[str],
    meta: dict[str, Any],
) -> Path:
    """Write ``prepared`` grouped by ``assignment`` into ``target`` atomically.

    Parameters
    ----------
    target : pathlib.Path
        Cache directory to create (built under a temporary name, then renamed;
        if another process won the race its copy is kept).
    prepared : PreparedData
        The whole dataset.
    assignment : numpy.ndarray
        Partition of each user code.
    labels : list of str
        One name per partition.
    meta : dict
        Recorded in ``meta.json`` besides the sizes and labels.
    """
    k = len(labels)
    users = np.argsort(assignment, kind="stable")  # by partition, then user code
    user_offsets = np.r_[0, np.cumsum(np.bincount(assignment, minlength=k))]
    local = np.empty(prepared.num_users, dtype=np.int64)
    sizes = np.diff(user_offsets)
    local[users] = np.arange(prepared.num_users) - np.repeat(user_offsets[:-1], sizes)
    row_part = assignment[prepared.train_users]
    rows = np.argsort(row_part, kind="stable")  # keeps each partition's row order
    train_offsets = np.r_[0, np.cumsum(np.bincount(row_part, minlength=k))]
    arrays = {
        "users": users.astype(np.int64),
        "user_offsets": user_offsets.astype(np.int64),
        "train_users": local[prepared.train_users[rows]],
        "train_items": prepared.train_items[rows],
        "train_offsets": train_offsets.astype(np.int64),
        "val_items": prepared.val_items[users],
        "test_items": prepared.test_items[users],
        "eval_negatives": prepared.eval_negatives[users],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        write_catalogue(tmp / "catalogue.txt", prepared.item_ids)
        full_meta = {
            "format": CACHE_FORMAT,
            "num-partitions": k,
            "num-items": prepared.num_items,
            "labels": labels,
            **meta,
        }
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, default=_plain) + "\n")
        try:
            os.rename(tmp, target)  # atomic publish: concurrent builders race harmlessly
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def build_partition_cache(options: DataOptions, num_partitions: int | None) -> Path:
    """Prepare, partition and write the cache (no-op when it exists); return its directory.

    Parameters
    ----------
    options : DataOptions
        Dataset, preparation and partitioner options.
    num_partitions : int or None
        Requested partitions.


    Notes
    -----
    For partitioners whose data decides the number of partitions (natural,
    attribute) the cache does not depend on ``num_partitions``; a number that
    differs from the one the data gives is an error. ``None`` accepts it.
    """
    decided = options.partitioner in DATA_DECIDED
    target = cache_dir_for(options, None if decided else num_partitions)
    if not (target / "meta.json").is_file():
        prepared = prepare_data(options)
        partitioner = make_partitioner(
            options.partitioner,
            None if decided else num_partitions,
            options.seed,
            partition_by=options.partition_by,
            dirichlet_alpha=options.dirichlet_alpha,
            power_law_exponent=options.power_law_exponent,
        ).fit(prepared)
        stats = partition_stats(
            prepared, partitioner.assignment_, partitioner.labels_, repr(partitioner)
        )
        meta = {
            "options": options.to_dict(),
            "dataset": prepared.stats(),
            "protocol": prepared.protocol(),
            "preparation": prepared.preparation,
            "partition-stats": stats.to_dict(),
        }
        write_partition_cache(target, prepared, partitioner.assignment_, partitioner.labels_, meta)
    if decided and num_partitions is not None:
        made = read_cache_meta(target)["num-partitions"]
        if made != num_partitions:
            by = ""
            if options.partitioner == "attribute":
                by = f" (partition-by={options.partition_by!r})"
            raise ValueError(
                f"partitioner={options.partitioner}{by} makes {made} partitions, but "
                f"num-partitions={num_partitions}; run with {made} SuperNodes"
            )
    return target


def read_cache_meta(directory: Path) -> dict[str, Any]:
    """The ``meta.json`` of a cache directory."""
    return json.loads((Path(directory) / "meta.json").read_text())


def _open(directory: Path) -> dict[str, np.ndarray]:
    return {n: np.load(directory / f"{n}.npy", mmap_mode="r") for n in _ARRAYS}


def read_partition(directory: Path, partition_id: int) -> ClientData:
    """Read one partition's slices from a cache directory.

    Parameters
    ----------
    directory : pathlib.Path
        A cache written by :func:`write_partition_cache`.
    partition_id : int
        Which partition.
    """
    meta = read_cache_meta(directory)
    k, num_items = meta["num-partitions"], meta["num-items"]
    if not 0 <= partition_id < k:
        raise ValueError(f"partition-id={partition_id}: must be in [0, num-partitions={k})")
    a = _open(directory)
    u0, u1 = int(a["user_offsets"][partition_id]), int(a["user_offsets"][partition_id + 1])
    t0, t1 = int(a["train_offsets"][partition_id]), int(a["train_offsets"][partition_id + 1])
    train_users = np.array(a["train_users"][t0:t1])
    train_items = np.array(a["train_items"][t0:t1])
    return ClientData(
        partition_id=partition_id,
        num_partitions=k,
        users=np.array(a["users"][u0:u1]),
        num_items=num_items,
        train_users=train_users,
        train_items=train_items,
        val_items=np.array(a["val_items"][u0:u1]),
        test_items=np.array(a["test_items"][u0:u1]),
        eval_negatives=np.array(a["eval_negatives"][u0:u1]),
        train_set=InteractionSet(train_users, train_items, num_items),
    )


def load_partition(options: DataOptions, partition_id: int, num_partitions: int) -> ClientData:
    """One client's data: from the cache, building it first if needed.

    Parameters
    ----------
    options : DataOptions
        Dataset, preparation and partitioner options.
    partition_id : int
        This client's partition.
    num_partitions : int
        Partitions in the federation; for partitioners that decide the number
        (natural, attribute) it must equal the number they make.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id={partition_id}: must be in [0, num-partitions={num_partitions})"
        )
    directory = build_partition_cache(options, num_partitions)
    return read_partition(directory, partition_id)
