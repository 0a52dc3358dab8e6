"""On-disk cache of prepared, split and partitioned data.

Written once per configuration under ``$FEDREC_FLWR_HOME/prepared/<key>/``,
where the key hashes the data options, the number of partitions and a
fingerprint of the source files (name, size, modification time), so editing
the data or any option gives a new cache. Arrays are stored grouped by
partition with offsets and opened memory-mapped, so a client process reads only
its own partition's rows.

Layout: ``meta.json`` (options, labels, partition statistics, protocol,
checksums), ``catalogue.txt`` (the shared item catalogue: one raw item id per
line, in code order), and ``.npy`` arrays: ``users`` (global user codes,
grouped by partition), ``user_offsets``, ``train_users`` (local index),
``train_items``, ``train_offsets``, ``val_items``, ``test_items``,
``eval_negatives``. The rating task adds ``train_ratings`` (by training row)
and the held-out ratings ``{val,test}_rating_{users,items,values}`` (local
user index) with their own ``{val,test}_rating_offsets``; its prediction
offset is in ``meta.json`` (``rating-offset``).

Nothing in a cache is trusted blindly. ``meta.json`` records the size and
sha256 of every other file and one sha256 per partition over that partition's
bounds and rows; it starts with a sha256 of the rest of its own text. Opening
a cache checks the metadata and every file's size (:func:`build_partition_cache`
and :func:`read_cache_meta` also hash the small files: offsets, catalogue);
reading a partition hashes the rows it reads, a small cost next to the read. A
cache that fails (truncated, edited, or written by a version without
checksums) is set aside and rebuilt with a logged warning; where it cannot be
rebuilt (:func:`read_cache_meta`, or a rebuilt copy failing again) the error
names the folder.

Every cache read and write goes through this module: the federation's
(:func:`build_partition_cache`, :func:`load_client_data`) and a SuperNode's
own log's (:func:`_local_client_data`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..paths import data_home, fedrec_home, staged
from ..progress import progress
from ..protocol import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, TEST_PART, VAL_PART
from ._errors import DataFileError
from .catalogue import write_catalogue
from .negatives import InteractionSet
from .options import MOVIELENS, DataOptions
from .partitioners import DATA_DECIDED, make_partitioner, partition_stats
from .prepare import ClientData, PreparedData, RatingRows, prepare_data

__all__ = [
    "CACHE_FORMAT",
    "build_partition_cache",
    "load_client_data",
    "read_cache_meta",
]

logger = logging.getLogger(__name__)

# 2: checksums in meta.json. A format-1 cache (none) is rebuilt, not trusted.
CACHE_FORMAT = 4
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
# Sliced per partition, by user or by training row; hashed per partition in
# this order.
_SLICED = {
    "users": "user",
    "train_users": "train",
    "train_items": "train",
    "val_items": "user",
    "test_items": "user",
    "eval_negatives": "user",
}
# The rating task's arrays (present only in its caches), sliced by training
# row or by held-out rating; hashed per partition after the others.
_RATING_SLICED = {
    "train_ratings": "train",
    **{
        f"{part}_rating_{what}": part
        for part in (VAL_PART, TEST_PART)
        for what in ("users", "items", "values")
    },
}
_RATING_OFFSETS = {part: f"{part}_rating_offsets" for part in (VAL_PART, TEST_PART)}
_RATING_ARRAYS = (*_RATING_SLICED, *_RATING_OFFSETS.values())
_RATING_OFFSET_KEY = "rating-offset"
# Small files hashed in full whenever the whole cache is checked (a partition
# read checks only its own bounds and rows).
_WHOLE = ("user_offsets.npy", "train_offsets.npy", "catalogue.txt", "user_ids.txt")


_USER_TABLE, _ITEM_TABLE = "user_table.parquet", "item_table.parquet"


def _write_table(path: Path, table: pd.DataFrame) -> None:
    # Text columns as text: a parquet file of one dtype per column, whatever the source mixed.
    frame = table.reset_index(drop=True)
    frame = frame.astype({c: str for c in frame.columns if frame[c].dtype == object})
    frame.to_parquet(path, index=False)


def _read_table(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise _DamagedError(f"{path.name} cannot be read ({exc})") from exc


class _DamagedError(Exception):
    """A cache folder that does not match its own checksums."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# meta.json starts with its own digest, taken over the rest of the text, so
