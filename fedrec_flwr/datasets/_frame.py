"""Turn raw text columns into a validated interactions frame.

Every reader hands its columns over as strings together with the file line of
each row, so an error can name ``file:line``. Strict mode raises on the first
bad row; lenient mode drops bad rows and counts them per kind in a
:class:`~fedrec_flwr.datasets.validation.ValidationReport`.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ._errors import DataFileError
from .validation import ValidationReport

__all__ = [
    "INTERACTION_COLUMNS",
    "DataFileError",
    "concat_interactions",
    "interactions_from_text",
    "iter_text_chunks",
    "read_tsv_strings",
]

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")

# Bytes Arrow parses per block (a block is parsed in parallel, then sliced into
# chunks of ``chunksize`` rows).
_ARROW_BLOCK_BYTES = 1 << 25
_SKIPPED = re.compile(r"Skipping line (\d+): (.*)")
_EXPECTED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def iter_text_chunks(
    source: Path | IO[bytes],
    names: list[str],
    *,
    path: Path,
    sep: str = "\t",
    skiprows: int = 0,
    encoding: str = "utf-8",
    quoted: bool = False,
    lenient: bool = False,
    report: ValidationReport | None = None,
    chunksize: int | None = None,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Read a delimited file as strings, yielding ``(chunk, file_lines)``.

    Arrow's multithreaded parser reads files whose every line is one
    well-formed row; at the first row it rejects (wrong field count, blank
    line, quoted newline) parsing continues with pandas from the first row not
    yet yielded, because pandas names bad lines exactly.

    Parameters
    ----------
    source : pathlib.Path or binary file object
        What to parse (a file object lets callers pre-process bytes, e.g.
        MovieLens' ``::`` separator).
    names : list of str
        One name per field; a row with more fields is malformed, one with
        fewer gets missing values (caught by the column checks).
    path : pathlib.Path
        The file named in errors.
    sep : str (default: "\\t")
        Single-character field separator.
    skiprows : int (default: 0)
        Leading lines to skip (a header).
    encoding : str (default: "utf-8")
        Text encoding (MovieLens 1M/10M use ``latin-1``).
    quoted : bool (default: False)
        Honour CSV double quotes (``movies.csv`` titles contain commas).
    lenient : bool (default: False)
        Drop malformed rows (counted as ``malformed-row``) instead of raising.
    report : ValidationReport, optional (default: None)
        Receives ``rows-read`` and malformed-row counts.
    chunksize : int, optional (default: None)
        Rows per chunk; ``None`` reads everything as one chunk.

    Raises
    ------
    DataFileError
        If the file is missing, or (strict) a row has too many fields.
    """
    if isinstance(source, Path) and not source.is_file():
        raise DataFileError(f"{path}: file not found")
    done = 0  # data rows the fast path has yielded
    try:
        for chunk in _arrow_chunks(source, names, sep, skiprows, encoding, quoted, chunksize):
            lines = skiprows + 1 + done + np.arange(len(chunk), dtype=np.int64)
            done += len(chunk)
            if report is not None:
                report.rows_read += len(chunk)
            yield chunk, lines
        return
    except _FastParseError:
        # A row the fast parser rejects (wrong field count, blank line, a quoted
        # newline): continue with pandas from the first row not yet yielded, as
        # pandas names lines exactly.
        if not isinstance(source, Path):
            source.seek(0)
    yield from _pandas_chunks(
        source,
        names,
        path=path,
        sep=sep,
        skiprows=skiprows + done,
        encoding=encoding,
        quoted=quoted,
        lenient=lenient,
        report=report,
        chunksize=chunksize,
    )


class _FastParseError(Exception):
    """The fast Arrow parser met something only pandas reports exactly."""


