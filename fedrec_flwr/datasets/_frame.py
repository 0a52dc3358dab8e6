"""Turn raw text columns into a validated interactions frame.

Every reader hands its columns over as strings together with the file and the
line number of the first data row, so an error can name ``file:line``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["INTERACTION_COLUMNS", "DataFileError", "interactions_from_text", "read_tsv_strings"]

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")


class DataFileError(ValueError):
    """A data file is missing, malformed or fails its checksum."""


def read_tsv_strings(path: Path, names: list[str], *, skiprows: int = 0) -> pd.DataFrame:
    """Read a tab-separated file as strings (empty fields become NaN).

    Raises
    ------
    DataFileError
        If the file is missing, or a row has more fields than ``names``
        (pandas names the line).
    """
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    try:
        return pd.read_csv(
            path,
            sep="\t",
            skiprows=skiprows,
            header=None,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_NONE,
            engine="c",
        )
    except pd.errors.ParserError as exc:
        raise DataFileError(f"{path}: malformed row: {exc}") from exc


def _bad_line(mask: np.ndarray, first_line: int) -> int:
    return int(np.flatnonzero(mask)[0]) + first_line


def _ids(raw: pd.Series, *, path: Path, first_line: int, column: str) -> pd.Series:
    missing = raw.isna().to_numpy() | (raw.str.strip() == "").to_numpy()
    if missing.any():
        line = _bad_line(missing, first_line)
        raise DataFileError(
            f"{path}:{line}: missing {column} id ({int(missing.sum())} rows in all); "
            "every row needs a user and an item"
        )
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all() and (numeric == np.floor(numeric)).all():
        # Integer ids stay integers so that u.data and RecBole files of the same
        # data encode identically (string order would put "10" before "9").
        return numeric.astype(np.int64)
    return raw.str.strip()


def _numbers(raw: pd.Series, *, path: Path, first_line: int, column: str) -> pd.Series:
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        line = _bad_line(bad, first_line)
        first = raw.iloc[int(np.flatnonzero(bad)[0])]
        shown = "is missing" if pd.isna(first) else f"{first!r} is not a finite number"
        raise DataFileError(f"{path}:{line}: {column} {shown} ({int(bad.sum())} such rows in all)")
    return values


def interactions_from_text(
    columns: dict[str, pd.Series],
    *,
    path: Path,
    first_line: int,
    rating_range: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Validate string columns and return a typed interactions frame.

    Parameters
    ----------
    columns : dict of str to pandas.Series
        ``user`` and ``item`` are required; ``rating`` and ``timestamp`` are
        optional (a missing rating becomes 1.0, a missing timestamp is an error
        later, at the temporal split, not here).
    path : pathlib.Path
        File the columns came from, named in every error.
    first_line : int
        1-based line number of the first data row (2 when there is a header).
    rating_range : tuple of float, optional (default: None)
        Inclusive scale of valid ratings, e.g. ``(1, 5)`` for MovieLens.

    Returns
    -------
    pandas.DataFrame
        Columns ``user``, ``item``, ``rating`` (float64) and, when given,
        ``timestamp`` (float64), in file order with a fresh RangeIndex.

    Raises
    ------
    DataFileError
        Naming ``file:line`` of the first bad row and how many rows are bad.
    """
    n_rows = len(columns["user"])
    if n_rows == 0:
        raise DataFileError(f"{path}: no interactions found (the file has no data rows)")
    frame = pd.DataFrame(
        {
            "user": _ids(columns["user"], path=path, first_line=first_line, column="user"),
            "item": _ids(columns["item"], path=path, first_line=first_line, column="item"),
        }
    )
    if "rating" in columns:
        frame["rating"] = _numbers(
            columns["rating"], path=path, first_line=first_line, column="rating"
        )
        if rating_range is not None:
            low, high = rating_range
            ratings = frame["rating"].to_numpy()
            out = (ratings < low) | (ratings > high)
            if out.any():
                line = _bad_line(out, first_line)
                raise DataFileError(
                    f"{path}:{line}: rating {ratings[out][0]:g} is outside the scale "
                    f"[{low:g}, {high:g}] ({int(out.sum())} such rows in all)"
                )
    else:
        frame["rating"] = 1.0
    if "timestamp" in columns:
        frame["timestamp"] = _numbers(
            columns["timestamp"], path=path, first_line=first_line, column="timestamp"
        )
    return frame