# checking it costs one hash of a few kilobytes, not a JSON round trip.
_DIGEST_KEY = '{"meta-sha256": "'
_DIGEST_END = '",\n'


def _meta_text(meta: dict[str, Any]) -> str:
    """``meta`` as the text of ``meta.json``: its digest first."""
    body = json.dumps(meta, indent=1, default=_plain) + "\n"
    digest = hashlib.sha256(body.encode()).hexdigest()
    return _DIGEST_KEY + digest + _DIGEST_END + body[1:]


def _meta_digest_ok(text: str) -> bool:
    head = len(_DIGEST_KEY) + 64
    if not text.startswith(_DIGEST_KEY) or text[head : head + len(_DIGEST_END)] != _DIGEST_END:
        return False
    body = "{" + text[head + len(_DIGEST_END) :]
    return hashlib.sha256(body.encode()).hexdigest() == text[len(_DIGEST_KEY) : head]


def _partition_sha256(
    arrays: dict[str, np.ndarray], partition_id: int
) -> tuple[str, dict[str, np.ndarray]]:
    """sha256 over one partition's bounds and rows, and the rows (copies)."""
    offsets = {"user": arrays["user_offsets"], "train": arrays["train_offsets"]}
    bounds = {
        by: (int(offsets[by][partition_id]), int(offsets[by][partition_id + 1])) for by in offsets
    }
    h = hashlib.sha256(np.array([*bounds["user"], *bounds["train"]], dtype=np.int64).data)
    sliced = dict(_SLICED)
    if "train_ratings" in arrays:  # the rating task: its bounds and rows too
        for by, name in _RATING_OFFSETS.items():
            bounds[by] = (int(arrays[name][partition_id]), int(arrays[name][partition_id + 1]))
        h.update(np.array([*bounds[VAL_PART], *bounds[TEST_PART]], dtype=np.int64).data)
        sliced.update(_RATING_SLICED)
    rows = {}
    for name, by in sliced.items():
        start, stop = bounds[by]
        rows[name] = np.array(arrays[name][start:stop])
        h.update(np.ascontiguousarray(rows[name]).data)
    return h.hexdigest(), rows


