"""Quantity skew: partition sizes follow a power law."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["PowerLawPartitioner", "power_law_sizes"]


def power_law_sizes(num_users: int, num_partitions: int, exponent: float) -> np.ndarray:
    """Sizes proportional to ``(p + 1) ** -exponent``, each at least 1, summing
    to ``num_users`` (largest-remainder rounding); partition 0 is the largest."""
    if num_partitions > num_users:
        raise ValueError(
            f"num-partitions={num_partitions}: must be between 1 and the number of "
            f"users ({num_users})"
        )
    weights = (np.arange(num_partitions) + 1.0) ** -exponent
    spare = num_users - num_partitions  # one user each first, the rest by weight
    exact = spare * weights / weights.sum()
    sizes = np.floor(exact).astype(np.int64)
    remainder = spare - sizes.sum()
    sizes[np.argsort(-(exact - sizes), kind="stable")[:remainder]] += 1
    return sizes + 1


class PowerLawPartitioner(Partitioner):
    """Shuffle users with the seed and cut groups whose sizes follow a power law.

    Parameters
    ----------
    num_partitions : int
        Number of groups.
    seed : int (default: 0)
        Same seed, same groups.
    exponent : float (default: 1.0)
        Partition ``p`` gets users in proportion to ``(p + 1) ** -exponent``;
        0 gives near-equal groups, larger is more skewed.
    """

    name = "power-law"

    def __init__(
        self, num_partitions: int | None = None, seed: int = 0, exponent: float = 1.0
    ) -> None:
        super().__init__(num_partitions, seed)
        self.exponent = exponent

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        if not self.exponent >= 0:
            raise ValueError(f"power-law-exponent={self.exponent}: must be >= 0")
        k = self._k(data)
        sizes = power_law_sizes(data.num_users, k, self.exponent)
        perm = np.random.default_rng([self.seed, 0x9017]).permutation(data.num_users)
        assignment = np.empty(data.num_users, dtype=np.int64)
        assignment[perm] = np.repeat(np.arange(k), sizes)
        return assignment, [f"power-law-{p}" for p in range(k)]
