"""Ranking metrics over one held-out positive and sampled negatives, and
rating metrics (RMSE, MAE) over held-out ratings.

Everything works on *sums* over users, so that federated values can be combined
exactly (sum of hits over all users / number of users), never as a mean of
per-client means. The rating task sums squared errors, absolute errors and
ratings (:data:`RATING_SUMS`): the server divides each by the same total weight,
and their ratios (:func:`rating_metrics`) are the global RMSE and MAE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "MAE",
    "RATING_SUMS",
    "RMSE",
    "finalize_metrics",
    "finalize_sums",
    "rank_of_positive",
    "ranking_sums",
    "rating_metrics",
    "rating_sums",
]

#: What a rating evaluation sums: squared errors, absolute errors, ratings.
RATING_SUMS = ("sq-error", "abs-error", "ratings")
RMSE, MAE = "rmse", "mae"


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


def rating_sums(predictions: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """Sums of squared and absolute errors and the number of ratings (:data:`RATING_SUMS`).

    Parameters
    ----------
    predictions, ratings : numpy.ndarray
        Predicted and true ratings, aligned.
    """
    error = np.asarray(predictions, dtype=np.float64) - np.asarray(ratings, dtype=np.float64)
    squared, absolute, count = RATING_SUMS
    return {
        squared: float(np.square(error).sum()),
        absolute: float(np.abs(error).sum()),
        count: float(len(error)),
    }


def rating_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """RMSE and MAE from :data:`RATING_SUMS` (or the same sums each divided by one
    total weight, as the server aggregates them); other metrics pass unchanged.

    Parameters
    ----------
    values : Mapping
        One part's metrics: ``sq-error``, ``abs-error`` and ``ratings`` for the
        rating task (then ``{"rmse", "mae"}`` is returned, nan without ratings).
    """
    if not set(RATING_SUMS) <= set(values):
        return dict(values)
    squared, absolute, count = (float(values[key]) for key in RATING_SUMS)
    if not count > 0:
        return {RMSE: math.nan, MAE: math.nan}
    return {RMSE: math.sqrt(squared / count), MAE: absolute / count}


def finalize_metrics(sums: Mapping[str, float], count: float) -> dict[str, float]:
    """:func:`finalize_sums`, then :func:`rating_metrics` (what a results entry holds)."""
    return rating_metrics(finalize_sums(sums, count))