def _damaged_message(directory: Path, exc: _DamagedError) -> str:
    return (
        f"partition cache {directory}: {exc}; delete the folder ({directory}) and run "
        "again to rebuild it"
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


def _cache_dir_for(options: DataOptions, num_partitions: int | None, *, extra: Any = None) -> Path:
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
        NUM_PARTITIONS_KEY: num_partitions,
        "source": _fingerprint(_source_path(options)),
        "extra": extra,
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    return fedrec_home() / "prepared" / f"{options.dataset}-{key[:20]}"


def _write_partition_cache(
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
    ratings = prepared.ratings
    if ratings is not None:
        arrays["train_ratings"] = ratings.train_ratings[rows]
        for part in (VAL_PART, TEST_PART):
            held_users, held_items, values = ratings.part(part)
            held_part = assignment[held_users]
            order = np.argsort(held_part, kind="stable")  # each partition's rows in order
            arrays[f"{part}_rating_users"] = local[held_users[order]]
            arrays[f"{part}_rating_items"] = held_items[order]
            arrays[f"{part}_rating_values"] = values[order]
            counts = np.bincount(held_part, minlength=k)
            arrays[_RATING_OFFSETS[part]] = np.r_[0, np.cumsum(counts)].astype(np.int64)
        meta = {**meta, _RATING_OFFSET_KEY: ratings.offset()}
    # Concurrent builders race harmlessly: the loser keeps the winner's copy
    # (same options and seed, so the same bits), unless that copy is damaged.
    with staged(target, directory=True, keep_existing=_keep_or_discard) as tmp:
        files: dict[str, dict[str, Any]] = {}
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            np.save(tmp / f"{name}.npy", array)
            files[f"{name}.npy"] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        write_catalogue(tmp / "catalogue.txt", prepared.item_ids)
        files["catalogue.txt"] = {}
        # Raw user ids in code order: a node writes its recommendations by them.
        write_catalogue(tmp / "user_ids.txt", prepared.user_ids)
        files["user_ids.txt"] = {}
        # Side features (models that read them): users in partition order, items by code.
        for name, table in (
            (_USER_TABLE, None if prepared.user_table is None else prepared.user_table.iloc[users]),
            (_ITEM_TABLE, prepared.item_table),
        ):
            if table is not None:
                _write_table(tmp / name, table)
                files[name] = {}
        for name, record in files.items():
            record["bytes"] = (tmp / name).stat().st_size
            record["sha256"] = _file_sha256(tmp / name)
        partitions = [
            _partition_sha256(arrays, p)[0]
            for p in progress(range(k), f"partition cache {target.name}: checksums")
        ]
        full_meta = {
            "format": CACHE_FORMAT,
            NUM_PARTITIONS_KEY: k,
            "num-items": prepared.num_items,
            "labels": labels,
            **meta,
            "checksums": {"files": files, "partitions": partitions},
        }
        # meta.json last: a folder without it was never complete.
        (tmp / "meta.json").write_text(_meta_text(full_meta), encoding="utf-8")
    return target


def _keep_or_discard(existing: Path) -> bool:
    """Keep a cache another process published first if it is intact; else
    discard it (so ours can take its place)."""
    if _intact(existing):
        return True
    _discard(existing, "it does not match its checksums")
    return False


def _intact(directory: Path) -> bool:
    try:
        _verified_meta(directory, full=True)
    except _DamagedError:
        return False
    return True


def _discard(directory: Path, reason: object) -> None:
    """Move a damaged cache aside (atomically, so no reader sees it half
    deleted), then delete it; a warning names the folder."""
    logger.warning("partition cache %s is damaged (%s); rebuilding it", directory, reason)
    aside = directory.with_name(f".discarded-{directory.name}-{secrets.token_hex(6)}")
    try:
        os.rename(directory, aside)
    except FileNotFoundError:
        return  # another process set it aside already
    shutil.rmtree(aside, ignore_errors=True)


def _usable(directory: Path, *, full: bool) -> dict[str, Any] | None:
    """The verified metadata of an intact cache at ``directory``, or ``None``
    (a damaged cache is discarded)."""
    if not directory.exists():
        return None
    try:
        return _verified_meta(directory, full=full)
    except _DamagedError as exc:
        _discard(directory, exc)
        return None


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
    return _ensure(options, num_partitions, full=True)[0]


# What a cache holds: the dataset, each user's partition, the partition
# labels and the metadata record.
_Contents = tuple[PreparedData, np.ndarray, list[str], dict[str, Any]]


def _built(target: Path, contents: Callable[[], _Contents], *, full: bool) -> dict[str, Any]:
    """The verified metadata of the cache at ``target``, writing it from
    ``contents()`` first when there is no intact one (``full``: small files
    hashed too)."""
    meta = _usable(target, full=full)
    if meta is None:
        _write_partition_cache(target, *contents())
        meta = read_cache_meta(target)
    return meta


def _ensure(
    options: DataOptions, num_partitions: int | None, *, full: bool
) -> tuple[Path, dict[str, Any]]:
    """:func:`build_partition_cache`, also returning the verified metadata
    (``full``: small files hashed too)."""
    decided = options.partitioner in DATA_DECIDED
    target = _cache_dir_for(options, None if decided else num_partitions)

    def contents() -> _Contents:
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
        record = {
            "options": options.to_dict(),
            "dataset": prepared.stats(),
            "protocol": prepared.protocol(),
            "preparation": prepared.preparation,
            "partition-stats": stats.to_dict(),
        }
        return prepared, partitioner.assignment_, partitioner.labels_, record

    meta = _built(target, contents, full=full)
    if decided and num_partitions is not None:
        made = meta[NUM_PARTITIONS_KEY]
        if made != num_partitions:
            by = ""
            if options.partitioner == "attribute":
                by = f" (partition-by={options.partition_by!r})"
            raise ValueError(
                f"partitioner={options.partitioner}{by} makes {made} partitions, but "
                f"num-partitions={num_partitions}; run with {made} SuperNodes"
            )
    return target, meta


def read_cache_meta(directory: Path) -> dict[str, Any]:
    """The verified ``meta.json`` of a cache directory.

    Raises
    ------
    DataFileError
        If the cache is damaged or was written without checksums, naming the
        folder and how to clear it.
    """
    directory = Path(directory)
    try:
        return _verified_meta(directory, full=True)
    except _DamagedError as exc:
        raise DataFileError(_damaged_message(directory, exc)) from exc


def _verified_meta(directory: Path, *, full: bool) -> dict[str, Any]:
    """``meta.json`` after checking it and every file's size, and with
    ``full`` the small files' digests (cheap either way: no array is read)."""
    try:
        text = (directory / "meta.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _DamagedError("meta.json is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _DamagedError(f"meta.json cannot be read ({exc})") from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _DamagedError(f"meta.json is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or "checksums" not in meta:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise _DamagedError(
            f"written in cache format {found!r} without checksums (now {CACHE_FORMAT})"
        )
    if not _meta_digest_ok(text):
        raise _DamagedError("meta.json does not match its checksum")
    try:
        files = meta["checksums"]["files"]
        tables = (t for t in (_USER_TABLE, _ITEM_TABLE) if t in files)
        rated = tuple(f"{a}.npy" for a in _RATING_ARRAYS) if _RATING_OFFSET_KEY in meta else ()
        for name in (
            *(f"{a}.npy" for a in _ARRAYS),
            *rated,
            "catalogue.txt",
            "user_ids.txt",
            *tables,
        ):
            try:
                size = (directory / name).stat().st_size
            except FileNotFoundError:
                raise _DamagedError(f"{name} is missing") from None
            if size != files[name]["bytes"]:
                raise _DamagedError(
                    f"{name} has {size} bytes, {files[name]['bytes']} expected (truncated?)"
                )
        side = tuple(t for t in (_USER_TABLE, _ITEM_TABLE) if t in files)
        side += tuple(f"{a}.npy" for a in _RATING_OFFSETS.values()) if rated else ()
        for name in (*_WHOLE, *side) if full else ():
            if _file_sha256(directory / name) != files[name]["sha256"]:
                raise _DamagedError(f"{name} does not match its checksum")
        if len(meta["checksums"]["partitions"]) != meta[NUM_PARTITIONS_KEY]:
            raise _DamagedError("meta.json lists a checksum per partition for too few")
    except (KeyError, TypeError) as exc:  # a well-formed digest over a malformed record
        raise _DamagedError(f"meta.json lacks {exc}") from exc
    return meta


def _open(directory: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    files = meta["checksums"]["files"]
    arrays = {}
    for name in (*_ARRAYS, *(_RATING_ARRAYS if _RATING_OFFSET_KEY in meta else ())):
        try:
            array = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _DamagedError(f"{name}.npy cannot be read ({exc})") from exc
        record = files[f"{name}.npy"]
        if array.dtype.str != record["dtype"] or list(array.shape) != record["shape"]:
            raise _DamagedError(
                f"{name}.npy holds {array.dtype.str} {list(array.shape)}, "
                f"{record['dtype']} {record['shape']} expected"
            )
        arrays[name] = array
    return arrays


def _read_verified(
    directory: Path, partition_id: int, meta: dict[str, Any] | None = None
) -> ClientData:
    """One partition, checked against its digest (``meta``: the verified
    metadata, if the caller has it)."""
    if meta is None:
        meta = _verified_meta(directory, full=False)
    k, num_items = meta[NUM_PARTITIONS_KEY], meta["num-items"]
    if not 0 <= partition_id < k:
        raise ValueError(f"partition-id={partition_id}: must be in [0, num-partitions={k})")
    arrays = _open(directory, meta)
    digest, part = _partition_sha256(arrays, partition_id)
    if digest != meta["checksums"]["partitions"][partition_id]:
        raise _DamagedError(f"the arrays of partition {partition_id} do not match their checksum")
    start, stop = (int(arrays["user_offsets"][partition_id + i]) for i in (0, 1))
    user_table = _read_table(directory / _USER_TABLE)
    ratings = None
    if _RATING_OFFSET_KEY in meta:
        offset = meta[_RATING_OFFSET_KEY]
        ratings = RatingRows(
            train_ratings=part["train_ratings"],
            **{
                f"{held}_{what}": part[f"{held}_rating_{column}"]
                for held in (VAL_PART, TEST_PART)
                for what, column in (("users", "users"), ("items", "items"), ("ratings", "values"))
            },
            mean=float(offset["mean"]),
            low=float(offset["low"]),
            high=float(offset["high"]),
        )
    return ClientData(
        partition_id=partition_id,
        num_partitions=k,
        users=part["users"],
        num_items=num_items,
        train_users=part["train_users"],
        train_items=part["train_items"],
        val_items=part["val_items"],
        test_items=part["test_items"],
        eval_negatives=part["eval_negatives"],
        train_set=InteractionSet(part["train_users"], part["train_items"], num_items),
        raw_user_ids=_text_ids(directory / "user_ids.txt")[np.asarray(part["users"])],
        raw_item_ids=_text_ids(directory / "catalogue.txt"),
        user_table=(
            None if user_table is None else user_table.iloc[start:stop].reset_index(drop=True)
        ),
        item_table=_read_table(directory / _ITEM_TABLE),
        ratings=ratings,
    )


def _text_ids(path: Path) -> np.ndarray:
    """The raw ids of a cache's id file, as text, in code order."""
    try:
        return np.asarray(path.read_text(encoding="utf-8").splitlines(), dtype=np.str_)
    except (OSError, UnicodeDecodeError) as exc:
        raise _DamagedError(f"{path.name} cannot be read ({exc})") from exc


def _read_partition(directory: Path, partition_id: int) -> ClientData:
    """Read and verify one partition's slices from a cache directory.

    Parameters
    ----------
    directory : pathlib.Path
        A cache written by :func:`_write_partition_cache`.
    partition_id : int
        Which partition.

    Raises
    ------
    DataFileError
        If the cache is damaged (a bare folder cannot be rebuilt here;
        :func:`load_client_data` rebuilds it).
    """
    directory = Path(directory)
    try:
        return _read_verified(directory, partition_id)
    except _DamagedError as exc:
        raise DataFileError(_damaged_message(directory, exc)) from exc


def _read_or_rebuild(
    build: Callable[[], tuple[Path, dict[str, Any]]], partition_id: int
) -> ClientData:
    """One partition of the cache ``build`` writes (a no-op when an intact
    one exists; it returns the folder and its verified metadata), rebuilt
    when the partition's arrays fail their checksum.

    Raises
    ------
    DataFileError
        If a rebuilt cache still fails its checks (e.g. a failing disk).
    """
    for attempt in range(3):  # another process may discard a copy we just built
        directory, meta = build()
        try:
            return _read_verified(directory, partition_id, meta)
        except _DamagedError as exc:
            if attempt == 2:
                raise DataFileError(_damaged_message(directory, exc)) from exc
            _discard(directory, exc)
    raise AssertionError("unreachable")


@functools.lru_cache(maxsize=64)
def load_client_data(options: DataOptions, partition_id: int, num_partitions: int) -> ClientData:
    """One client's data, read from the on-disk partition cache.

    The first call for a configuration, in any process, prepares, partitions
    and writes the cache; later calls read and verify only this partition's
    slices (a damaged cache is rebuilt, with a logged warning). Cached per
    process, so a client built every round reads its slices once.

    Parameters
    ----------
    options : DataOptions
        Dataset, preparation and partitioner options.
    partition_id : int
        This client's partition, in ``[0, num_partitions)``.
    num_partitions : int
        Partitions in the federation; for partitioners that decide the number
        (natural, attribute) it must equal the number they make.

    Returns
    -------
    ClientData
        The partition's users re-indexed from 0.

    Raises
    ------
    ValueError
        If ``partition_id`` is out of range, or ``num_partitions`` differs
        from the number a data-decided partitioner makes.
    DataFileError
        If the data cannot be read, or a rebuilt cache still fails its checks.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id={partition_id}: must be in [0, num-partitions={num_partitions})"
        )
    return _read_or_rebuild(lambda: _ensure(options, num_partitions, full=False), partition_id)


def _local_client_data(
    options: DataOptions,
    catalogue: Path,
    partition_id: int,
    contents: Callable[[], tuple[PreparedData, dict[str, Any]]],
) -> ClientData:
    """A SuperNode's own log as one cached partition.

    Parameters
    ----------
    options : DataOptions
        The node's options (its ``data_dir`` names the log).
    catalogue : pathlib.Path
        The shared item catalogue; its fingerprint and ``partition_id`` are
        part of the cache key.
    partition_id : int
        The node's id (it salts the node's evaluation negatives).
    contents : callable
        Prepares the log against the catalogue: the dataset and its metadata
        record (called only when no intact cache exists).
    """
    target = _cache_dir_for(
        options, 1, extra={"catalogue": _fingerprint(catalogue), PARTITION_ID_KEY: partition_id}
    )

    def whole() -> _Contents:
        prepared, record = contents()
        return prepared, np.zeros(prepared.num_users, dtype=np.int64), ["local"], record

    return _read_or_rebuild(lambda: (target, _built(target, whole, full=False)), 0)
