"""The splits: temporal leave-one-out with validation (the NCF protocol, both
tasks) and, for rating prediction, a seeded random hold-out and Surprise's
K-fold cross-validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KFOLD_RULE",
    "KFOLD_SPLITS",
    "RATING_SPLITS",
    "SPLITS",
    "TIE_RULE",
    "LeaveOneOut",
    "kfold_test_rows",
    "rating_split",
    "temporal_leave_one_out",
]

# The ranking task evaluates one held-out item per user: leave-one-out only.
# The rating task also holds out a random share of the ratings (``random``) or
# one fold of Surprise's 5-fold cross-validation (``kfold``).
SPLITS = ("leave-one-out", "random", "kfold")
RATING_SPLITS = SPLITS[1:]
KFOLD_SPLITS = 5
#: Surprise's ``KFold(n_splits=5, random_state=0)`` fold rule, over the ratings in file order.
KFOLD_RULE = (
    "the ratings' file positions 0..n-1 shuffled by numpy.random.RandomState(0).shuffle; "
    "fold f is the f-th of 5 consecutive runs of that order, the first n % 5 runs one "
    "longer (Surprise's KFold(n_splits=5, random_state=0), whatever the run seed)"
)
# Separates the rating split's draws from the evaluation negatives' and the partitions'.
_RATING_SPLIT = 0x5A17

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
        One position per user, indexed by user code (the rating task's
        ``random`` and ``kfold`` splits, :func:`rating_split`: any number per
        user, grouped by user).
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


def kfold_test_rows(n: int, fold: int, n_splits: int = KFOLD_SPLITS) -> np.ndarray:
    """Positions of fold ``fold``'s test ratings, by :data:`KFOLD_RULE`.

    Parameters
    ----------
    n : int
        Number of ratings (in file order).
    fold : int
        Which fold, ``0 <= fold < n_splits``.
    n_splits : int (default: 5)
        Number of folds.

    Returns
    -------
    numpy.ndarray
        The fold's positions, in the shuffled order.
    """
    if not 0 <= fold < n_splits:
        raise ValueError(f"fold={fold}: must be in [0, {n_splits})")
    if n < n_splits:
        raise ValueError(f"{n} ratings cannot make {n_splits} folds")
    order = np.arange(n)
    np.random.RandomState(0).shuffle(order)
    sizes = np.full(n_splits, n // n_splits)
    sizes[: n % n_splits] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    return order[bounds[fold] : bounds[fold + 1]]


def _by_user(rows: np.ndarray, users: np.ndarray) -> np.ndarray:
    """``rows`` grouped by user code, in file order within a user."""
    rows = np.sort(rows)
    return rows[np.argsort(users[rows], kind="stable")]


def _carve(rows: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask over ``rows`` choosing ``ceil(fraction * len(rows))`` of them."""
    chosen = np.zeros(len(rows), dtype=bool)
    chosen[rng.permutation(len(rows))[: math.ceil(fraction * len(rows))]] = True
    return chosen


def rating_split(
    users: np.ndarray,
    timestamps: np.ndarray | None,
    split: str,
    *,
    seed: int,
    fold: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> LeaveOneOut:
    """Training, validation and test ratings of the rating task.

    Parameters
    ----------
    users : numpy.ndarray
        Integer user codes, one per rating, in file order.
    timestamps : numpy.ndarray or None
        Aligned timestamps (``leave-one-out`` only; ties by :data:`TIE_RULE`).
    split : str
        ``leave-one-out``: each user's latest rating is its test rating, the
        second latest its validation rating. ``random``: ``ceil(test_fraction *
        n)`` ratings drawn with ``seed`` are the test part. ``kfold``: fold
        ``fold`` of :data:`KFOLD_RULE` is. For both, ``ceil(val_fraction * m)``
        of the ``m`` remaining ratings, drawn with ``seed``, are the validation
        part and the rest the training part.
    seed : int
        Seeds the random draws (not the K-fold shuffle, which is Surprise's).
    fold : int (default: 0)
        ``kfold``'s test fold.
    val_fraction, test_fraction : float (default: 0.1, 0.2)
        Shares, in ``(0, 1)``.

    Returns
    -------
    LeaveOneOut
        Row positions of each part (a partition of ``0..n-1``). Unlike the
        ranking split, ``random`` and ``kfold`` give a user any number of
        validation and test ratings (zero included); each part's rows are
        grouped by user, in file order within a user (leave-one-out keeps
        :func:`temporal_leave_one_out`'s order).
    """
    users = np.asarray(users, dtype=np.int64)
    if split == "leave-one-out":
        if timestamps is None:
            raise ValueError("split='leave-one-out' needs a timestamp column")
        return temporal_leave_one_out(users, timestamps)
    n = len(users)
    rng = np.random.default_rng([seed, _RATING_SPLIT, fold if split == "kfold" else 0])
    if split == "random":
        test = np.zeros(n, dtype=bool)
        test[rng.permutation(n)[: math.ceil(test_fraction * n)]] = True
    elif split == "kfold":
        test = np.zeros(n, dtype=bool)
        test[kfold_test_rows(n, fold)] = True
    else:
        raise ValueError(f"split={split!r}: unknown; accepted: {', '.join(SPLITS)}")
    rest = np.flatnonzero(~test)
    val = _carve(rest, val_fraction, rng)
    return LeaveOneOut(
        train_rows=_by_user(rest[~val], users),
        val_rows=_by_user(rest[val], users),
        test_rows=_by_user(np.flatnonzero(test), users),
    )
