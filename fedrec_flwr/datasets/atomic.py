"""Reader for RecBole atomic files (``.inter`` with ``name:type`` headers)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ._frame import DataFileError, interactions_from_text, read_tsv_strings

__all__ = ["read_atomic_inter"]

# RecBole's conventional field names -> our column names.
_FIELD_MAP = {
    "user_id": "user",
    "item_id": "item",
    "rating": "rating",
    "timestamp": "timestamp",
}


def read_atomic_inter(
    path: str | Path, *, rating_range: tuple[float, float] | None = None
) -> pd.DataFrame:
    """Read a RecBole ``.inter`` file into a validated interactions frame.

    Parameters
    ----------
    path : str or pathlib.Path
        A tab-separated file whose first line is a ``name:type`` header, e.g.
        ``user_id:token  item_id:token  rating:float  timestamp:float``.
    rating_range : tuple of float, optional (default: None)
        Inclusive rating scale to enforce.

    Returns
    -------
    pandas.DataFrame
        ``user``, ``item``, ``rating`` and (if present) ``timestamp``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    names = []
    for position, field in enumerate(header, start=1):
        name, sep, _type = field.partition(":")
        if not sep:
            raise DataFileError(
                f"{path}:1: header field {position} {field!r} is not of the form "
                "name:type (RecBole atomic files start with e.g. 'user_id:token')"
            )
        names.append(name)
    missing = [f for f in ("user_id", "item_id") if f not in names]
    if missing:
        raise DataFileError(
            f"{path}:1: header lacks {', '.join(missing)}; found {', '.join(names)}"
        )
    raw = read_tsv_strings(path, names, skiprows=1)
    columns = {_FIELD_MAP[n]: raw[n] for n in names if n in _FIELD_MAP}
    return interactions_from_text(columns, path=path, first_line=2, rating_range=rating_range)
