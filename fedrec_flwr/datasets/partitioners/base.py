"""Common behaviour of every user-group partitioner."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..prepare import PreparedData

__all__ = ["Partitioner"]


class Partitioner:
    """Assign every user of a dataset to exactly one partition (one client).

    Subclasses implement :meth:`_assign`; :meth:`fit` checks the result, so
    every partitioner covers each user exactly once and leaves no partition
    empty.

    Parameters
    ----------
    num_partitions : int, optional (default: None)
        Number of partitions; ``None`` for partitioners whose data decides it
        (natural, attribute).
    seed : int (default: 0)
        Same seed, same assignment.

    Attributes
    ----------
    assignment_ : numpy.ndarray
        ``assignment_[u]`` is the partition of user code ``u`` (int64).
    labels_ : list of str
        A name per partition (e.g. the occupation it holds).
    num_partitions_ : int
        Partitions made.
    """

    name = "base"

    def __init__(self, num_partitions: int | None = None, seed: int = 0) -> None:
        self.num_partitions = num_partitions
        self.seed = seed

    def fit(self, data: PreparedData) -> Partitioner:
        """Partition ``data``'s users. Returns ``self``."""
        if self.num_partitions is not None and self.num_partitions < 1:
            raise ValueError(f"num-partitions={self.num_partitions}: must be >= 1")
        assignment, labels = self._assign(data)
        assignment = np.asarray(assignment, dtype=np.int64)
        if assignment.shape != (data.num_users,):
            raise RuntimeError(
                f"{self.name}: assigned {assignment.shape} users, not {data.num_users}"
            )
        sizes = np.bincount(assignment, minlength=len(labels))
        if len(sizes) != len(labels) or (sizes == 0).any():
            empty = [labels[p] for p in np.flatnonzero(sizes == 0)[:5]]
            raise ValueError(
                f"partitioner={self.name}: {int((sizes == 0).sum())} of {len(labels)} partitions "
                f"got no user (e.g. {', '.join(empty)}); use fewer partitions or another "
                "partitioner"
            )
        self.assignment_ = assignment
        self.labels_ = list(labels)
        self.num_partitions_ = len(labels)
        return self

    def fit_transform(self, data: PreparedData) -> np.ndarray:
        """Fit and return :attr:`assignment_`."""
        return self.fit(data).assignment_

    def _assign(self, data: PreparedData) -> tuple[np.ndarray, list[str]]:
        raise NotImplementedError

    def _k(self, data: PreparedData) -> int:
        if self.num_partitions is None:
            raise ValueError(f"partitioner={self.name}: num_partitions is required")
        if self.num_partitions > data.num_users:
            raise ValueError(
                f"num-partitions={self.num_partitions}: must be between 1 and the number of "
                f"users ({data.num_users})"
            )
        return self.num_partitions

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"
