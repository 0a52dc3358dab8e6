"""Reader for RecBole atomic files (``.inter``, ``.user``, ``.item`` with
``name:type`` headers), the format dozens of public recsys benchmarks ship in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._errors import DataFileError
from ._frame import concat_interactions, interactions_from_text, iter_text_chunks
from .loaded import LoadedData
from .validation import ValidationReport, apply_duplicate_policy

__all__ = ["read_atomic", "read_atomic_inter", "read_atomic_table"]

# RecBole's conventional field names -> our column names.
_FIELD_MAP = {
    "user_id": "user",
    "item_id": "item",
    "rating": "rating",
    "timestamp": "timestamp",
}
# Side-table fields renamed to the names the partitioners use.
_SIDE_MAP = {"user_id": "user", "item_id": "item", "zip_code": "zip", "movie_title": "title"}
_GENRE_FIELDS = ("class", "genre", "genres")


def _header(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    fields = []
    for position, field in enumerate(header, start=1):
        name, sep, kind = field.partition(":")
        if not sep:
            raise DataFileError(
                f"{path}:1: header field {position} {field!r} is not of the form "
                "name:type (RecBole atomic files start with e.g. 'user_id:token')"
            )
        fields.append((name, kind))
    return fields


def read_atomic_inter(
    path: str | Path,
    *,
    rating_range: tuple[float, float] | None = None,
    lenient: bool = False,
    report: ValidationReport | None = None,
    chunksize: int | None = None,
    with_lines: bool = False,
) -> pd.DataFrame:
    """Read a RecBole ``.inter`` file into a validated interactions frame.

    Parameters
    ----------
    path : str or pathlib.Path
        A tab-separated file whose first line is a ``name:type`` header, e.g.
        ``user_id:token  item_id:token  rating:float  timestamp:float``.
    rating_range : tuple of float, optional (default: None)
        Inclusive rating scale to enforce.
    lenient : bool (default: False)
        Drop bad rows (counted in ``report``) instead of raising.
    report : ValidationReport, optional (default: None)
        Receives rows read and dropped per kind.
    chunksize : int, optional (default: None)
        Parse this many rows at a time (bounded memory on large files).
    with_lines : bool (default: False)
        Keep a ``line`` column with each row's file line.

    Returns
    -------
    pandas.DataFrame
        ``user``, ``item``, ``rating`` and (if present) ``timestamp``.
    """
    path = Path(path)
    names = [name for name, _ in _header(path)]
    missing = [f for f in ("user_id", "item_id") if f not in names]
    if missing:
        raise DataFileError(
            f"{path}:1: header lacks {', '.join(missing)}; found {', '.join(names)}"
        )
    parts = []
    for raw, lines in iter_text_chunks(
        path,
        names,
        path=path,
        skiprows=1,
        lenient=lenient,
        report=report,
        chunksize=chunksize,
    ):
        columns = {_FIELD_MAP[n]: raw[n] for n in names if n in _FIELD_MAP}
        parts.append(
            interactions_from_text(
                columns,
                path=path,
                lines=lines,
                rating_range=rating_range,
                lenient=lenient,
                report=report,
                allow_empty=True,
                with_lines=with_lines,
            )
        )
    frame = concat_interactions(parts) if parts else None
    if frame is None or len(frame) == 0:
        detail = f" ({report.summary()})" if report is not None and report.rows_read else ""
        raise DataFileError(f"{path}: no interactions found{detail}")
    return frame


def read_atomic_table(path: str | Path, key: str) -> pd.DataFrame:
    """Read a RecBole ``.user`` or ``.item`` side table.

    Parameters
    ----------
    path : str or pathlib.Path
        The atomic file.
    key : str
        ``user_id`` or ``item_id``: the field every row must have.

    Returns
    -------
    pandas.DataFrame
        One row per id; columns renamed (``user_id`` -> ``user``,
        ``zip_code`` -> ``zip``, ``movie_title`` -> ``title``); a genre field
        (``class``/``genre``, space-separated ``token_seq``) becomes ``genres``
        joined by ``|``. Integer ids become int64 as in the ``.inter`` file.
    """
    path = Path(path)
    fields = _header(path)
    names = [name for name, _ in fields]
    if key not in names:
        raise DataFileError(f"{path}:1: header lacks {key}; found {', '.join(names)}")
    raw = next(iter_text_chunks(path, names, path=path, skiprows=1))[0]
    ids = raw[key]
    missing = ids.isna().to_numpy()
    if missing.any():
        line = int(np.flatnonzero(missing)[0]) + 2
        raise DataFileError(f"{path}:{line}: missing {key}")
    numeric = pd.to_numeric(ids, errors="coerce")
    if numeric.notna().all() and (numeric == np.floor(numeric)).all():
        raw[key] = numeric.astype(np.int64)
    out = raw.rename(columns=_SIDE_MAP)
    for name, kind in fields:
        if name in _GENRE_FIELDS and kind == "token_seq":
            out = out.rename(columns={name: "genres"})
            out["genres"] = out["genres"].fillna("").str.split().str.join("|")
    return out.reset_index(drop=True)


def read_atomic(
    path: str | Path,
    *,
    rating_range: tuple[float, float] | None = None,
    lenient: bool = False,
    duplicates: str = "keep-latest",
    chunksize: int | None = None,
) -> LoadedData:
    """Read a RecBole dataset: ``X.inter`` plus ``X.user``/``X.item`` if present.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.inter`` file, or a directory holding exactly one.
    rating_range : tuple of float, optional (default: None)
        Inclusive rating scale to enforce.
    lenient : bool (default: False)
        Drop and count bad rows instead of raising.
    duplicates : str (default: "keep-latest")
        Policy for repeated ``(user, item)`` pairs, see
        :func:`~fedrec_flwr.datasets.apply_duplicate_policy`.
    chunksize : int, optional (default: None)
        Rows parsed at a time.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise DataFileError(
                f"{path}: expected exactly one *.inter file, found {len(found)}; "
                "name the .inter file itself"
            )
        path = found[0]
    report = ValidationReport(str(path))
    frame = read_atomic_inter(
        path,
        rating_range=rating_range,
        lenient=lenient,
        report=report,
        chunksize=chunksize,
        with_lines=True,
    )
    frame = apply_duplicate_policy(frame, duplicates, report=report, source=str(path))
    side = {}
    for suffix, key in ((".user", "user_id"), (".item", "item_id")):
        table = path.with_suffix(suffix)
        side[suffix] = read_atomic_table(table, key) if table.is_file() else None
    return LoadedData(frame, side[".user"], side[".item"], report, name=path.stem)
