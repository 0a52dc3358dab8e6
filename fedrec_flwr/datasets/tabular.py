"""Any CSV / TSV / Parquet interaction log, with a column mapping.

Files are parsed in chunks, so a log larger than memory can be validated and
streamed into a compact Parquet copy (:func:`stream_log_to_parquet`) that later
loads fast. For text files errors name ``file:line``; for Parquet the number is
the 1-based row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..paths import data_home, staged
from ..progress import progress
from ._errors import DataFileError
from ._frame import (
    IdTypes,
    concat_interactions,
    header_names,
    id_type_of,
    interactions_from_text,
    iter_text_chunks,
    read_text_table,
    side_table_from_text,
)
from .loaded import LoadedData
from .validation import ValidationReport, apply_duplicate_policy

__all__ = ["read_log", "read_side_table", "stream_log_to_parquet"]

_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
# Named in bad-id errors of a log whose id types were decided from its rows.
_HINT = "pass id_type='str' to keep every id as text, "


def _format(path: Path, sep: str | None) -> str | None:
    """``None`` for Parquet, else the text separator."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return None
    if sep is not None:
        return sep
    if path.suffix.lower() not in _SEPARATORS:
        raise DataFileError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; use .csv, "
            ".tsv or .parquet, or pass sep"
        )
    return _SEPARATORS[path.suffix.lower()]


