"""Property-based fuzzing of the loaders (issue 12).

Small valid files (CSV and TSV logs, RecBole ``.inter``, GroupLens ``u.data``,
MovieLens ``ratings.dat``) are mutated at random: fields changed, deleted or
duplicated, separators swapped, latin-1 bytes, byte-order marks and invalid
UTF-8, numbers at and past the int64 and float limits, ``nan``/``inf``, blank
and duplicate lines, quoted fields, other line ends. A reference reader, written
here row by row from the documented rules, says what each file holds.

Properties, in strict mode: the load succeeds with exactly the reference's rows,
or raises a :class:`DataFileError` naming the file and a line the reference
finds at fault, with a fix. In lenient mode: it succeeds with every drop counted
(kept + dropped = rows read, per kind as the reference counts) and the same
rows, or raises a clear :class:`DataFileError`. Never another exception type,
never a value or id type that differs from the reference.

Fixed budget and deterministic (``derandomize=True``).
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrec_flwr.datasets import (
    DROP_KINDS,
    DataFileError,
    ValidationReport,
    load_movielens,
    read_atomic,
    read_log,
)

EXAMPLES = 300
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What a strict-mode error may offer as the fix.
FIXES = ("validation='lenient'", "save the file", "close the quote", "fix the row")

# --- the formats -------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    filename: str
    sep: str  # as written in the file
    header: str | None
    quoted: bool
    encoding: str
    int_ids: bool  # ids declared integers by the format
    rating_range: tuple[float, float] | None
    load: Callable[[Path, bool], tuple[pd.DataFrame, ValidationReport]]
    chunksize: int | None = None  # rows parsed at a time (None: all at once)


def _log(path: Path, lenient: bool) -> tuple[pd.DataFrame, ValidationReport]:
    data = read_log(path, lenient=lenient)
    return data.interactions, data.report


def _log_in_pairs(path: Path, lenient: bool) -> tuple[pd.DataFrame, ValidationReport]:
    data = read_log(path, lenient=lenient, chunksize=2)
    return data.interactions, data.report


def _atomic(path: Path, lenient: bool) -> tuple[pd.DataFrame, ValidationReport]:
    data = read_atomic(path, lenient=lenient)
    return data.interactions, data.report


def _movielens(name: str) -> Callable[[Path, bool], tuple[pd.DataFrame, ValidationReport]]:
    def load(path: Path, lenient: bool) -> tuple[pd.DataFrame, ValidationReport]:
        data = load_movielens(name, path.parent, lenient=lenient)
        return data.interactions, data.report

    return load


FORMATS = {
    f.name: f
    for f in (
        Format("csv", "events.csv", ",", "user,item,rating,timestamp", True, "utf-8", False,
               None, _log),
        Format("csv-chunks", "events.csv", ",", "user,item,rating,timestamp", True, "utf-8",
               False, None, _log_in_pairs, chunksize=2),
        Format("tsv", "events.tsv", "\t", "user\titem\trating\ttimestamp", False, "utf-8",
               False, None, _log),
        Format("atomic", "toy.inter", "\t",
               "user_id:token\titem_id:token\trating:float\ttimestamp:float", False, "utf-8",
               False, None, _atomic),
        Format("u.data", "u.data", "\t", None, False, "utf-8", True, (1.0, 5.0),
               _movielens("ml-100k")),
        Format("ratings.dat", "ratings.dat", "::", None, False, "latin-1", True, (1.0, 5.0),
               _movielens("ml-1m")),
    )
}  # fmt: skip

# --- the reference reader ------------------------------------------------------------

_END = "\x00end\x00"


def _physical_lines(data: bytes) -> list[bytes]:
    pieces = re.split(rb"\r\n|\r|\n", data)
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return pieces


def _as_int(token: str) -> int | None:
    """The integer an id token denotes, or None (also beyond int64)."""
    body = token[1:] if token[:1] in "+-" else token
    head, dot, tail = body.partition(".")
    if not (head.isascii() and head.isdigit()) or (dot and set(tail) - {"0"}):
        return None
    value = int(token[0] + head if token[:1] in "+-" else head)
    return value if -(2**63) <= value < 2**63 else None


def _as_float(token: str | None) -> float | None:
    """The finite number a rating/timestamp token denotes, or None."""
    if token is None:
        return None
    token = token.strip()
    if not token.isascii() or "_" in token:
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class Reference:
    fault_lines: set[int]  # lines the reference finds at fault
    fatal: int | None  # line of a file-level problem (an error in both modes)
    rows_read: int
    dropped: dict[str, int]
    rows: list[tuple[object, object, float, float]]  # kept, after duplicates


def _records(fmt: Format, text_lines: list[str], first: int) -> list[tuple[int, list[str]]]:
    if not fmt.quoted:
        out = []
        for number, line in enumerate(text_lines, start=first):
            if fmt.sep == "::":
                line = line.replace("::", "\t")  # MovieLens' separator, as tabs
            out.append((number, line.split("\t") if line else []))
        return out
    reader = csv.reader([line + "\n" for line in text_lines] + [_END + "\n"], strict=False)
    out, consumed = [], 0
    for record in reader:
        start = first + consumed
        spans, consumed = reader.line_num - consumed, reader.line_num
        if spans > 1 and any(_END in f for f in record):
            raise _UnterminatedError(start)
        if record == [_END]:
            break
        out.append((start, record))
    return out


class _UnterminatedError(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def reference(fmt: Format, data: bytes) -> Reference:
    dropped = dict.fromkeys(DROP_KINDS, 0)
    text: list[str] = []
    fatal = None
    for number, raw in enumerate(_physical_lines(data), start=1):
        try:
            line = raw.decode(fmt.encoding)
        except UnicodeDecodeError:
            fatal = number  # the rows before it may still be at fault too
            break
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]
        text.append(line)
    first = 1
    if fmt.header is not None:
        assert text and text[0] == fmt.header, "mutations leave the header alone"
        text, first = text[1:], 2
    try:
        records = _records(fmt, text, first)
    except _UnterminatedError as exc:
        if fatal is None:
            fatal = exc.line
        records = _records(fmt, text[: exc.line - first], first)  # the rows before it
    faults: set[int] = set() if fatal is None else {fatal}

    def fault(kind: str, line: int) -> None:
        dropped[kind] += 1
        faults.add(line)

    shaped = []
    chunk_of = []  # which chunk of `chunksize` well-formed records each row is in
    well_formed = 0
    for line, record in records:
        if record and len(record) != 4:
            fault("malformed-row", line)
            continue
        well_formed += 1
        fields = [f if f else None for f in record] if record else [None] * 4
        user, item = ((f or "").strip() for f in fields[:2])
        if not user or not item:
            fault("missing-id", line)
            continue
        shaped.append((line, user, item, fields[2], fields[3]))
        chunk_of.append((well_formed - 1) // (fmt.chunksize or len(records) or 1))
    # One type per id column: integers if declared so or if most ids of the
    # first chunk with ids are; then for the whole file.
    first_chunk = [row for row, c in zip(shaped, chunk_of, strict=True) if c == min(chunk_of)]
    kinds = {}
    for position in (1, 2):
        tokens = [row[position] for row in first_chunk]
        ints = sum(_as_int(t) is not None for t in tokens)
        kinds[position] = "int" if fmt.int_ids or 2 * ints > len(tokens) else "str"
    kept = []
    for line, user, item, rating_text, stamp_text in shaped:
        ids = []
        for position, token in ((1, user), (2, item)):
            ids.append(_as_int(token) if kinds[position] == "int" else token)
        if None in ids:
            fault("bad-id", line)
            continue
        rating = _as_float(rating_text)
        if rating is None:
            fault("bad-rating", line)
            continue
        if fmt.rating_range and not fmt.rating_range[0] <= rating <= fmt.rating_range[1]:
            fault("rating-out-of-scale", line)
            continue
        stamp = _as_float(stamp_text)
        if stamp is None:
            fault("bad-timestamp", line)
            continue
        kept.append((ids[0], ids[1], rating, stamp))
    # keep-latest: the pair's largest timestamp; on a tie the later row.
    best: dict[tuple[object, object], int] = {}
    for position, (u, i, _, t) in enumerate(kept):
        if (u, i) not in best or t >= kept[best[(u, i)]][3]:
            best[(u, i)] = position
    winners = set(best.values())
    dropped["duplicate"] = len(kept) - len(winners)
    rows = [row for position, row in enumerate(kept) if position in winners]
    return Reference(faults, fatal, len(records), dropped, rows)


# --- valid files and their mutations ---------------------------------------------------

TOKENS = [
    "", " ", "two", "x", "u1", "0", "-1", "007", "+5", " 5 ", "1.0", "1.5", "5.", ".5",
    "1e3", "0x10", "nan", "NaN", "inf", "-inf", "1e309", "-1e309", "1e-400",
    "1.7976931348623157e308", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551616",
    "99999999999999999999999", "é", "\u0663", "\u00a0", '"', '"5"', "a b", ",", "\t", "::",
    "\u3000", "\x0b5", "5\x1c", "1 2", "--1", "+-1", "1e", "0.0", "-0.0", "00", "1" * 20,
    '" 1"', '""',
]  # fmt: skip


@st.composite
def valid_rows(draw: st.DrawFn, fmt: Format) -> list[list[str]]:
    n = draw(st.integers(2, 6))
    text_ids = not fmt.int_ids and draw(st.booleans())
    rows = []
    for _ in range(n):
        user = draw(st.integers(1, 4))
        item = draw(st.integers(1, 5))
        rows.append(
            [
                f"u{user}" if text_ids else str(user),
                f"i{item}" if text_ids else str(item),
                draw(st.sampled_from(["1", "2", "3", "4", "5", "3.5", "4.0"])),
                str(draw(st.integers(0, 2_000_000_000))),
            ]
        )
    return rows


@st.composite
def mutated_file(draw: st.DrawFn, fmt: Format) -> bytes:
    lines: list[list[str] | str] = list(draw(valid_rows(fmt)))
    for _ in range(draw(st.integers(0, 4))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        row = lines[at]
        op = draw(
            st.sampled_from(
                ["set", "set", "set", "delete", "extra", "dup", "drop", "blank", "sep", "quote"]
            )
        )
        if op == "dup":
            lines.insert(at, row)
        elif op == "drop":
            del lines[at]
        elif op == "blank":
            lines.insert(at, draw(st.sampled_from(["", " ", "\t"])))
        elif isinstance(row, str):
            continue
        elif op == "sep":
            other = draw(st.sampled_from([",", "\t", ";", "|", "::", " "]))
            lines[at] = other.join(row)
        else:
            row = list(row)
            field = draw(st.integers(0, len(row) - 1))
            if op == "set":
                row[field] = draw(st.sampled_from(TOKENS))
            elif op == "delete":
                del row[field]
            elif op == "extra":
                row.insert(field, draw(st.sampled_from(TOKENS[:8])))
            else:  # quote: closed, holding the separator, or never closed
                inner = row[field] + draw(st.sampled_from(["", ",", "\t", '""', "\n", "\r\n"]))
                row[field] = draw(st.sampled_from([f'"{inner}"', f'"{inner}', f'{inner}"']))
            lines[at] = row
    end = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    body = [line if isinstance(line, str) else fmt.sep.join(line) for line in lines]
    text = end.join(([fmt.header] if fmt.header else []) + body)
    if draw(st.booleans()):
        text += end
    data = text.encode(fmt.encoding, errors="replace")
    byte_op = draw(st.sampled_from(["none"] * 5 + ["bom", "latin1", "invalid"]))
    if byte_op == "bom":
        data = b"\xef\xbb\xbf" + data
    elif byte_op in ("latin1", "invalid") and body:
        # Into a data line only: the header is the loaders' to reject, not ours.
        start = len(((fmt.header or "") + end).encode()) if fmt.header else 0
        where = draw(st.integers(start, len(data)))
        data = data[:where] + (b"\xe9" if byte_op == "latin1" else b"\xff\xc3") + data[where:]
    return data


# --- the properties ----------------------------------------------------------------


def _typed(values: pd.Series) -> list[object]:
    if pd.api.types.is_integer_dtype(values.dtype):
        return [int(v) for v in values]
    return [v if isinstance(v, str) else ("not text", v) for v in values]


def _check(fmt: Format, data: bytes) -> None:
    ref = reference(fmt, data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / fmt.filename
        path.write_bytes(data)
        for lenient in (False, True):
            try:
                frame, report = fmt.load(path, lenient)
            except DataFileError as exc:
                message = str(exc)
                assert "\n" not in message, message
                line = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
                if line is None:  # no row at fault: the file has nothing valid to load
                    assert message.startswith(str(path)), message
                    assert "no interactions found" in message or "no valid" in message, message
                    assert not ref.rows and ref.fatal is None, (message, ref)
                    continue
                at = int(line.group(1))
                assert at == ref.fatal if lenient else at in ref.fault_lines, (message, ref)
                assert any(fix in message for fix in FIXES), message
                continue
            assert ref.fatal is None, f"loaded a file with a file-level fault at {ref.fatal}"
            if not lenient:
                assert not ref.fault_lines, f"strict mode accepted bad lines {ref.fault_lines}"
            assert report.rows_read == ref.rows_read
            assert report.dropped == ref.dropped
            assert report.rows_kept == len(frame) == len(ref.rows)
            assert report.rows_kept + report.total_dropped == report.rows_read
            got = list(
                zip(
                    _typed(frame["user"]),
                    _typed(frame["item"]),
                    frame["rating"].tolist(),
                    frame["timestamp"].tolist(),
                    strict=True,
                )
            )
            assert got == ref.rows


@pytest.mark.parametrize("name", list(FORMATS))
def test_mutated_files_load_exactly_or_fail_clearly(name):
    fmt = FORMATS[name]

    @SETTINGS
    @given(mutated_file(fmt))
    def run(data: bytes) -> None:
        _check(fmt, data)

    run()


def test_reference_reader_agrees_on_the_valid_files():
    """The oracle itself: an unmutated file is all kept, in order."""
    fmt = FORMATS["u.data"]
    data = b"1\t2\t5\t10\n1\t3\t4\t11\n1\t2\t3\t12\n"
    ref = reference(fmt, data)
    assert ref.rows == [(1, 3, 4.0, 11.0), (1, 2, 3.0, 12.0)] and ref.dropped["duplicate"] == 1
    _check(fmt, data)
    assert np.isfinite([r[2] for r in ref.rows]).all()
