"""Turn raw text columns into a validated interactions frame.

Every reader hands its columns over as strings together with the file line of
each row, so an error can name ``file:line``. Strict mode raises on the first
bad row; lenient mode drops bad rows and counts them per kind in a
:class:`~fedrec_flwr.datasets.validation.ValidationReport`.

Ids have one type per column and file (:class:`IdTypes`): integers (int64,
so that ``u.data`` and RecBole files of the same data encode identically) or
text. A row whose id does not fit the column's type is a ``bad-id`` row, never
a reason to change the type of the other rows.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from ..progress import progress
from ._errors import DataFileError
from .validation import ValidationReport

__all__ = [
    "INTERACTION_COLUMNS",
    "LENIENT_FIX",
    "DataFileError",
    "IdTypes",
    "concat_interactions",
    "header_line",
    "header_names",
    "id_type_of",
    "interactions_from_text",
    "iter_text_chunks",
    "read_tsv_strings",
    "side_table_from_text",
]

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
# The fix every strict-mode row error ends with (the run-config key, not the
# library's ``lenient=True``: that is what a user of ``flwr run`` can set).
LENIENT_FIX = "or set validation='lenient' to drop and count such rows"

# Bytes Arrow parses per block (a block is parsed in parallel, then sliced into
# chunks of ``chunksize`` rows).
_ARROW_BLOCK_BYTES = 1 << 25
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Line ends as Arrow sees them: a lone CR ends a line too.
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# An integer id: ASCII digits, optional sign, optionally ".0" (a float column
# written out by pandas). Hex, exponents and other digit scripts are not ids.
_INT_TOKEN = re.compile(r"[+-]?([0-9]+)(?:\.0*)?")
_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)",
    re.IGNORECASE,
)
# Appended after the last line: a quoted field still open at the end of the
# file swallows it, which is how an unterminated quote is told apart.
_END = "\x00fedrec-end-of-file\x00"


@dataclass
class IdTypes:
    """The type of a file's ``user`` and ``item`` id columns, decided once.

    ``int``: every id must be an integer within int64; ``str``: ids are text
    (surrounding whitespace removed); ``auto``: the first chunk with ids
    decides (``int`` when most of its ids are integers, or when the column is
    numeric), and the decision then holds for the rest of the file.

    Attributes
    ----------
    kinds : dict of str to str
        ``user`` and ``item`` -> ``int``, ``str`` or ``auto``.
    reasons : dict of str to str
        Why a column holds integers, named in bad-id errors.
    hint : str
        An extra fix for bad-id errors (e.g. ``id_type='str'``).
    """

    kinds: dict[str, str] = field(default_factory=lambda: {"user": "auto", "item": "auto"})
    reasons: dict[str, str] = field(default_factory=dict)
    hint: str = ""

    @classmethod
    def of(cls, kind: str, reason: str = "", hint: str = "") -> IdTypes:
        """Both columns of type ``kind`` (``int`` ones because of ``reason``)."""
        if kind not in ("auto", "int", "str"):
            raise ValueError(f"id_type={kind!r}: accepted: auto, int, str")
        reasons = {"user": reason, "item": reason} if kind == "int" else {}
        return cls({"user": kind, "item": kind}, reasons, hint)


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
    well-formed row; at the first row it rejects (wrong field count, a quoted
    newline, bytes not in ``encoding``) parsing continues in Python from the
    first row not yet yielded, which names every line exactly.

    Parameters
    ----------
    source : pathlib.Path or binary file object
        What to parse (a file object lets callers pre-process bytes, e.g.
        MovieLens' ``::`` separator).
    names : list of str
        One name per field; a row with more or fewer fields is malformed (a
        blank line is a row of missing values, caught by the column checks).
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
        If the file is missing or not valid ``encoding`` text, a quoted field
        is never closed, or (strict) a row has the wrong number of fields.
    """
    if isinstance(source, Path) and not source.is_file():
        raise DataFileError(f"{path}: file not found")
    chunks = _text_chunks(
        source, names, path, sep, skiprows, encoding, quoted, lenient, report, chunksize
    )
    if chunksize is None:  # one chunk: nothing to show progress of
        return chunks
    # A chunked read is a large log: rows counted once each chunk is validated.
    return progress(chunks, f"reading {path.name}", step=lambda c: len(c[1]), unit="rows")


