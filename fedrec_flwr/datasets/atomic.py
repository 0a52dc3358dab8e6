"""Reader for RecBole atomic files (``.inter``, ``.user``, ``.item`` with
``name:type`` headers), the format dozens of public recsys benchmarks ship in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ._errors import DataFileError
from ._frame import (
    IdTypes,
    concat_interactions,
    header_line,
    id_type_of,
    interactions_from_text,
    iter_text_chunks,
    read_text_table,
    side_table_from_text,
)
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
    first = header_line(path)
    if not first.strip():
        raise DataFileError(
            f"{path}:1: no header; RecBole atomic files start with e.g. "
            "'user_id:token<TAB>item_id:token'"
        )
    header = first.split("\t")
    fields = []
    for position, field in enumerate(header, start=1):
        name, sep, kind = field.partition(":")
        if not sep:
            raise DataFileError(
                f"{path}:1: header field {position} {field!r} is not of the form "
                "name:type (RecBole atomic files start with e.g. 'user_id:token')"
            )
        fields.append((name, kind))
    names = [name for name, _ in fields]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataFileError(
            f"{path}:1: header names {', '.join(repeated)} more than once; "
            "give every field its own name"
        )
    return fields


def _id_types(path: Path, fields: list[tuple[str, str]]) -> IdTypes:
    """``float`` id fields hold numbers (integers, then); ``token`` ids are
    typed by their content."""
    types = IdTypes()
    for name, kind in fields:
        column = _FIELD_MAP.get(name)
        if column in ("user", "item") and kind == "float":
            types.kinds[column] = "int"
            types.reasons[column] = f"the header of {path.name} declares {name}:float"
    return types


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
    fields = _header(path)
    names = [name for name, _ in fields]
    id_types = _id_types(path, fields)
    missing = [f for f in ("user_id", "item_id") if f not in names]
    if missing:
        raise DataFileError(
            f"{path}:1: header lacks {', '.join(missing)}; found {', '.join(names)}; "
            "name the id fields user_id and item_id (e.g. 'user_id:token')"
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
                id_types=id_types,
            )
        )
    frame = concat_interactions(parts) if parts else None
    if frame is None or len(frame) == 0:
        detail = f" ({report.summary()})" if report is not None and report.rows_read else ""
        raise DataFileError(f"{path}: no interactions found{detail}")
    return frame


def read_atomic_table(
    path: str | Path,
    key: str,
    *,
    id_type: str = "auto",
    lenient: bool = False,
    report: ValidationReport | None = None,
) -> pd.DataFrame:
    """Read a RecBole ``.user`` or ``.item`` side table.

    Parameters
    ----------
    path : str or pathlib.Path
        The atomic file.
    key : str
        ``user_id`` or ``item_id``: the field every row must have.
    id_type : str (default: "auto")
        ``int`` or ``str``: the type of the interactions' ids, which the keys
        must match (an integer-keyed table would join no text id); ``auto``:
        decided by the keys themselves (integers when most are).
    lenient : bool (default: False)
        Drop malformed rows and rows whose key is missing or of the wrong type
        (counted in ``report``) instead of raising.
    report : ValidationReport, optional (default: None)
        This table's own counts.

    Returns
    -------
    pandas.DataFrame
        One row per id; columns renamed (``user_id`` -> ``user``,
        ``zip_code`` -> ``zip``, ``movie_title`` -> ``title``); a genre field
        (``class``/``genre``, space-separated ``token_seq``) becomes ``genres``
        joined by ``|``.
    """
    path = Path(path)
    fields = _header(path)
    names = [name for name, _ in fields]
    if key not in names:
        raise DataFileError(
            f"{path}:1: header lacks {key}; found {', '.join(names)}; name the id field "
            f"{key} (e.g. '{key}:token')"
        )
    raw, lines = read_text_table(path, names, path=path, skiprows=1, lenient=lenient, report=report)
    label = _FIELD_MAP.get(key, key)
    declared = dict(fields)[key] == "float"
    raw = side_table_from_text(
        raw,
        key,
        path=path,
        lines=lines,
        label=label,
        id_type="int" if declared else id_type,
        reason=(
            f"the header declares {key}:float"
            if declared
            else f"the interactions' {label} ids are"
            if id_type == "int"
            else ""
        ),
        lenient=lenient,
        report=report,
    )
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
    for suffix, key, column in ((".user", "user_id", "user"), (".item", "item_id", "item")):
        table = path.with_suffix(suffix)
        side[suffix] = (
            read_atomic_table(
                table,
                key,
                id_type=id_type_of(frame[column]),
                lenient=lenient,
                report=report.side_table(str(table)),
            )
            if table.is_file()
            else None
        )
    rated = "rating" in (name for name, _ in _header(path))
    return LoadedData(frame, side[".user"], side[".item"], report, name=path.stem, rated=rated)
