"""Assign users to user groups (one group = one federated client)."""

from __future__ import annotations

import numpy as np

__all__ = ["partition_users"]


def partition_users(num_users: int, num_partitions: int, seed: int) -> np.ndarray:
    """Split users into ``num_partitions`` near-equal random groups.

    Parameters
    ----------
    num_users : int
        Users are the codes ``0..num_users-1``.
    num_partitions : int
        Number of groups; ``num_partitions == num_users`` gives one user per
        client, the limiting case.
    seed : int
        The same seed gives the same assignment.

    Returns
    -------
    numpy.ndarray
        ``assignment[u]`` is the group of user ``u``; group sizes differ by at
        most one.
    """
    if not 1 <= num_partitions <= num_users:
        raise ValueError(
            f"num-partitions={num_partitions}: must be between 1 and the number of "
            f"users ({num_users})"
        )
    perm = np.random.default_rng([seed, 0x9A57]).permutation(num_users)
    assignment = np.empty(num_users, dtype=np.int64)
    for group, members in enumerate(np.array_split(perm, num_partitions)):
        assignment[members] = group
    return assignment