def _text_chunks(
    source: Path | IO[bytes],
    names: list[str],
    path: Path,
    sep: str,
    skiprows: int,
    encoding: str,
    quoted: bool,
    lenient: bool,
    report: ValidationReport | None,
    chunksize: int | None,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """:func:`iter_text_chunks`' chunks (its arguments, positionally)."""
    done = 0  # data rows the fast path has yielded
    try:
        if quoted and _quote_open_at_end(source, sep):
            raise _FastParseError("a quoted field is never closed")
        for chunk in _arrow_chunks(source, names, sep, skiprows, encoding, quoted, chunksize):
            lines = skiprows + 1 + done + np.arange(len(chunk), dtype=np.int64)
            done += len(chunk)
            if report is not None:
                report.rows_read += len(chunk)
            yield chunk, lines
        return
    except _FastParseError:
        if not isinstance(source, Path):
            source.seek(0)
    yield from _python_chunks(
        source,
        names,
        path=path,
        sep=sep,
        skip=skiprows + done,
        encoding=encoding,
        quoted=quoted,
        lenient=lenient,
        report=report,
        chunksize=chunksize,
    )


class _FastParseError(Exception):
    """The fast Arrow parser met something only the Python parser reports exactly."""


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

    def check(batch: pa.RecordBatch | pa.Table) -> None:
        # A quoted newline makes one row span two lines, and the line numbers
        # of every later row wrong: only the Python parser counts those. The
        # values' bytes are searched directly (memchr-fast, no per-value work).
        if not quoted:
            return
        for column in batch.columns:
            for array in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
                data = array.buffers()[2]
                if data is not None:
                    raw = data.to_pybytes()
                    if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:
                        raise _FastParseError("a quoted field spans lines")

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
                quoted_strings_can_be_null=True,  # '""' is empty, as in the Python parser
            ),
        )
        if chunksize is None:  # one chunk, as documented
            table = reader.read_all()
            check(table)
            yield table.to_pandas()
            return
        for batch in reader:
            check(batch)
            for start in range(0, batch.num_rows, chunksize):
                yield batch.slice(start, chunksize).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as exc:
        if "Empty CSV file" in str(exc):
            return
        raise _FastParseError(str(exc)) from exc


def _quote_open_at_end(source: Path | IO[bytes], sep: str) -> bool:
    """Whether the last line may open a quoted field that is never closed.

    Arrow takes such a field to the end of the file as its value; the Python
    parser reports it. (A quote opened on an earlier line would put a newline
    into a value, which sends every file to the Python parser anyway.)
    """
    tail_bytes = 1 << 16
    if isinstance(source, Path):
        with source.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - tail_bytes))
            tail = fh.read()
    else:
        here = source.tell()
        size = source.seek(0, 2)
        source.seek(max(0, size - tail_bytes))
        tail = source.read()
        source.seek(here)
    pieces = _LINE_BREAK.split(tail)
    if len(pieces) > 1 and pieces[-1] == b"":
        pieces.pop()
    if len(pieces) == 1 and size > tail_bytes:
        return True  # the last line is longer than the tail: let Python parse it
    last = pieces[-1].decode("utf-8", errors="replace")
    reader = csv.reader([last + "\n", _END + "\n"], delimiter=sep, strict=False)
    return any(_END in f for record in reader if record != [_END] for f in record)


