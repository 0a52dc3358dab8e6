"""What every loader returns: one interactions frame plus optional side tables."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .validation import ValidationReport

__all__ = ["LoadedData"]


@dataclass(frozen=True, eq=False)
class LoadedData:
    """A validated interaction log with its side tables.

    Attributes
    ----------
    interactions : pandas.DataFrame
        ``user``, ``item``, ``rating`` (float64) and, when the source has one,
        ``timestamp`` (float64), in file order.
    users : pandas.DataFrame or None
        One row per raw user id (column ``user``) with attribute columns
        (MovieLens: ``age``, ``gender``, ``occupation``, ``zip``), or ``None``.
    items : pandas.DataFrame or None
        One row per raw item id (column ``item``) with ``title`` and ``genres``
        (genre names joined by ``|``) where known, or ``None``.
    report : ValidationReport
        Rows read and dropped per kind (duplicates included).
    name : str
        Dataset name or file, for the record.
    rated : bool (default: True)
        Whether the source has a rating column; without one every ``rating``
        is 1.0, which the rating task refuses.
    """

    interactions: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame | None
    report: ValidationReport
    name: str = ""
    rated: bool = True
