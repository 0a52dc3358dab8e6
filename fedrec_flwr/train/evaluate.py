"""Evaluation: each user's held-out item among its sampled negatives (ranking),
or the error on every held-out rating (rating prediction).

The same functions serve a federated client (its user group) and the
centralised baseline (every user), so the two are directly comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..datasets.prepare import ClientData
from ..models.base import Recommender
from ..protocol import FROM_TRAIN_PREFIX, TEST_PART, VAL_PART
from .metrics import RATING_SUMS, rank_of_positive, ranking_sums, rating_sums

__all__ = [
    "EvalResult",
    "evaluate_ranking",
    "evaluate_ratings",
    "evaluate_val_test",
    "rank_logits",
    "rank_val_test",
    "rate_val_test",
]


@dataclass(frozen=True)
class EvalResult:
    """Sums of ranking metrics over ``num_users`` users, plus the mean BCE loss
    over all candidates (1 positive + negatives per user). For the rating task:
    the :data:`~fedrec_flwr.train.metrics.RATING_SUMS` over the held-out ratings
    of ``num_users`` users and their mean squared error (0 without ratings)."""

    num_users: int
    sums: dict[str, float]
    loss: float


@torch.no_grad()
def evaluate_ranking(
    model: nn.Module,
    users: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    ks: Sequence[int],
) -> EvalResult:
    """Rank each user's held-out positive among its negatives.

    Parameters
    ----------
    model : torch.nn.Module
        Scores ``(users, items)`` as logits.
    users : numpy.ndarray
        Model-local user index per evaluated user.
    positives : numpy.ndarray
        Held-out item per user.
    negatives : numpy.ndarray
        ``(num_users, k)`` negatives per user.
    ks : sequence of int
        Cut-offs for HR@K and NDCG@K.
    """
    model.eval()
    candidates = np.concatenate([np.asarray(positives)[:, None], negatives], axis=1)
    n_users, width = candidates.shape
    u = torch.from_numpy(np.repeat(np.asarray(users, dtype=np.int64), width))
    i = torch.from_numpy(candidates.reshape(-1).astype(np.int64))
    return rank_logits(model(u, i).reshape(n_users, width), ks)


def rank_logits(logits: torch.Tensor, ks: Sequence[int]) -> EvalResult:
    """Metric sums and mean BCE of ``(num_users, 1 + negatives)`` logits whose
    column 0 is each user's held-out positive."""
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, labels))
    ranks = rank_of_positive(logits.numpy())
    return EvalResult(num_users=logits.shape[0], sums=ranking_sums(ranks, ks), loss=loss)


def with_full_ranking(
    result: EvalResult,
    scores: np.ndarray,
    targets: np.ndarray,
    ks: Sequence[int],
    *,
    exclude_users: np.ndarray,
    exclude_items: np.ndarray,
) -> EvalResult:
    """``result`` plus the ``full-*`` sums of catalogue ``scores`` computed elsewhere
    (row ``u`` scores every item for user ``u``, e.g. with its own fine-tuned copy).

    See :func:`~fedrec_flwr.serving.scoring.full_ranking_sums_of_scores`.
    """
    from ..serving.scoring import full_ranking_sums_of_scores

    sums = full_ranking_sums_of_scores(
        scores,
        np.arange(len(targets)),
        targets,
        ks,
        exclude_users=exclude_users,
        exclude_items=exclude_items,
    )
    return EvalResult(result.num_users, {**result.sums, **sums}, result.loss)