def _text_lines(source: Path | IO[bytes], path: Path, encoding: str, skip: int) -> Iterator[str]:
    """Decoded lines (each ending in one newline) after the first ``skip``,
    then the end marker; a line that is not ``encoding`` text is an error
    naming it."""
    fh = source.open("rb") if isinstance(source, Path) else source
    number = 0
    try:
        for raw in fh:
            pieces = _LINE_BREAK.split(raw)
            if pieces[-1] == b"":
                pieces.pop()
            for piece in pieces:
                number += 1
                if number <= skip:
                    continue
                try:
                    text = piece.decode(encoding)
                except UnicodeDecodeError as exc:
                    raise DataFileError(
                        f"{path}:{number}: not valid {encoding} text ({exc.reason}: byte "
                        f"{piece[exc.start]:#04x} at column {exc.start + 1}); save the file "
                        f"as {encoding} (or remove the stray bytes)"
                    ) from exc
                if number == 1 and text.startswith("\ufeff"):
                    text = text[1:]  # a byte-order mark, as Arrow drops it
                yield text + "\n"
    finally:
        if isinstance(source, Path):
            fh.close()
    yield _END + "\n"


def _python_chunks(
    source: Path | IO[bytes],
    names: list[str],
    *,
    path: Path,
    sep: str,
    skip: int,
    encoding: str,
    quoted: bool,
    lenient: bool,
    report: ValidationReport | None,
    chunksize: int | None,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Row-by-row parsing with exact line numbers and field counts."""
    n = len(names)
    limit = chunksize or sys.maxsize
    rows: list[list[str | None]] = []
    lines: list[int] = []
    malformed: list[int] = []
    reader = csv.reader(
        _text_lines(source, path, encoding, skip),
        delimiter=sep,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        strict=False,
    )
    consumed = 0  # lines the reader had taken before the current record
    # Arrow takes fields of any length; so must the fallback, or one long
    # field would load or fail depending on which parser read the file.
    field_limit = csv.field_size_limit(sys.maxsize)

    def flush() -> tuple[pd.DataFrame, np.ndarray]:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        chunk = pd.DataFrame(
            {name: pd.Series(col, dtype="str") for name, col in zip(names, columns, strict=True)}
        )
        if report is not None:
            report.rows_read += len(rows) + len(malformed)
            report.drop("malformed-row", np.asarray(malformed, dtype=np.int64))
        out = chunk, np.asarray(lines, dtype=np.int64)
        rows.clear()
        lines.clear()
        malformed.clear()
        return out

    try:
        for record in reader:
            line = skip + consumed + 1
            spans = reader.line_num - consumed
            consumed = reader.line_num
            if spans > 1 and any(_END in f for f in record):
                raise DataFileError(
                    f"{path}:{line}: a quoted field opened on this line is never closed; "
                    "close the quote (or remove it)"
                )
            if record == [_END]:
                break
            if not record:  # a blank line: a row of missing values
                rows.append([None] * n)
            elif len(record) != n:
                if not lenient:
                    raise DataFileError(
                        f"{path}:{line}: malformed row: expected {n} fields, saw {len(record)} "
                        f"(separator {sep!r}); fix the row, {LENIENT_FIX}"
                    )
                malformed.append(line)
                continue
            else:
                rows.append([f if f else None for f in record])
            lines.append(line)
            if len(rows) >= limit:
                yield flush()
        if rows or malformed:
            yield flush()
    except csv.Error as exc:
        raise DataFileError(
            f"{path}:{skip + reader.line_num}: malformed row ({exc}); fix the row"
        ) from exc
    finally:
        csv.field_size_limit(field_limit)


def header_line(path: Path) -> str:
    """The first line of a UTF-8 file (byte-order mark and line end removed).

    Raises
    ------
    DataFileError
        If the file is missing or the line is not UTF-8 text.
    """
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    with path.open("rb") as fh:
        raw = _LINE_BREAK.split(fh.readline(), maxsplit=1)[0]
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError(
            f"{path}:1: the header is not valid utf-8 text ({exc.reason}: byte "
            f"{raw[exc.start]:#04x} at column {exc.start + 1}); save the file as utf-8"
        ) from exc


def header_names(path: Path, separator: str) -> list[str]:
    """Column names of a text file's first line (CSV quotes honoured when the
    separator is a comma), each stripped of surrounding whitespace.

    Raises
    ------
    DataFileError
        If the file is missing, the line is empty or not UTF-8, or names a
        column twice.
    """
    first = header_line(path)
    if not first.strip():
        raise DataFileError(
            f"{path}:1: no header; the first line must name the columns, e.g. "
            f"{separator.join(['user', 'item', 'rating', 'timestamp'])!r}"
        )
    reader = (
        csv.reader([first], delimiter=separator, quoting=csv.QUOTE_MINIMAL)
        if separator == ","
        else csv.reader([first], delimiter=separator, quoting=csv.QUOTE_NONE)
    )
    names = [h.strip() for h in next(reader)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataFileError(
            f"{path}:1: the header names {', '.join(map(repr, repeated))} more than once; "
            "give every column its own name"
        )
    return names


def read_text_table(
    source: Path | IO[bytes], names: list[str], **options: Any
) -> tuple[pd.DataFrame, np.ndarray]:
    """A whole delimited file as strings and its file line numbers, in one chunk.

    Takes :func:`iter_text_chunks`' arguments (``path=`` is required) except
    ``chunksize``: side tables are read whole. An empty file gives an empty
    frame with columns ``names``.
    """
    for chunk, lines in iter_text_chunks(source, names, **options):
        return chunk, lines  # no chunksize: the one and only chunk
    return pd.DataFrame({n: pd.Series(dtype=str) for n in names}), np.arange(0, dtype=np.int64)


def read_tsv_strings(path: Path, names: list[str], *, skiprows: int = 0) -> pd.DataFrame:
    """Read a whole tab-separated file as strings (empty fields become NaN).

    Raises
    ------
    DataFileError
        If the file is missing, or a row has more fields than ``names``.
    """
    return read_text_table(path, names, path=path, skiprows=skiprows)[0]


@dataclass
class _Ids:
    """One id column parsed both ways; the column's type picks which applies."""

    raw: pd.Series
    blank: np.ndarray  # missing or only whitespace
    values: np.ndarray  # int64 (0 where not an integer)
    is_int: np.ndarray  # an integer within int64
    beyond: np.ndarray  # an integer outside int64
    numeric: bool  # a numeric column (Parquet): its type is declared
    _text: np.ndarray | None = None

    def text(self) -> np.ndarray:
        """The ids as text, surrounding whitespace removed (object array)."""
        if self._text is None:
            codes, uniques = pd.factorize(self.raw)
            stripped = np.array([str(u).strip() for u in uniques] + [""], dtype=object)
            self._text = stripped[codes]  # code -1 (missing) picks the last entry
        return self._text


