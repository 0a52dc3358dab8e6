"""Near-equal random user groups (the default, as in the core protocol)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..partition import partition_users
from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["RandomPartitioner"]


class RandomPartitioner(Partitioner):
    """Shuffle users with the seed and cut them into near-equal groups.

    Identical to :func:`~fedrec_flwr.datasets.partition_users` (group sizes
    differ by at most one).

    Parameters
    ----------
    num_partitions : int
        Number of groups.
    seed : int (default: 0)
        Same seed, same groups.
    """

    name = "random"

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        k = self._k(data)
        return partition_users(data.num_users, k, self.seed), [f"group-{p}" for p in range(k)]
