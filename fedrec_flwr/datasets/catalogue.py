"""The shared item catalogue: which raw item id each embedding row belongs to.

Every node must encode items identically, so the catalogue (sorted distinct raw
item ids; line ``i`` holds the id of item code ``i``) is written next to the
prepared data and handed to SuperNodes that hold only their own users' log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._errors import DataFileError
from ._frame import _parse_ids

__all__ = ["read_catalogue", "write_catalogue"]


def write_catalogue(path: str | Path, item_ids: np.ndarray) -> Path:
    """Write one raw item id per line, in code order."""
    path = Path(path)
    text = "".join(f"{i}\n" for i in np.asarray(item_ids).tolist())
    path.write_text(text, encoding="utf-8")
    return path


def read_catalogue(path: str | Path) -> np.ndarray:
    """Read a catalogue written by :func:`write_catalogue`.

    Returns
    -------
    numpy.ndarray
        Raw item ids in code order (int64 when every id is an integer within
        int64, else text).

    Raises
    ------
    DataFileError
        If the file is missing, empty, has a blank line, or is not sorted and
        distinct (then it was not written by this package).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(
            f"item-catalogue {path}: file not found; copy the catalogue.txt written with "
            "the prepared data (or `fedrec data catalogue`) to this node"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise DataFileError(
            f"{path}: the item catalogue is empty; copy the catalogue.txt written with the "
            "prepared data (or `fedrec data catalogue`)"
        )
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        raise DataFileError(
            f"{path}:{blank[0]}: blank line in the item catalogue; copy the catalogue.txt "
            "written with the prepared data (or `fedrec data catalogue`)"
        )
    ids = _parse_ids(pd.Series([line.strip() for line in lines], dtype=object))
    # Integers only when every id is one within int64 (a larger one would wrap
    # around); otherwise the ids are text, exactly as written.
    values = ids.values if ids.is_int.all() else ids.text()
    index = pd.Index(values)
    if not (index.is_unique and index.is_monotonic_increasing):
        raise DataFileError(
            f"{path}: item ids must be distinct and sorted ascending (one per line)"
        )
    return values