def _fast_ints(raw: pd.Series) -> np.ndarray | None:
    """Vectorised parse of a column of plain ASCII decimal ids (the common
    case); ``None`` when any value is anything else."""
    import pyarrow as pa  # a dependency; imported here to keep import time low
    import pyarrow.compute as pc

    try:
        array = pa.array(raw.array) if not isinstance(raw.array, np.ndarray) else pa.array(raw)
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            return None
        if array.null_count or not pc.all(pc.ascii_is_decimal(array)).as_py():
            return None  # Arrow alone would also take "0x10" or " 5"
        return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
        return None  # e.g. beyond int64


def _parse_int(token: str) -> tuple[int, bool, bool]:
    """``(value, is an int64, is an integer beyond int64)`` of one stripped id."""
    match = _INT_TOKEN.fullmatch(token)
    if match is None:
        return 0, False, False
    value = int(token[: match.start(1)] + match.group(1))
    if _INT64_MIN <= value <= _INT64_MAX:
        return value, True, False
    return 0, False, True


def _parse_ids(raw: pd.Series) -> _Ids:
    n = len(raw)
    dtype = raw.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        blank = raw.isna().to_numpy()
        if pd.api.types.is_integer_dtype(dtype):
            big = np.zeros(n, dtype=bool)
            if pd.api.types.is_unsigned_integer_dtype(dtype):
                big = (raw > _INT64_MAX).fillna(False).to_numpy(dtype=bool)
            values = raw.where(~big, 0).fillna(0).to_numpy(dtype=np.int64)
            return _Ids(raw, blank, values, ~blank & ~big, big, True)
        f = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(f) & (f == np.floor(f))
            inside = integral & (f >= -(2.0**63)) & (f < 2.0**63)
        values = np.where(inside, f, 0).astype(np.int64)
        return _Ids(raw, blank, values, inside, integral & ~inside, True)
    fast = _fast_ints(raw)
    if fast is not None:
        none = np.zeros(n, dtype=bool)
        return _Ids(raw, none, fast, ~none, none, False)
    # Per distinct value: ids repeat, so this stays cheap on large logs.
    codes, uniques = pd.factorize(raw)
    stripped = [str(u).strip() for u in uniques]
    parsed = [_parse_int(t) for t in stripped] + [(0, False, False)]
    blank_u = np.array([not t for t in stripped] + [True])
    values_u = np.array([p[0] for p in parsed], dtype=np.int64)
    is_int_u = np.array([p[1] for p in parsed])
    beyond_u = np.array([p[2] for p in parsed])
    text_u = np.array([*stripped, ""], dtype=object)
    return _Ids(
        raw, blank_u[codes], values_u[codes], is_int_u[codes], beyond_u[codes], False, text_u[codes]
    )


