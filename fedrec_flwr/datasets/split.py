"""Splits: temporal leave-one-out (the NCF protocol), random and temporal ratio."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SPLITS",
    "TIE_RULE",
    "LeaveOneOut",
    "RatioSplit",
    "random_ratio_split",
    "temporal_leave_one_out",
    "temporal_ratio_split",
]

SPLITS = ("leave-one-out", "temporal-ratio", "random-ratio")

TIE_RULE = (
    "per user, interactions are ordered by timestamp; among equal timestamps the "
    "row that comes first in the file counts as the later one (pandas "
    "rank(method='first', ascending=False), as in the NCF/PFedRec reference code); "
    "the latest interaction is the test item, the second latest the validation item"
)


@dataclass(frozen=True)
class LeaveOneOut:
    """Row positions of each part of the split.

    Attributes
    ----------
    train_rows : numpy.ndarray
        Positions (into the input arrays) of training interactions, grouped by
        user in ascending user order.
    val_rows, test_rows : numpy.ndarray
        One position per user, indexed by user code.
    """

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray


def temporal_leave_one_out(users: np.ndarray, timestamps: np.ndarray) -> LeaveOneOut:
    """Hold out each user's latest and second-latest interaction.

    Parameters
    ----------
    users : numpy.ndarray
        Integer user codes ``0..n_users-1``, one per interaction, in file order.
    timestamps : numpy.ndarray
        Timestamps aligned with ``users``. Ties are broken by :data:`TIE_RULE`.

    Returns
    -------
    LeaveOneOut

    Raises
    ------
    ValueError
        If a user has fewer than three interactions (one each for train,
        validation and test are needed).
    """
    users = np.asarray(users, dtype=np.int64)
    n = len(users)
    file_order = np.arange(n)
    # lexsort's last key is primary: by user, then time, then *reverse* file order,
    # so the first of a tied group sorts last and counts as the latest.
    order = np.lexsort((-file_order, np.asarray(timestamps), users))
    sorted_users = users[order]
    counts = np.bincount(sorted_users)
    if counts.size == 0 or counts.min() < 3:
        few = int((counts < 3).sum()) if counts.size else 0
        raise ValueError(
            f"{few} users have fewer than 3 interactions; leave-one-out needs one each "
            "for training, validation and test. Filter them out first (k-core >= 3)"
        )
    ends = np.cumsum(counts)
    test_pos, val_pos = ends - 1, ends - 2
    train_mask = np.ones(n, dtype=bool)
    train_mask[test_pos] = False
    train_mask[val_pos] = False
    return LeaveOneOut(
        train_rows=order[train_mask], val_rows=order[val_pos], test_rows=order[test_pos]
    )


@dataclass(frozen=True)
class RatioSplit:
    """Row positions of a per-user ratio split.

    Attributes
    ----------
    train_rows, val_rows, test_rows : numpy.ndarray
        Positions into the input arrays, each sorted ascending.
    """

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray


def _ratio_split(
    users: np.ndarray, order: np.ndarray, ratios: tuple[float, float, float]
) -> RatioSplit:
    """``order`` lists rows grouped by user, each user's held-out-first rows first."""
    if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
        raise ValueError(
            f"ratios={ratios}: need three non-negative fractions (train, val, test) summing to 1"
        )
    sorted_users = users[order]
    counts = np.bincount(sorted_users)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - starts[sorted_users]  # 0 = first to hold out
    n_test = np.floor(counts * ratios[2]).astype(np.int64)
    n_val = np.floor(counts * ratios[1]).astype(np.int64)
    is_test = rank < n_test[sorted_users]
    is_val = ~is_test & (rank < (n_test + n_val)[sorted_users])
    return RatioSplit(
        train_rows=np.sort(order[~is_test & ~is_val]),
        val_rows=np.sort(order[is_val]),
        test_rows=np.sort(order[is_test]),
    )


def temporal_ratio_split(
    users: np.ndarray,
    timestamps: np.ndarray,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> RatioSplit:
    """Per user, the latest ``floor(n * test)`` interactions are test, the next
    latest ``floor(n * val)`` validation, the rest training (ties as
    :data:`TIE_RULE`).

    Parameters
    ----------
    users : numpy.ndarray
        Integer user codes, one per interaction, in file order.
    timestamps : numpy.ndarray
        Aligned timestamps.
    ratios : tuple of float (default: (0.8, 0.1, 0.1))
        Train, validation and test fractions.
    """
    users = np.asarray(users, dtype=np.int64)
    file_order = np.arange(len(users))
    # By user, then latest first; among ties the first row in the file first.
    order = np.lexsort((file_order, -np.asarray(timestamps, dtype=np.float64), users))
    return _ratio_split(users, order, ratios)


def random_ratio_split(
    users: np.ndarray,
    seed: int,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> RatioSplit:
    """Per user, a seeded random ``floor(n * test)`` interactions are test and
    ``floor(n * val)`` validation; the rest training.

    Parameters
    ----------
    users : numpy.ndarray
        Integer user codes, one per interaction.
    seed : int
        Same seed, same split.
    ratios : tuple of float (default: (0.8, 0.1, 0.1))
        Train, validation and test fractions.
    """
    users = np.asarray(users, dtype=np.int64)
    keys = np.random.default_rng([seed, 0x5B17]).random(len(users))
    order = np.lexsort((keys, users))
    return _ratio_split(users, order, ratios)
