"""Ranking metrics over one held-out positive and sampled negatives.

Everything works on *sums* over users, so that federated values can be combined
exactly (sum of hits over all users / number of users), never as a mean of
per-client means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["finalize_sums", "rank_of_positive", "ranking_sums"]


def rank_of_positive(scores: np.ndarray) -> np.ndarray:
    """0-based rank of the positive in each row of ``scores``.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(num_users, 1 + num_negatives)``; column 0 is the held-out positive.

    Returns
    -------
    numpy.ndarray
        Number of negatives scoring at least as high as the positive: ties count
        against the positive, so a constant model ranks it last, not first.
    """
    scores = np.asarray(scores)
    return (scores[:, 1:] >= scores[:, :1]).sum(axis=1)


def ranking_sums(ranks: np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    """Sums over users of HR@K and NDCG@K for each K.

    HR@K is 1 when ``rank < K``; NDCG@K is ``1 / log2(rank + 2)`` then, else 0.
    Keys are ``"hr@K"`` and ``"ndcg@K"``.
    """
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.sum())
        out[f"ndcg@{k}"] = float((hit / np.log2(ranks + 2.0)).sum())
    return out


def finalize_sums(sums: Mapping[str, float], count: float) -> dict[str, float]:
    """Divide every sum by the number of users it was summed over."""
    if count <= 0:
        raise ValueError("no users were evaluated")
    return {key: value / count for key, value in sums.items()}