def _decide(ids: _Ids, rows: np.ndarray, types: IdTypes, column: str) -> str:
    """The column's type; ``auto`` is decided on ``rows`` and remembered."""
    kind = types.kinds[column]
    if kind != "auto" or not rows.any():
        return kind
    if ids.numeric:
        kind, reason = "int", "this column is numeric"
    else:
        # Most ids integers: the rest are bad rows, not a reason to read
        # every id as text (a users table keyed by integers would then match
        # nothing).
        kind = "int" if 2 * int(ids.is_int[rows].sum()) > int(rows.sum()) else "str"
        reason = "this column's ids are"
    types.kinds[column] = kind
    types.reasons.setdefault(column, reason)
    return kind


def _shown(raw: pd.Series, position: int) -> str:
    value = raw.iloc[position]
    if isinstance(value, float | np.floating) and float(value).is_integer():
        number = float(value)
        return repr(f"{number:.0f}" if abs(number) < 1e16 else f"{number:g}")
    return repr(str(value))


def _bad_id_message(ids: _Ids, bad: np.ndarray, column: str, types: IdTypes) -> str:
    first = int(np.flatnonzero(bad)[0])
    shown = _shown(ids.raw, first)
    if ids.beyond[first]:
        problem = "is an integer beyond the int64 range"
    else:
        problem = f"is not an integer, while {types.reasons.get(column, 'its ids are integers')}"
    return (
        f"{column} id {shown} {problem} ({int(bad.sum())} such rows in all); "
        f"fix the id, {types.hint}{LENIENT_FIX}"
    )


def id_type_of(ids: pd.Series) -> str:
    """``int`` or ``str``: the type a side table's keys must have to join ``ids``."""
    return "int" if pd.api.types.is_integer_dtype(ids.dtype) else "str"


def _id_column(ids: _Ids, kind: str, keep: np.ndarray) -> np.ndarray:
    return ids.values[keep] if kind == "int" else ids.text()[keep]


