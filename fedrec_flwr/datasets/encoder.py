"""A scikit-learn style encoder from raw ids to dense codes ``0..n-1``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["IdEncoder"]


class IdEncoder:
    """Map raw ids to codes ``0..n-1`` in sorted raw-id order.

    Codes depend only on the set of ids, not on file order, so every node that
    fits the same item catalogue gives every item the same embedding row.

    Parameters
    ----------
    handle_unknown : str (default: "error")
        What :meth:`transform` does with an id not seen in :meth:`fit`:
        ``error`` raises, ``ignore`` returns code -1.

    Attributes
    ----------
    classes_ : numpy.ndarray
        Sorted distinct raw ids; ``classes_[code]`` is the raw id of ``code``.
    """

    def __init__(self, handle_unknown: str = "error") -> None:
        self.handle_unknown = handle_unknown

    def fit(self, ids: Any) -> IdEncoder:
        """Learn the sorted distinct ids. Returns ``self``."""
        if self.handle_unknown not in ("error", "ignore"):
            raise ValueError(f"handle_unknown={self.handle_unknown!r}: accepted: error, ignore")
        _, uniques = pd.factorize(pd.Series(ids), sort=True)
        self.classes_ = np.asarray(uniques)
        self._index = pd.Index(self.classes_)
        return self

    def fit_transform(self, ids: Any) -> np.ndarray:
        """Fit and return the codes of ``ids`` (int64)."""
        codes, uniques = pd.factorize(pd.Series(ids), sort=True)
        self.fit_from_classes(np.asarray(uniques))
        return codes.astype(np.int64)

    def fit_from_classes(self, classes: Any) -> IdEncoder:
        """Adopt an existing catalogue (already sorted distinct ids). Returns ``self``."""
        classes = np.asarray(classes)
        if len(classes) > 1:
            order = pd.Index(classes)
            if not (order.is_monotonic_increasing and order.is_unique):
                raise ValueError("catalogue ids must be distinct and sorted ascending")
        self.classes_ = classes
        self._index = pd.Index(classes)
        return self

    def transform(self, ids: Any) -> np.ndarray:
        """Return the code of each id (int64); see ``handle_unknown``."""
        if not hasattr(self, "classes_"):
            raise RuntimeError("IdEncoder is not fitted; call fit first")
        codes = self._index.get_indexer(pd.Series(ids)).astype(np.int64)
        unknown = codes < 0
        if unknown.any() and self.handle_unknown == "error":
            first = pd.Series(ids).iloc[int(np.flatnonzero(unknown)[0])]
            raise ValueError(
                f"{int(unknown.sum())} ids are not in the fitted catalogue (e.g. {first!r}); "
                "refit on the shared catalogue or use handle_unknown='ignore' to drop them"
            )
        return codes

    def inverse_transform(self, codes: Any) -> np.ndarray:
        """Return the raw id of each code."""
        return self.classes_[np.asarray(codes, dtype=np.int64)]

    def __len__(self) -> int:
        return len(self.classes_)
