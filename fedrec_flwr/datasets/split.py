"""The split: temporal leave-one-out with validation (the NCF protocol)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SPLITS", "TIE_RULE", "LeaveOneOut", "temporal_leave_one_out"]

# One protocol: the client evaluates one held-out item per user.
SPLITS = ("leave-one-out",)

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