def _fast_floats(raw: pd.Series) -> np.ndarray | None:
    """Vectorised float parse; ``None`` if any value does not parse (the
    caller then parses value by value, which pinpoints it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        array = pa.array(raw.array) if not isinstance(raw.array, np.ndarray) else pa.array(raw)
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            return None
        # Nulls become NaN: "missing", caught by the finiteness check.
        return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
        return None


def _parse_float(token: str) -> float:
    token = token.strip()
    return float(token) if _NUMBER.fullmatch(token) else np.nan


def _finite(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        # Seconds since the epoch, whatever the unit; NaT is missing (NaN).
        epoch = pd.Timestamp(0, tz=getattr(raw.dt, "tz", None))
        values = ((raw - epoch) / pd.Timedelta(seconds=1)).to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    elif pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        fast = _fast_floats(raw)
        if fast is not None:
            values = np.asarray(fast, dtype=np.float64)
        else:
            codes, uniques = pd.factorize(raw)
            parsed = np.array([_parse_float(str(u)) for u in uniques] + [np.nan])
            values = parsed[codes]
    return values, np.isfinite(values)


def _rejecter(
    path: Path,
    lines: np.ndarray,
    keep: np.ndarray,
    lenient: bool,
    report: ValidationReport | None,
) -> Callable[[str, np.ndarray, str], None]:
    """``reject(kind, bad, message)`` for one file's rows.

    Rows in ``bad`` still kept are an error naming the first one's line
    (strict), or are counted under ``kind`` in ``report`` and cleared in
    ``keep`` in place (lenient): each row is rejected once, for its first fault.
    """

    def reject(kind: str, bad: np.ndarray, message: str) -> None:
        bad = bad & keep
        if not bad.any():
            return
        if not lenient:
            _raise_first(path, lines, bad, message)
        if report is not None:
            report.drop(kind, lines[bad])
        keep[bad] = False

    return reject


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
    id_types: IdTypes | None = None,
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
    id_types : IdTypes, optional (default: None)
        The id columns' types; pass the same object for every chunk of a file
        so that the first chunk's decision holds for the rest. ``None``:
        decided on these rows alone.

    Returns
    -------
    pandas.DataFrame
        Columns ``user``, ``item`` (int64, or text as an object column),
        ``rating`` (float64) and, when given, ``timestamp`` (float64), in
        file order with a fresh RangeIndex.

    Raises
    ------
    DataFileError
        Strict: naming ``file:line`` of the first bad row, what was found, how
        many rows are bad and the fix. Both modes: when no valid row is left.
    """
    n_rows = len(columns["user"])
    if lines is None:
        lines = first_line + np.arange(n_rows, dtype=np.int64)
    if n_rows == 0:
        if allow_empty:
            return _empty(columns, with_lines)
        detail = f" ({report.summary()})" if report is not None and report.rows_read else ""
        raise DataFileError(f"{path}: no interactions found (the file has no valid rows){detail}")
    types = id_types if id_types is not None else IdTypes()
    keep = np.ones(n_rows, dtype=bool)

    reject = _rejecter(path, lines, keep, lenient, report)

    ids = {column: _parse_ids(columns[column]) for column in ("user", "item")}
    for column in ("user", "item"):
        missing = ids[column].blank
        reject(
            "missing-id",
            missing,
            f"missing {column} id ({int((missing & keep).sum())} rows in all); every row "
            f"needs a user and an item: fill it in, {LENIENT_FIX}",
        )
    # Both types on the same rows, before either column rejects any: one
    # column's bad ids must not tip the other column's type.
    kinds = {column: _decide(ids[column], keep, types, column) for column in ("user", "item")}
    for column in ("user", "item"):
        if kinds[column] == "int":
            bad = ~ids[column].is_int & keep
            if bad.any():
                reject("bad-id", bad, _bad_id_message(ids[column], bad, column, types))
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
                f"({int((out & keep).sum())} such rows in all); fix the rating, {LENIENT_FIX}",
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
    frame = pd.DataFrame(
        {column: _id_column(ids[column], kinds[column], keep) for column in ("user", "item")}
    )
    frame["rating"] = rating[keep] if rating is not None else 1.0
    if stamp is not None:
        frame["timestamp"] = stamp[keep]
    if with_lines:
        frame["line"] = lines[keep]
    return frame