def _parquet(path: Path) -> Any:
    """The opened Parquet file (a damaged one is one clear error)."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # only Parquet needs it

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(
            f"{path}: not a readable Parquet file ({_one_line(exc)}); write it again, or use "
            "CSV/TSV"
        ) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _parquet_types(path: Path, pf: Any, columns: Mapping[str, str], types: IdTypes) -> None:
    """Check the mapped columns' Parquet types and fill ``types`` from them:
    the schema declares them. Integer and float columns hold integer ids,
    string columns text (unless the caller asked for a type); ratings and
    timestamps must be numbers or text."""
    import pyarrow as pa

    for role, name in columns.items():
        field = pf.schema_arrow.field(name)
        kind = field.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        # Datetimes become seconds since the epoch (ordering is what counts).
        when = role == "timestamp" and pa.types.is_timestamp(kind)
        if not (numeric or text or when):
            what = {"user": "integers or strings", "item": "integers or strings"}.get(
                role, "numbers" if role == "rating" else "numbers or datetimes"
            )
            raise DataFileError(
                f"{path}: column {name!r} ({role}) has type {field.type}; it must hold "
                f"{what}: write the column as such"
            )
        if role in types.kinds and types.kinds[role] == "auto":
            types.kinds[role] = "int" if numeric else "str"
            if numeric:
                types.reasons[role] = f"the column {name!r} is numeric"


def _check_mapping(path: Path, header: list[str], columns: Mapping[str, str]) -> None:
    unknown = set(columns) - {"user", "item", "rating", "timestamp"}
    if unknown:
        raise ValueError(
            f"columns: unknown role(s) {sorted(unknown)}; roles are user, item, rating, timestamp"
        )
    for role in ("user", "item"):
        if role not in columns:
            raise ValueError(f"columns: no {role!r} column named; e.g. {{'{role}': 'my_{role}'}}")
    missing = [f"{role}={name!r}" for role, name in columns.items() if name not in header]
    if missing:
        raise DataFileError(
            f"{path}:1: column(s) {', '.join(missing)} not in the header; found "
            f"{', '.join(header)}; name the columns with log-columns='user=...,item=...'"
        )


def _raw_chunks(
    path: Path,
    columns: Mapping[str, str],
    extra: tuple[str, ...],
    sep: str | None,
    lenient: bool,
    report: ValidationReport,
    chunksize: int,
    id_types: IdTypes,
) -> Iterator[tuple[dict[str, pd.Series], np.ndarray, dict[str, pd.Series]]]:
    """Raw columns chunk by chunk; fills ``id_types`` from a Parquet schema."""
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    separator = _format(path, sep)
    if separator is None:
        import pyarrow as pa

        pf = _parquet(path)
        header = list(pf.schema_arrow.names)
        _check_mapping(path, header, columns)
        missing = [c for c in extra if c not in header]
        if missing:
            raise DataFileError(
                f"{path}: no column(s) {missing}; found {', '.join(header)}; name columns "
                "the file has (partition-by)"
            )
        _parquet_types(path, pf, columns, id_types)
        wanted = list(dict.fromkeys([*columns.values(), *extra]))
        start = 1
        batches = progress(
            pf.iter_batches(batch_size=chunksize, columns=wanted),
            f"reading {path.name}",
            total=pf.metadata.num_rows,
            step=lambda batch: batch.num_rows,
            unit="rows",
        )
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise DataFileError(
                    f"{path}: not a readable Parquet file near row {start} ({_one_line(exc)}); "
                    "write it again"
                ) from exc
            raw = batch.to_pandas()
            rows = start + np.arange(len(raw), dtype=np.int64)
            start += len(raw)
            report.rows_read += len(raw)
            yield (
                {role: raw[name] for role, name in columns.items()},
                rows,
                {c: raw[c] for c in extra},
            )
        return
    header = header_names(path, separator)
    _check_mapping(path, header, columns)
    missing = [c for c in extra if c not in header]
    if missing:
        raise DataFileError(
            f"{path}:1: no column(s) {missing}; found {', '.join(header)}; name columns the "
            "file has (partition-by)"
        )
    for raw, lines in iter_text_chunks(
        path,
        header,
        path=path,
        sep=separator,
        skiprows=1,
        quoted=separator == ",",
        lenient=lenient,
        report=report,
        chunksize=chunksize,
    ):
        yield {role: raw[name] for role, name in columns.items()}, lines, {c: raw[c] for c in extra}


def _validated_chunks(
    path: Path,
    columns: Mapping[str, str],
    extra: tuple[str, ...],
    sep: str | None,
    rating_range: tuple[float, float] | None,
    lenient: bool,
    report: ValidationReport,
    chunksize: int,
    id_types: IdTypes,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    chunks = _raw_chunks(path, columns, extra, sep, lenient, report, chunksize, id_types)
    for raw, lines, side in chunks:
        frame = interactions_from_text(
            raw,
            path=path,
            lines=lines,
            rating_range=rating_range,
            lenient=lenient,
            report=report,
            allow_empty=True,
            with_lines=True,
            id_types=id_types,
        )
        side_frame = pd.DataFrame(side)
        if extra:
            kept = pd.Series(lines).isin(frame["line"]).to_numpy()
            side_frame = side_frame.loc[kept].reset_index(drop=True)
        yield frame, side_frame


def read_log(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    *,
    sep: str | None = None,
    rating_range: tuple[float, float] | None = None,
    lenient: bool = False,
    duplicates: str = "keep-latest",
    user_columns: tuple[str, ...] = (),
    users_path: str | Path | None = None,
    chunksize: int = 1_000_000,
    id_type: str = "auto",
) -> LoadedData:
    """Load an interaction log in CSV, TSV or Parquet.

    Parameters
    ----------
    path : str or pathlib.Path
        The log; the format follows the suffix (``.csv``, ``.tsv``/``.tab``/
        ``.txt``, ``.parquet``/``.pq``). Text files need a header row.
    columns : mapping of str to str, optional (default: None)
        Role -> column name, e.g. ``{"user": "customer", "item": "sku",
        "timestamp": "ts"}``; ``user`` and ``item`` are required, ``rating``
        (default 1.0) and ``timestamp`` optional. ``None`` means the columns
        are already called ``user``, ``item``, ``rating``, ``timestamp`` (the
        last two used if present).
    sep : str, optional (default: None)
        Separator of a text file whose suffix does not tell it.
    rating_range : tuple of float, optional (default: None)
        Inclusive rating scale to enforce.
    lenient : bool (default: False)
        Drop and count bad rows instead of raising on the first.
    duplicates : str (default: "keep-latest")
        Policy for repeated ``(user, item)`` pairs.
    user_columns : tuple of str (default: ())
        Log columns describing the user (e.g. ``region``, ``hospital``): they
        become the users table (each user's value on its last row), for the
        attribute partitioner.
    users_path : str or pathlib.Path, optional (default: None)
        A separate users table (CSV/TSV/Parquet with a ``user`` column, or the
        column ``columns["user"]`` names); replaces ``user_columns``.
    chunksize : int (default: 1,000,000)
        Rows parsed at a time.
    id_type : str (default: "auto")
        ``int`` (every id must be an integer), ``str`` (ids are text), or
        ``auto``: numeric Parquet columns hold integers; text columns hold
        integers when most ids of the first chunk are integers, else text.
        Either way the type holds for the whole file, and an id that does not
        fit it is a ``bad-id`` row.

    Returns
    -------
    LoadedData
    """
    path = Path(path)
    columns = dict(columns) if columns is not None else _default_mapping(path, sep)
    report = ValidationReport(str(path))
    id_types = IdTypes.of(id_type)
    parts, sides = [], []
    for frame, side in _validated_chunks(
        path, columns, tuple(user_columns), sep, rating_range, lenient, report, chunksize, id_types
    ):
        parts.append(frame)
        sides.append(side)
    frame = concat_interactions(parts) if parts else None
    if frame is None or len(frame) == 0:
        detail = f" ({report.summary()})" if report.rows_read else ""
        raise DataFileError(f"{path}: no interactions found{detail}")
    users = None
    if user_columns:
        side = pd.concat(sides, ignore_index=True)
        side.insert(0, "user", frame["user"].to_numpy())
        users = side.groupby("user", sort=True).last().reset_index()
    if users_path is not None:
        key = "user" if "user" in _side_header(Path(users_path), sep) else columns["user"]
        users = read_side_table(
            users_path,
            key,
            sep=sep,
            id_type=id_type_of(frame["user"]),
            lenient=lenient,
            report=report.side_table(str(users_path)),
        ).rename(columns={key: "user"})
    frame = apply_duplicate_policy(frame, duplicates, report=report, source=str(path))
    return LoadedData(frame, users, None, report, name=path.stem, rated="rating" in columns)


def _side_header(path: Path, sep: str | None) -> list[str]:
    separator = _format(path, sep)
    if separator is None:
        if not path.is_file():
            raise DataFileError(f"{path}: file not found")
        return list(_parquet(path).schema_arrow.names)
    return header_names(path, separator)


def _default_mapping(path: Path, sep: str | None) -> dict[str, str]:
    header = _side_header(path, sep)
    for role in ("user", "item"):
        if role not in header:
            raise DataFileError(
                f"{path}:1: no {role!r} column in the header (found {', '.join(header)}); "
                "name the columns with log-columns='user=...,item=...'"
            )
    return {role: role for role in ("user", "item", "rating", "timestamp") if role in header}


def stream_log_to_parquet(
    path: str | Path,
    out: str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    *,
    sep: str | None = None,
    rating_range: tuple[float, float] | None = None,
    lenient: bool = False,
    chunksize: int = 1_000_000,
    id_type: str = "auto",
) -> ValidationReport:
    """Validate a log chunk by chunk and write it as Parquet, never holding it whole.

    Duplicates are resolved later, when the Parquet copy is loaded with
    :func:`read_log` (that needs every row of a user at once).

    Parameters
    ----------
    path, columns, sep, rating_range, lenient, chunksize
        As in :func:`read_log`.
    out : str or pathlib.Path, optional (default: None)
        The Parquet file to write (columns ``user``, ``item``, ``rating`` and,
        when mapped, ``timestamp``); staged beside it and renamed into place
        (:func:`~fedrec_flwr.paths.staged`), so a failure leaves no part file.
        ``None``: ``$FEDREC_FLWR_HOME/data/logs/<name>.parquet``.
    id_type : str (default: "auto")
        ``int``, ``str``, or ``auto`` (the type of the first chunk's ids; a
        later chunk that disagrees is an error asking for ``str``).

    Returns
    -------
    ValidationReport
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if id_type not in ("auto", "int", "str"):
        raise ValueError(f"id_type={id_type!r}: accepted: auto, int, str")
    path = Path(path)
    out = Path(out) if out is not None else data_home() / "logs" / f"{path.stem}.parquet"
    columns = dict(columns) if columns is not None else _default_mapping(path, sep)
    report = ValidationReport(str(path))
    # The first chunk decides an "auto" type for the whole file; a later
    # chunk's id that does not fit is a bad-id row (the hint names the fix).
    id_types = IdTypes.of(id_type, hint=_HINT if id_type == "auto" else "")
    with staged(out) as tmp:
        writer = None
        try:
            for frame, _ in _validated_chunks(
                path, columns, (), sep, rating_range, lenient, report, chunksize, id_types
            ):
                frame = frame.drop(columns="line")
                if len(frame) == 0:
                    continue
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise DataFileError(f"{path}: no interactions found ({report.summary()})")
    return report


def read_side_table(
    path: str | Path,
    key: str,
    *,
    sep: str | None = None,
    id_type: str = "auto",
    lenient: bool = False,
    report: ValidationReport | None = None,
) -> pd.DataFrame:
    """Read a users or items table (CSV/TSV/Parquet) keyed by column ``key``.

    Parameters
    ----------
    path : str or pathlib.Path
        The table; text files need a header.
    key : str
        Column every row must have.
    sep : str, optional (default: None)
        Separator of a text file whose suffix does not tell it.
    id_type : str (default: "auto")
        ``int`` or ``str``: the type of the log's ids, which the keys must
        match; ``auto``: integers when most keys are.
    lenient : bool (default: False)
        Drop rows whose key is missing or of the wrong type (counted in
        ``report``) instead of raising.
    report : ValidationReport, optional (default: None)
        This table's counts.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    separator = _format(path, sep)
    if separator is None:
        try:
            table = _parquet(path).read().to_pandas()
        except (OSError, ValueError) as exc:
            raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from exc
        lines = np.arange(1, len(table) + 1, dtype=np.int64)
        if report is not None:
            report.rows_read += len(table)
    else:
        header = header_names(path, separator)
        table, lines = read_text_table(
            path,
            header,
            path=path,
            sep=separator,
            skiprows=1,
            quoted=separator == ",",
            lenient=lenient,
            report=report,
        )
    if key not in table.columns:
        raise DataFileError(f"{path}:1: no {key!r} column; found {', '.join(table.columns)}")
    return side_table_from_text(
        table,
        key,
        path=path,
        lines=lines,
        label="user" if key == "user" else key,
        id_type=id_type,
        reason=f"the log's {key} ids are" if id_type == "int" else "",
        lenient=lenient,
        report=report,
    )
