"""Side features as hashed codes, encoded on the node that holds them.

A hybrid model (:class:`~fedrec_flwr.models.Hybrid`) represents a user or an
item as the sum of its id embedding and the embeddings of its feature values.
The feature embedding tables are shared, so every node must map a value
(``occupation=writer``) to the same row without agreeing on a vocabulary
first, and without telling anyone which values it holds. scikit-learn's
:class:`~sklearn.feature_extraction.FeatureHasher` does exactly that: a
fixed, seedless hash (MurmurHash3) of the ``column=value`` token into
``buckets`` rows. Distinct values may collide; :func:`hash_features` counts
the collisions among the values it saw so a caller can report them.

Values become tokens by a fixed rule, the same on every node:

- ``age``: the MovieLens-1M age groups (under 18, 18-24, 25-34, 35-44,
  45-49, 50-55, 56+), so a node with ML-100K's exact ages agrees with one
  holding ML-1M's groups;
- a column ending in ``year`` (``release_year``): the decade;
- any other column: the value as text, split on ``|`` (``genres`` holds several);
- a missing value: no token (the row has one feature fewer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["AGE_EDGES", "HashedFeatures", "feature_tokens", "hash_features"]

# MovieLens-1M's age groups, by their lower edges.
AGE_EDGES = (18, 25, 35, 45, 50, 56)


@dataclass(frozen=True)
class HashedFeatures:
    """Feature codes of a table's rows.

    Attributes
    ----------
    codes : numpy.ndarray
        ``(rows, width)`` int64 bucket per feature value, ``-1`` padding (rows
        with fewer values than the widest row).
    collisions : int
        Distinct tokens seen here that share a bucket with another one.
    """

    codes: np.ndarray
    collisions: int


def _tokens_of(column: str, value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    text = str(value).strip()
    if not text or text.lower() == "nan":
        return []
    if column == "age" or column.endswith("year"):
        try:
            number = float(text)
        except ValueError:  # already a group label (e.g. "25-34"): keep it as it is
            return [f"{column}={text}"]
        if column == "age":
            return [f"age={int(np.searchsorted(AGE_EDGES, number, side='right'))}"]
        return [f"{column}={int(number) // 10 * 10}s"]
    return [f"{column}={part}" for part in text.split("|") if part]


def feature_tokens(table: pd.DataFrame, columns: Sequence[str]) -> list[list[str]]:
    """The ``column=value`` tokens of every row (see the module docstring).

    Parameters
    ----------
    table : pandas.DataFrame
        Side table, one row per user or item.
    columns : sequence of str
        Which columns; every one must exist.

    Returns
    -------
    list of list of str
        One token list per row, in column order.

    Raises
    ------
    KeyError
        Naming the first missing column.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise KeyError(missing[0])
    values = [table[c].tolist() for c in columns]
    return [
        [
            tok
            for column, col in zip(columns, values, strict=True)
            for tok in _tokens_of(column, col[r])
        ]
        for r in range(len(table))
    ]


def hash_features(table: pd.DataFrame, columns: Sequence[str], buckets: int) -> HashedFeatures:
    """Hash the feature values of every row into ``buckets`` codes.

    Parameters
    ----------
    table : pandas.DataFrame
        Side table, one row per user or item.
    columns : sequence of str
        Feature columns (see :func:`feature_tokens`).
    buckets : int
        Rows of the feature embedding table.

    Returns
    -------
    HashedFeatures
        Padded codes (``-1`` = no feature) and the collision count.
    """
    if buckets < 1:
        raise ValueError(f"buckets={buckets}: must be >= 1")
    tokens = feature_tokens(table, columns)
    width = max((len(t) for t in tokens), default=0)
    codes = np.full((len(tokens), max(width, 1)), -1, dtype=np.int64)
    if not any(tokens):
        return HashedFeatures(codes, 0)
    # Imported here: scikit-learn's import pulls in rich and more, which only a
    # hybrid model on side features needs.
    from sklearn.feature_extraction import FeatureHasher

    hasher = FeatureHasher(n_features=buckets, input_type="string", alternate_sign=False)
    distinct = sorted({tok for row in tokens for tok in row})
    bucket_of = dict(
        zip(distinct, hasher.transform([[tok] for tok in distinct]).indices.tolist(), strict=True)
    )
    for r, row in enumerate(tokens):
        codes[r, : len(row)] = [bucket_of[tok] for tok in row]
    collisions = len(distinct) - len(set(bucket_of.values()))
    return HashedFeatures(codes, collisions)