def side_table_from_text(
    raw: pd.DataFrame,
    key: str,
    *,
    path: Path,
    lines: np.ndarray,
    label: str,
    id_type: str = "auto",
    reason: str = "",
    lenient: bool = False,
    report: ValidationReport | None = None,
) -> pd.DataFrame:
    """Check and type the key column of a users or items table.

    Parameters
    ----------
    raw : pandas.DataFrame
        The table as read (strings, or typed Parquet columns).
    key : str
        Its id column.
    path : pathlib.Path
        File named in errors.
    lines : numpy.ndarray
        File line of each row.
    label : str
        ``user`` or ``item``, for messages.
    id_type : str (default: "auto")
        ``int`` or ``str`` to match the interactions' ids, or ``auto``.
    reason : str (default: "")
        Why the ids are integers (named in errors), e.g. "the interactions'
        user ids are".
    lenient : bool (default: False)
        Drop rows with a missing or ill-typed key (counted in ``report``)
        instead of raising.
    report : ValidationReport, optional (default: None)
        Receives the drops.

    Returns
    -------
    pandas.DataFrame
        The kept rows, ``key`` int64 or text, with a fresh RangeIndex.
    """
    types = IdTypes({label: id_type}, {label: reason} if reason else {})
    keep = np.ones(len(raw), dtype=bool)

    reject = _rejecter(path, lines, keep, lenient, report)

    try:
        ids = _parse_ids(raw[key])
    except TypeError as exc:  # e.g. a Parquet column of lists: not hashable
        raise DataFileError(
            f"{path}: column {key!r} holds {raw[key].dtype} values; {label} ids must be "
            "integers or strings: write the column as such"
        ) from exc
    reject(
        "missing-id",
        ids.blank,
        f"missing {label} id ({int(ids.blank.sum())} rows in all); fill it in, {LENIENT_FIX}",
    )
    kind = _decide(ids, keep, types, label)
    if kind == "int":
        bad = ~ids.is_int & keep
        if bad.any():
            reject("bad-id", bad, _bad_id_message(ids, bad, label, types))
    out = raw.loc[keep].reset_index(drop=True)
    out[key] = _id_column(ids, kind, keep)
    return out


def _number_message(raw: pd.Series, bad: np.ndarray, column: str) -> str:
    if not bad.any():
        return ""
    first = raw.iloc[int(np.flatnonzero(bad)[0])]
    shown = "is missing" if pd.isna(first) else f"{str(first)!r} is not a finite number"
    return f"{column} {shown} ({int(bad.sum())} such rows in all); fix the {column}, {LENIENT_FIX}"


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
    (a 20M-row log would otherwise be held twice).

    The chunks of one file share an :class:`IdTypes`, so their id columns
    agree; chunks that do not are refused rather than converted (converting
    would silently change the ids of every other chunk).
    """
    chunks = [p for p in parts if len(p)] or parts[:1]
    parts.clear()
    if len(chunks) == 1:
        return chunks[0]
    for column in ("user", "item"):
        if len({pd.api.types.is_integer_dtype(p[column].dtype) for p in chunks}) > 1:
            raise ValueError(f"chunks disagree on the type of the {column} ids; share one IdTypes")
    return pd.concat(chunks, ignore_index=True)


def bytes_with_tabs(path: Path, separator: bytes) -> io.BytesIO:
    """File content with a multi-character ``separator`` replaced by tabs, so
    the fast C parser can read it (MovieLens' ``::``)."""
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    return io.BytesIO(path.read_bytes().replace(separator, b"\t"))
