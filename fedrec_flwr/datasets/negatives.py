"""Negative sampling for implicit feedback, vectorised and seeded.

Which interactions a sampler excludes is the caller's choice and decides whether
evaluation is honest: training negatives must exclude only the user's *training*
interactions, so held-out validation and test items stay eligible. Excluding the
held-out items too leaks them (a model learns that "never drawn as a negative"
means "the held-out positive").
"""

from __future__ import annotations

import numpy as np

__all__ = ["InteractionSet", "sample_eval_negatives", "sample_train_negatives", "sorted_unique"]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of a 1-D array, by sorting.

    Same result as ``np.unique``, which took 40 s on 20M int64 keys with
    NumPy 2.4 here (2 busy cores) where sorting took 1.4 s.
    """
    ordered = np.sort(np.asarray(values).reshape(-1))
    if ordered.size == 0:
        return ordered
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


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
        self.keys_ = sorted_unique(keys)
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
    method: str = "auto",
) -> np.ndarray:
    """Draw ``num`` distinct evaluation negatives per user, without replacement.

    Each user's negatives are uniform among the items outside ``exclude`` (for
    evaluation: everything the user ever interacted with).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    num_users : int
        Users are codes ``0..num_users-1``.
    exclude : InteractionSet
        Items each user must not get.
    num : int
        Negatives per user.
    chunk_users : int (default: 2048)
        Users drawn at once (bounds memory).
    method : str (default: "auto")
        ``dense``: random keys over the whole catalogue per user (cost
        users x items); ``sparse``: uniform draws with rejection of excluded and
        repeated items (cost about users x num), for large catalogues. Both give
        uniform samples without replacement, but different ones for a seed.
        ``auto`` picks ``dense`` up to 2**26 user-item cells (ML-100K and ML-1M
        keep their published negatives) and ``sparse`` above.

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
    if method == "auto":
        method = "dense" if num_users * n_items <= 2**26 else "sparse"
    if method == "sparse":
        return _sparse_eval_negatives(rng, num_users, exclude, num, max(chunk_users, 8192))
    if method != "dense":
        raise ValueError(f"method={method!r}: accepted: auto, dense, sparse")
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


def _sparse_eval_negatives(
    rng: np.random.Generator, num_users: int, exclude: InteractionSet, num: int, chunk: int
) -> np.ndarray:
    """Per user, the first ``num`` distinct non-excluded items of a stream of
    uniform draws: a uniform sample without replacement from the allowed items."""
    n_items = exclude.num_items
    out = np.empty((num_users, num), dtype=np.int64)
    counts = np.zeros(num_users, dtype=np.int64)
    counts[: len(exclude.per_user_)] = exclude.per_user_[:num_users]
    for start in range(0, num_users, chunk):
        todo = np.arange(start, min(start + chunk, num_users))
        while todo.size:
            allowed = n_items - counts[todo].max()
            # Enough draws that a shortfall is rare; short rows are redrawn.
            width = int(np.ceil((num + 8) * n_items / allowed * 1.3))
            draws = rng.integers(0, n_items, size=(todo.size, width))
            rows = np.repeat(todo, width)
            ok = ~exclude.contains(rows, draws.reshape(-1))
            # First occurrence of each item in its row, in draw order.
            keys = rows * np.int64(n_items) + draws.reshape(-1)
            first = np.zeros(keys.size, dtype=bool)
            first[np.unique(keys, return_index=True)[1]] = True
            good = (ok & first).reshape(todo.size, width)
            rank = np.cumsum(good, axis=1)
            done = rank[:, -1] >= num
            take = good & (rank <= num)
            out[todo[done]] = draws[done][take[done]].reshape(-1, num)
            todo = todo[~done]
    return out
