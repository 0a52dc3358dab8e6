"""One partition per value of a user attribute (region, occupation, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["AGE_BUCKETS", "MISSING_LABEL", "AttributePartitioner"]

# MovieLens-1M's age groups (its users.dat stores these lower bounds), also
# applied to ML-100K's exact ages so both datasets bucket the same way.
AGE_BUCKETS = ((0, "under-18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"),
               (50, "50-55"), (56, "56+"))  # fmt: skip
MISSING_LABEL = "(missing)"


class AttributePartitioner(Partitioner):
    """Group users by the value of one column of the users table.

    Partitions are numbered in sorted label order; users without a value form
    one more partition labelled ``(missing)``.

    Parameters
    ----------
    by : str (default: "occupation")
        ``age-bucket`` (MovieLens age groups), ``zip-prefix`` (first
        ``zip_prefix_length`` characters of ``zip``), or any column of the
        users table as is (``gender``, ``occupation``, a custom ``region``).
    num_partitions : int, optional (default: None)
        If given, must equal the number of distinct values.
    seed : int (default: 0)
        Unused (the assignment involves no randomness).
    zip_prefix_length : int (default: 1)
        Characters of the zip code that define a ``zip-prefix`` group.
    """

    name = "attribute"

    def __init__(
        self,
        by: str = "occupation",
        num_partitions: int | None = None,
        seed: int = 0,
        zip_prefix_length: int = 1,
    ) -> None:
        super().__init__(num_partitions, seed)
        self.by = by
        self.zip_prefix_length = zip_prefix_length

    def _values(self, users: pd.DataFrame) -> pd.Series:
        column = {"age-bucket": "age", "zip-prefix": "zip"}.get(self.by, self.by)
        if column not in users.columns:
            raise ValueError(
                f"partition-by={self.by!r}: the users table has no {column!r} column; "
                f"it has {', '.join(c for c in users.columns if c != 'user')}"
            )
        values = users[column]
        if self.by == "age-bucket":
            ages = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            edges = np.array([b for b, _ in AGE_BUCKETS[1:]], dtype=np.float64)
            names = np.array([n for _, n in AGE_BUCKETS], dtype=object)
            out = names[np.searchsorted(edges, np.nan_to_num(ages, nan=0.0), side="right")]
            return pd.Series(np.where(np.isnan(ages), None, out), dtype=object)
        if self.by == "zip-prefix":
            return values.astype(object).map(
                lambda z: str(z).strip()[: self.zip_prefix_length].upper() if pd.notna(z) else None
            )
        return values.astype(object).map(lambda v: str(v).strip() if pd.notna(v) else None)

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        if data.user_table is None:
            raise ValueError(
                f"partitioner=attribute (partition-by={self.by!r}) needs a users table; "
                f"{data.name} has none (MovieLens 100K/1M, RecBole .user files and logs "
                "loaded with user_columns have one)"
            )
        values = self._values(data.user_table).fillna(MISSING_LABEL).to_numpy(dtype=str)
        codes, labels = pd.factorize(values, sort=True)
        labels = [str(v) for v in labels]
        if self.num_partitions is not None and self.num_partitions != len(labels):
            raise ValueError(
                f"partition-by={self.by!r} makes {len(labels)} partitions, but "
                f"num-partitions={self.num_partitions}; run with {len(labels)} SuperNodes"
            )
        return codes, labels
