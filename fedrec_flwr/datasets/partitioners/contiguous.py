"""Contiguous ranges of user ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["RangePartitioner"]


class RangePartitioner(Partitioner):
    """Cut users, sorted by raw id, into K contiguous near-equal ranges.

    Models sites that own id blocks (e.g. ids issued per region).

    Parameters
    ----------
    num_partitions : int
        K.
    seed : int (default: 0)
        Unused (the assignment involves no randomness).
    """

    name = "range"

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        k = self._k(data)
        assignment = np.empty(data.num_users, dtype=np.int64)
        labels = []
        for p, members in enumerate(np.array_split(np.arange(data.num_users), k)):
            assignment[members] = p
            labels.append(f"{data.user_ids[members[0]]}..{data.user_ids[members[-1]]}")
        return assignment, labels