def _arrow_chunks(
    source: Path | IO[bytes],
    names: list[str],
    sep: str,
    skiprows: int,
    encoding: str,
    quoted: bool,
    chunksize: int | None,
) -> Iterator[pd.DataFrame]:
    """Multithreaded Arrow CSV parsing of files whose every line is one row."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(
            source if isinstance(source, Path) else pa.PythonFile(source, mode="r"),
            read_options=pacsv.ReadOptions(
                column_names=names,
                skip_rows=skiprows,
                encoding=encoding,
                block_size=_ARROW_BLOCK_BYTES,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=sep,
                quote_char='"' if quoted else False,
                newlines_in_values=False,
                ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        if chunksize is None:  # one chunk, as documented
            yield reader.read_all().to_pandas()
            return
        for batch in reader:
            for start in range(0, batch.num_rows, chunksize):
                yield batch.slice(start, chunksize).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as exc:
        if "Empty CSV file" in str(exc):
            return
        raise _FastParseError(str(exc)) from exc


def _pandas_chunks(
    source: Path | IO[bytes],
    names: list[str],
    *,
    path: Path,
    sep: str,
    skiprows: int,
    encoding: str,
    quoted: bool,
    lenient: bool,
    report: ValidationReport | None,
    chunksize: int | None,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    kwargs = {
        "sep": sep,
        "skiprows": skiprows,
        "header": None,
        "names": names,
        "dtype": str,
        "keep_default_na": False,
        "na_values": [""],
        "quoting": csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        "skip_blank_lines": False,  # a blank line is a row with missing ids, at its line
        "encoding": encoding,
        "engine": "c",
        "on_bad_lines": "warn" if lenient else "error",
    }
    next_line = skiprows + 1
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            if chunksize is None:
                chunks: Iterator[pd.DataFrame] = iter([pd.read_csv(source, **kwargs)])
            else:
                chunks = iter(pd.read_csv(source, chunksize=chunksize, **kwargs))
            seen = 0
            for chunk in chunks:
                bad = _skipped_lines(caught[seen:])
                seen = len(caught)
                lines = next_line + np.arange(len(chunk), dtype=np.int64)
                for line in bad:  # ascending: later rows slide past each skipped line
                    lines[lines >= line] += 1
                if report is not None:
                    report.rows_read += len(chunk) + len(bad)
                    report.drop("malformed-row", np.asarray(bad, dtype=np.int64))
                if len(lines):
                    next_line = int(lines[-1]) + 1
                yield chunk, lines
    except pd.errors.EmptyDataError:
        return
    except pd.errors.ParserError as exc:
        match = _EXPECTED.search(str(exc))
        if match:
            want, bad_line, saw = match.groups()
            raise DataFileError(
                f"{path}:{bad_line}: malformed row: expected {want} fields, saw {saw} "
                f"(separator {sep!r}); fix the row or load with lenient=True to drop it"
            ) from exc
        raise DataFileError(f"{path}: malformed row: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(
            f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start})"
        ) from exc


def _skipped_lines(caught: list[warnings.WarningMessage]) -> list[int]:
    lines: list[int] = []
    for w in caught:
        lines.extend(int(m.group(1)) for m in _SKIPPED.finditer(str(w.message)))
    return sorted(lines)


def read_tsv_strings(path: Path, names: list[str], *, skiprows: int = 0) -> pd.DataFrame:
    """Read a whole tab-separated file as strings (empty fields become NaN).

    Raises
    ------
    DataFileError
        If the file is missing, or a row has more fields than ``names``.
    """
    parts = [chunk for chunk, _ in iter_text_chunks(path, names, path=path, skiprows=skiprows)]
    return parts[0] if parts else pd.DataFrame({n: pd.Series(dtype=str) for n in names})


def _blank(raw: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return raw.isna().to_numpy()
    return (raw.isna() | (raw.astype(str).str.strip() == "")).to_numpy()


def _arrow_cast(raw: pd.Series, kind: str) -> np.ndarray | None:
    """Vectorised parse of a string column with Arrow; ``None`` if any value does
    not parse (the caller then falls back to pandas, which pinpoints it)."""
    import pyarrow as pa  # a dependency; imported here to keep import time low
    import pyarrow.compute as pc

    try:
        array = pa.array(raw.array) if not isinstance(raw.array, np.ndarray) else pa.array(raw)
        if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
            return None
        target = pa.float64() if kind == "float" else pa.int64()
        cast = pc.cast(array, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
        return None
    if kind == "float":
        return cast.to_numpy(zero_copy_only=False)  # nulls become NaN
    if cast.null_count:
        return None
    return cast.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _finite(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    values = None if pd.api.types.is_numeric_dtype(raw.dtype) else _arrow_cast(raw, "float")
    if values is None:
        values = pd.to_numeric(raw, errors="coerce").astype(np.float64).to_numpy()
    values = np.asarray(values, dtype=np.float64)
    return values, np.isfinite(values)


def _as_ids(raw: pd.Series) -> pd.Series:
    if not pd.api.types.is_numeric_dtype(raw.dtype):
        fast = _arrow_cast(raw, "int")
        if fast is not None:
            return pd.Series(fast)
        numeric = pd.to_numeric(raw, errors="coerce")
    else:
        numeric = raw
    if numeric.notna().all() and (numeric == np.floor(numeric)).all():
        # Integer ids stay integers so that u.data and RecBole files of the same
        # data encode identically (string order would put "10" before "9").
        return numeric.astype(np.int64).reset_index(drop=True)
    return raw.astype(str).str.strip().reset_index(drop=True)


def _raise_first(path: Path, lines: np.ndarray, bad: np.ndarray, message: str) -> None:
    line = int(lines[np.flatnonzero(bad)[0]])
    raise DataFileError(f"{path}:{line}: {message}")


def interactions_from_text(
    columns: dict[str, pd.Series],
    *,
    path: Path,
    first_line: int = 1,
    rating_range: tuple[float, float] | None = None,
    lines: np.ndarray | None = None,
    lenient: bool = False,
    report: ValidationReport | None = None,
    allow_empty: bool = False,
    with_lines: bool = False,
) -> pd.DataFrame:
    """Validate raw columns and return a typed interactions frame.

    Parameters
    ----------
    columns : dict of str to pandas.Series
        ``user`` and ``item`` are required; ``rating`` and ``timestamp`` are
        optional (a missing rating column becomes 1.0; a missing timestamp
        column is an error later, at a temporal split, not here). Strings or
        already-typed values (Parquet) are both accepted.
    path : pathlib.Path
        File the columns came from, named in every error.
    first_line : int (default: 1)
        1-based line of the first data row (2 when there is a header); used
        when ``lines`` is ``None``.
    rating_range : tuple of float, optional (default: None)
        Inclusive scale of valid ratings, e.g. ``(1, 5)`` for MovieLens.
    lines : numpy.ndarray, optional (default: None)
        File line of every row (when rows were skipped before this point).
    lenient : bool (default: False)
        Drop bad rows and count them in ``report`` instead of raising.
    report : ValidationReport, optional (default: None)
        Receives per-kind drop counts in lenient mode.
    allow_empty : bool (default: False)
        Return an empty frame instead of raising (one chunk of many may be
        empty; the caller checks the whole).
    with_lines : bool (default: False)
        Add a ``line`` column (file line of each kept row), which
        :func:`~fedrec_flwr.datasets.apply_duplicate_policy` uses and removes.

    Returns
    -------
    pandas.DataFrame
        Columns ``user``, ``item``, ``rating`` (float64) and, when given,
        ``timestamp`` (float64), in file order with a fresh RangeIndex.

    Raises
    ------
    DataFileError
        Strict: naming ``file:line`` of the first bad row, what was found and
        how many rows are bad. Both modes: when no valid row is left.
    """
    n_rows = len(columns["user"])
    if lines is None:
        lines = first_line + np.arange(n_rows, dtype=np.int64)
    if n_rows == 0:
        if allow_empty:
            return _empty(columns, with_lines)
        raise DataFileError(f"{path}: no interactions found (the file has no data rows)")
    keep = np.ones(n_rows, dtype=bool)

    def reject(kind: str, bad: np.ndarray, message: str) -> None:
        bad = bad & keep
        if not bad.any():
            return
        if not lenient:
            _raise_first(path, lines, bad, message)
        if report is not None:
            report.drop(kind, lines[bad])
        keep[bad] = False

    for column in ("user", "item"):
        missing = _blank(columns[column])
        reject(
            "missing-id",
            missing,
            f"missing {column} id ({int(missing.sum())} rows in all); "
            "every row needs a user and an item",
        )
    rating = None
    if "rating" in columns:
        rating, ok = _finite(columns["rating"])
        reject("bad-rating", ~ok, _number_message(columns["rating"], ~ok & keep, "rating"))
        if rating_range is not None:
            low, high = rating_range
            with np.errstate(invalid="ignore"):
                out = ok & ((rating < low) | (rating > high))
            shown = rating[out & keep][0] if (out & keep).any() else 0.0
            reject(
                "rating-out-of-scale",
                out,
                f"rating {shown:g} is outside the scale [{low:g}, {high:g}] "
                f"({int((out & keep).sum())} such rows in all)",
            )
    stamp = None
    if "timestamp" in columns:
        stamp, ok = _finite(columns["timestamp"])
        reject("bad-timestamp", ~ok, _number_message(columns["timestamp"], ~ok & keep, "timestamp"))
    if not keep.any():
        if allow_empty:
            return _empty(columns, with_lines)
        counts = report.summary() if report is not None else f"{n_rows} rows"
        raise DataFileError(f"{path}: no valid interactions left after validation ({counts})")
    everything = bool(keep.all())
    frame = pd.DataFrame(
        {
            column: _as_ids(columns[column] if everything else columns[column][keep])
            for column in ("user", "item")
        }
    )
    frame["rating"] = (rating if everything else rating[keep]) if rating is not None else 1.0
    if stamp is not None:
        frame["timestamp"] = stamp if everything else stamp[keep]
    if with_lines:
        frame["line"] = lines if everything else lines[keep]
    return frame


def _number_message(raw: pd.Series, bad: np.ndarray, column: str) -> str:
    if not bad.any():
        return ""
    first = raw.iloc[int(np.flatnonzero(bad)[0])]
    shown = "is missing" if pd.isna(first) else f"{first!r} is not a finite number"
    return f"{column} {shown} ({int(bad.sum())} such rows in all)"


def _empty(columns: dict[str, pd.Series], with_lines: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"user": pd.Series(dtype=np.int64), "item": pd.Series(dtype=np.int64), "rating": 1.0}
    )
    frame["rating"] = frame["rating"].astype(np.float64)
    if "timestamp" in columns:
        frame["timestamp"] = pd.Series(dtype=np.float64)
    if with_lines:
        frame["line"] = pd.Series(dtype=np.int64)
    return frame


def concat_interactions(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate validated chunks, emptying ``parts`` so the chunks are freed
    (a 20M-row log would otherwise be held twice). Ids become strings
    everywhere if any chunk had a non-integer id (one column never mixes types).
    """
    chunks = [p for p in parts if len(p)] or parts[:1]
    parts.clear()
    if len(chunks) == 1:
        return chunks[0]
    for column in ("user", "item"):
        if any(not pd.api.types.is_integer_dtype(p[column].dtype) for p in chunks):
            for p in chunks:
                p[column] = p[column].astype(str)
    return pd.concat(chunks, ignore_index=True)


def bytes_with_tabs(path: Path, separator: bytes) -> io.BytesIO:
    """File content with a multi-character ``separator`` replaced by tabs, so
    the fast C parser can read it (MovieLens' ``::``)."""
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    return io.BytesIO(path.read_bytes().replace(separator, b"\t"))
