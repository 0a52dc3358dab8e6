"""Negative sampling for implicit feedback, vectorised and seeded.

Which interactions a sampler excludes is the caller's choice and decides whether
evaluation is honest: training negatives must exclude only the user's *training*
interactions, so held-out validation and test items stay eligible. Excluding the
held-out items too leaks them (a model learns that "never drawn as a negative"
means "the held-out positive").
"""

from __future__ import annotations

import numpy as np

__all__ = ["InteractionSet", "sample_eval_negatives", "sample_train_negatives"]


class InteractionSet:
    """A set of ``(user, item)`` pairs with vectorised membership tests.

    Parameters
    ----------
    users, items : numpy.ndarray
        Integer codes of the pairs.
    num_items : int
        Size of the item catalogue; pairs are keyed as ``user * num_items + item``.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int) -> None:
        self.num_items = int(num_items)
        keys = np.asarray(users, dtype=np.int64) * self.num_items + np.asarray(
            items, dtype=np.int64
        )
        self.keys_ = np.unique(keys)
        self.per_user_ = np.bincount(self.keys_ // self.num_items)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Return a boolean array: is each ``(user, item)`` pair in the set."""
        keys = np.asarray(users, dtype=np.int64) * self.num_items + np.asarray(
            items, dtype=np.int64
        )
        if len(self.keys_) == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys_, keys), len(self.keys_) - 1)
        return self.keys_[pos] == keys

    def count(self, user: int) -> int:
        """Number of items held for ``user``."""
        return int(self.per_user_[user]) if user < len(self.per_user_) else 0


def sample_train_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    exclude: InteractionSet,
    num: int,
) -> np.ndarray:
    """Draw ``num`` negatives per entry of ``users``, with replacement.

    Items are uniform over the catalogue minus ``exclude``'s items of that user
    (rejection sampling, redrawn until every draw is valid).

    Returns
    -------
    numpy.ndarray
        Shape ``(len(users), num)``, dtype int64.
    """
    users = np.asarray(users, dtype=np.int64)
    full = np.flatnonzero(exclude.per_user_ >= exclude.num_items)
    if np.isin(users, full).any():
        raise ValueError("a user has interacted with every item: no negative exists")
    flat_users = np.repeat(users, num)
    items = rng.integers(0, exclude.num_items, size=flat_users.size)
    bad = np.flatnonzero(exclude.contains(flat_users, items))
    while bad.size:
        items[bad] = rng.integers(0, exclude.num_items, size=bad.size)
        bad = bad[exclude.contains(flat_users[bad], items[bad])]
    return items.reshape(len(users), num)


def sample_eval_negatives(
    rng: np.random.Generator,
    num_users: int,
    exclude: InteractionSet,
    num: int,
    *,
    chunk_users: int = 2048,
) -> np.ndarray:
    """Draw ``num`` distinct evaluation negatives per user, without replacement.

    Each user's negatives are uniform among the items outside ``exclude`` (for
    evaluation: everything the user ever interacted with).

    Returns
    -------
    numpy.ndarray
        Shape ``(num_users, num)``, dtype int64; row ``u`` belongs to user ``u``.
    """
    n_items = exclude.num_items
    too_few = [u for u in range(num_users) if n_items - exclude.count(u) < num]
    if too_few:
        raise ValueError(
            f"{len(too_few)} users have fewer than {num} items they never interacted "
            f"with (e.g. user code {too_few[0]}); lower num-eval-negatives"
        )
    out = np.empty((num_users, num), dtype=np.int64)
    for start in range(0, num_users, chunk_users):
        stop = min(start + chunk_users, num_users)
        # Uniform random keys, interacted items pushed to +inf: the `num` smallest
        # keys are a uniform sample without replacement from the allowed items.
        keys = rng.random((stop - start, n_items))
        sel = (exclude.keys_ >= start * n_items) & (exclude.keys_ < stop * n_items)
        held = exclude.keys_[sel]
        keys[held // n_items - start, held % n_items] = np.inf
        part = np.argpartition(keys, num - 1, axis=1)[:, :num]
        # argpartition's order within the first `num` is unspecified; sort by key
        # so the result depends only on the random draw.
        row_keys = np.take_along_axis(keys, part, axis=1)
        out[start:stop] = np.take_along_axis(part, np.argsort(row_keys, axis=1), axis=1)
    return out
