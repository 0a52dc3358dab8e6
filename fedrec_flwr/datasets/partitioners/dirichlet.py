"""Non-IID groups: Dirichlet over users' genre preference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Partitioner

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["DirichletPartitioner", "dominant_genre"]


def dominant_genre(data: PreparedData) -> tuple[np.ndarray, list[str]]:
    """Each user's most frequent genre among its training items.

    An item with ``g`` genres adds ``1/g`` to each; an item without genres
    counts as genre ``(none)``; ties go to the genre first in sorted order.

    Returns
    -------
    tuple
        ``(genre code per user, genre names)``.
    """
    if data.item_table is None or "genres" not in data.item_table.columns:
        raise ValueError(
            f"partitioner=dirichlet needs item genres; {data.name} has no items table with a "
            "genres column (MovieLens has one; RecBole .item files with a class/genre field too)"
        )
    genre_lists = [g.split("|") if g else ["(none)"] for g in data.item_table["genres"].fillna("")]
    names = sorted({g for gs in genre_lists for g in gs})
    index = {g: i for i, g in enumerate(names)}
    item_rows = np.repeat(np.arange(len(genre_lists)), [len(gs) for gs in genre_lists])
    genre_cols = np.array([index[g] for gs in genre_lists for g in gs], dtype=np.int64)
    weights = np.repeat([1.0 / len(gs) for gs in genre_lists], [len(gs) for gs in genre_lists])
    item_genre = np.zeros((len(genre_lists), len(names)))
    np.add.at(item_genre, (item_rows, genre_cols), weights)
    profile = np.zeros((data.num_users, len(names)))
    np.add.at(profile, data.train_users, item_genre[data.train_items])
    return profile.argmax(axis=1), names


class DirichletPartitioner(Partitioner):
    """Label-skewed groups: each genre's users are spread over the partitions
    with proportions drawn from ``Dirichlet(alpha)``.

    Users are labelled by their dominant genre (:func:`dominant_genre`). A
    small ``alpha`` puts most of a genre's users in few partitions (strong
    skew, unequal sizes); a large ``alpha`` approaches IID groups. Draws that
    leave a partition with fewer than ``min_partition_size`` users are redrawn.

    Parameters
    ----------
    num_partitions : int
        Number of groups.
    seed : int (default: 0)
        Same seed, same groups.
    alpha : float (default: 0.5)
        Concentration, > 0.
    min_partition_size : int (default: 1)
        Fewest users a partition may get.
    max_attempts : int (default: 100)
        Redraws before giving up with an error.
    """

    name = "dirichlet"

    def __init__(
        self,
        num_partitions: int | None = None,
        seed: int = 0,
        alpha: float = 0.5,
        min_partition_size: int = 1,
        max_attempts: int = 100,
    ) -> None:
        super().__init__(num_partitions, seed)
        self.alpha = alpha
        self.min_partition_size = min_partition_size
        self.max_attempts = max_attempts

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        if not self.alpha > 0:
            raise ValueError(f"dirichlet-alpha={self.alpha}: must be > 0")
        k = self._k(data)
        genre, _ = dominant_genre(data)
        rng = np.random.default_rng([self.seed, 0xD1C1])
        for _ in range(self.max_attempts):
            assignment = np.empty(data.num_users, dtype=np.int64)
            for g in np.unique(genre):
                members = rng.permutation(np.flatnonzero(genre == g))
                shares = rng.dirichlet(np.full(k, self.alpha))
                cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
                for p, part in enumerate(np.split(members, cuts)):
                    assignment[part] = p
            if np.bincount(assignment, minlength=k).min() >= self.min_partition_size:
                return assignment, [f"dirichlet-{p}" for p in range(k)]
        raise ValueError(
            f"partitioner=dirichlet: no draw in {self.max_attempts} gave every one of {k} "
            f"partitions {self.min_partition_size}+ users (alpha={self.alpha}); raise "
            "dirichlet-alpha or use fewer partitions"
        )
