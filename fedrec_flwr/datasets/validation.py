"""Validation bookkeeping and the duplicate-interaction policy.

Strict mode (the default everywhere) turns the first bad row into a
:class:`~fedrec_flwr.datasets.DataFileError` naming ``file:line``. Lenient mode
drops bad rows instead and counts them, per kind, in a :class:`ValidationReport`;
each dropped row is counted under exactly one kind (the first that applies, in
the order of :data:`DROP_KINDS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._errors import DataFileError

__all__ = ["DROP_KINDS", "DUPLICATE_POLICIES", "ValidationReport", "apply_duplicate_policy"]

DROP_KINDS = (
    "malformed-row",
    "missing-id",
    "bad-id",
    "bad-rating",
    "rating-out-of-scale",
    "bad-timestamp",
    "duplicate",
)
DUPLICATE_POLICIES = ("keep-latest", "keep-first", "keep-all", "error")


class ValidationReport:
    """Counts of rows read and dropped while loading one source.

    Parameters
    ----------
    source : str (default: "")
        File or dataset the counts belong to.

    Attributes
    ----------
    rows_read : int
        Data rows seen (malformed ones included).
    dropped : dict of str to int
        Rows dropped per kind of :data:`DROP_KINDS` (all kinds present, zeros
        included, so a report can be compared with ``==``).
    first_line : dict of str to int
        First file line (1-based) at which each kind was seen.
    side_tables : list of ValidationReport
        One report per users/items table read with the interactions (their
        rows are not interactions, so they are counted apart).
    """

    def __init__(self, source: str = "") -> None:
        self.source = source
        self.rows_read = 0
        self.dropped = dict.fromkeys(DROP_KINDS, 0)
        self.first_line: dict[str, int] = {}
        self.side_tables: list[ValidationReport] = []

    def drop(self, kind: str, lines: np.ndarray) -> None:
        """Record that the rows at file ``lines`` were dropped as ``kind``."""
        if kind not in self.dropped:
            raise ValueError(f"unknown drop kind {kind!r}; known: {', '.join(DROP_KINDS)}")
        if len(lines) == 0:
            return
        self.dropped[kind] += len(lines)
        first = int(np.min(lines))
        self.first_line[kind] = min(self.first_line.get(kind, first), first)

    @property
    def total_dropped(self) -> int:
        """Rows dropped, all kinds together."""
        return sum(self.dropped.values())

    @property
    def rows_kept(self) -> int:
        """Rows that survived validation and the duplicate policy."""
        return self.rows_read - self.total_dropped

    def side_table(self, source: str) -> ValidationReport:
        """A new report for a side table read with these interactions."""
        report = ValidationReport(source)
        self.side_tables.append(report)
        return report

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (kebab-case keys) for results files and the CLI.

        ``side-tables`` (one record per users/items table read with these
        interactions) appears only when there is one.
        """
        record: dict[str, Any] = {
            "source": self.source,
            "rows-read": self.rows_read,
            "rows-kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "first-line": dict(self.first_line),
        }
        if self.side_tables:
            record["side-tables"] = [r.to_dict() for r in self.side_tables]
        return record

    def summary(self) -> str:
        """One line: what was read, kept, and dropped per kind."""
        drops = ", ".join(
            f"{n} {kind} (first at line {self.first_line[kind]})"
            for kind, n in self.dropped.items()
            if n
        )
        line = (
            f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}; "
            f"dropped {drops or 'none'}"
        )
        sides = [r.summary() for r in self.side_tables if r.total_dropped]
        return "; ".join([line, *sides])

    def __repr__(self) -> str:
        return f"ValidationReport({self.summary()})"


def apply_duplicate_policy(
    frame: pd.DataFrame,
    policy: str = "keep-latest",
    *,
    report: ValidationReport | None = None,
    source: str = "",
    lines: np.ndarray | None = None,
) -> pd.DataFrame:
    """Resolve repeated ``(user, item)`` pairs.

    Parameters
    ----------
    frame : pandas.DataFrame
        Interactions with ``user``, ``item`` and optionally ``timestamp``, in
        file order.
    policy : str (default: "keep-latest")
        ``keep-latest``: keep the pair's row with the largest timestamp (on a
        tie, or without timestamps, the one later in the file); ``keep-first``:
        keep the first row in the file; ``keep-all``: keep every row;
        ``error``: raise on any duplicate.
    report : ValidationReport, optional (default: None)
        Receives the number of rows removed under ``duplicate``.
    source : str (default: "")
        Named in the error of the ``error`` policy.
    lines : numpy.ndarray, optional (default: None)
        File line of each row, for the report and the error; if ``None``, the
        frame's ``line`` column when it has one, else row position + 1.

    Returns
    -------
    pandas.DataFrame
        The kept rows, still in file order, with a fresh RangeIndex and
        without the ``line`` column.
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(
            f"duplicates={policy!r}: unknown; accepted: {', '.join(DUPLICATE_POLICIES)}"
        )
    if "line" in frame.columns:
        if lines is None:
            lines = frame["line"].to_numpy()
        frame = frame.drop(columns="line")
    if policy == "keep-all" or len(frame) == 0:
        return frame
    user_codes, _ = pd.factorize(frame["user"])
    item_codes, items = pd.factorize(frame["item"])
    key = user_codes.astype(np.int64) * max(len(items), 1) + item_codes
    repeated = pd.Series(key).duplicated(keep=False).to_numpy()
    if not repeated.any():
        return frame
    if lines is None:
        lines = np.arange(1, len(frame) + 1)
    pos = np.flatnonzero(repeated)
    if policy == "error":
        first = pos[pd.Series(key[pos]).duplicated().to_numpy()][0]
        raise DataFileError(
            f"{source}:{lines[first]}: duplicate (user, item) pair "
            f"({frame['user'].iloc[first]}, {frame['item'].iloc[first]}); "
            "remove the repeated row, or choose duplicates='keep-latest', 'keep-first' "
            "or 'keep-all'"
        )
    if policy == "keep-first":
        keep_pos = pos[~pd.Series(key[pos]).duplicated(keep="first").to_numpy()]
    else:
        stamps = (
            frame["timestamp"].to_numpy()[pos]
            if "timestamp" in frame.columns
            else np.zeros(len(pos))
        )
        # Last key of lexsort is primary: by pair, then time, then file position,
        # so each pair's final row is the latest (ties -> later in the file).
        order = pos[np.lexsort((pos, stamps, key[pos]))]
        last = np.r_[key[order][1:] != key[order][:-1], True]
        keep_pos = order[last]
    keep = ~repeated
    keep[keep_pos] = True
    if report is not None:
        report.drop("duplicate", lines[~keep])
    return frame.loc[keep].reset_index(drop=True)
