"""One user per partition: the cross-device limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["NaturalPartitioner"]


class NaturalPartitioner(Partitioner):
    """Every user is its own partition, numbered in user-code (sorted raw id) order.

    Parameters
    ----------
    num_partitions : int, optional (default: None)
        If given, must equal the number of users (a guard against running
        with the wrong number of SuperNodes).
    seed : int (default: 0)
        Unused (the assignment involves no randomness).
    """

    name = "natural"

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        if self.num_partitions is not None and self.num_partitions != data.num_users:
            raise ValueError(
                f"partitioner=natural makes one partition per user ({data.num_users}), but "
                f"num-partitions={self.num_partitions}; run with {data.num_users} SuperNodes"
            )
        return np.arange(data.num_users), [str(u) for u in data.user_ids]