def rank_val_test(
    model: nn.Module, data: ClientData, ks: Sequence[int], *, full: bool = False
) -> tuple[EvalResult, EvalResult]:
    """Rank every user's validation and test item among its eval negatives.

    With ``full``, each result's sums also hold ``full-hr@K``,
    ``full-recall@K`` and ``full-ndcg@K``: the held-out item ranked over the
    whole catalogue minus the user's training items, with the scoring code of
    the recommendations (:func:`~fedrec_flwr.serving.scoring.full_ranking_sums`).
    A sequence model that scores the test item from training + validation
    items (``test_input="train+val"``) also reports the test item scored from
    the training items only, as ``from-train-hr@K`` and ``from-train-ndcg@K``
    (sampled candidates): both input rules of the field from one run.
    """
    users = np.arange(data.num_users)
    ranked = []
    for target, targets in ((VAL_PART, data.val_items), (TEST_PART, data.test_items)):
        with _history_for(model, target):  # what a sequence model may read
            result = evaluate_ranking(model, users, targets, data.eval_negatives, ks)
        if full:
            from ..serving.scoring import full_ranking_sums

            with _history_for(model, target):
                sums = full_ranking_sums(
                    model,  # type: ignore[arg-type]
                    users,
                    targets,
                    ks,
                    exclude_users=data.train_users,
                    exclude_items=data.train_items,
                )
            result = EvalResult(result.num_users, {**result.sums, **sums}, result.loss)
        if target == TEST_PART and getattr(model, "test_input", None) == "train+val":
            # The other input rule of the field, on the same model: the test item
            # scored from the training items only (the validation item's input).
            with _history_for(model, VAL_PART):
                other = evaluate_ranking(model, users, targets, data.eval_negatives, ks)
            renamed = {f"{FROM_TRAIN_PREFIX}{k}": v for k, v in other.sums.items()}
            result = EvalResult(result.num_users, {**result.sums, **renamed}, result.loss)
        ranked.append(result)
    return ranked[0], ranked[1]


@torch.no_grad()
def evaluate_ratings(
    model: nn.Module,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    *,
    offset: float,
    low: float,
    high: float,
    num_users: int,
) -> EvalResult:
    """Errors of the predicted ratings ``clip(model(u, i) + offset, low, high)``.

    Parameters
    ----------
    model : torch.nn.Module
        Scores ``(users, items)``.
    users, items, ratings : numpy.ndarray
        Held-out ratings (model-local user index, item code, rating).
    offset : float
        Added to every output (the mean training rating).
    low, high : float
        Clipping range of the predictions (the training ratings' range).
    num_users : int
        Users the ratings belong to (the evaluation weight).
    """
    model.eval()
    u = torch.from_numpy(np.asarray(users, dtype=np.int64))
    i = torch.from_numpy(np.asarray(items, dtype=np.int64))
    predicted = (model(u, i) + offset).clamp(low, high).numpy()
    sums = rating_sums(predicted, ratings)
    count = len(predicted)
    loss = sums[RATING_SUMS[0]] / count if count else 0.0
    return EvalResult(num_users=num_users, sums=sums, loss=loss)


def rate_val_test(model: nn.Module, data: ClientData) -> tuple[EvalResult, EvalResult]:
    """Errors on every validation and test rating of ``data`` (the rating task)."""
    ratings = data.ratings
    if ratings is None:
        raise ValueError("rate_val_test needs the rating task's data (task='rating')")
    results = []
    for target in (VAL_PART, TEST_PART):
        users, items, values = ratings.part(target)
        with _history_for(model, target):
            results.append(
                evaluate_ratings(
                    model,
                    users,
                    items,
                    values,
                    offset=ratings.mean,
                    low=ratings.low,
                    high=ratings.high,
                    num_users=data.num_users,
                )
            )
    return results[0], results[1]


def evaluate_val_test(
    model: nn.Module, data: ClientData, ks: Sequence[int], *, full: bool = False
) -> tuple[EvalResult, EvalResult]:
    """The task's evaluation: :func:`rate_val_test` for data with ratings, else
    :func:`rank_val_test` (``ks`` and ``full`` are the ranking's)."""
    if data.ratings is not None:
        return rate_val_test(model, data)
    return rank_val_test(model, data, ks, full=full)


def _history_for(model: nn.Module, target: str) -> AbstractContextManager[None]:
    return model.history_for(target) if isinstance(model, Recommender) else nullcontext()
