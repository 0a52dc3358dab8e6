"""Full-catalogue scoring: top-K recommendations and full-ranking metrics.

Both functions score users against the whole catalogue with
:meth:`~fedrec_flwr.models.base.Recommender.score_all`, a chunk of users at a
time so that memory stays bounded (``chunk_users * num_items <= max_cells``),
and skip excluded ``(user, item)`` pairs (typically the items a user has already
seen). Metrics are returned as *sums* over users, like
:mod:`fedrec_flwr.train.metrics`, so a federation can add them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..models.base import Recommender

__all__ = ["full_ranking_sums", "full_ranking_sums_of_scores", "top_k"]

_DEFAULT_MAX_CELLS = 2**24


class _Exclusions:
    """Excluded pairs grouped by user (CSR-like), to mask one chunk of rows at a time."""

    def __init__(
        self, exclude_users: np.ndarray | None, exclude_items: np.ndarray | None, num_items: int
    ) -> None:
        if (exclude_users is None) != (exclude_items is None):
            raise ValueError("exclude_users and exclude_items must be given together")
        users = np.asarray([] if exclude_users is None else exclude_users, dtype=np.int64)
        items = np.asarray([] if exclude_items is None else exclude_items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"exclude_users {users.shape} and exclude_items {items.shape} must be "
                "1-D arrays of the same length"
            )
        if items.size and (items.min() < 0 or items.max() >= num_items):
            raise ValueError(f"exclude_items must lie in [0, {num_items})")
        order = np.argsort(users, kind="stable")
        self.users, self.items = users[order], items[order]

    def cells(self, row_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, items)`` of the excluded cells of a chunk whose row ``r`` is user
        ``row_users[r]``."""
        start = np.searchsorted(self.users, row_users, side="left")
        lengths = np.searchsorted(self.users, row_users, side="right") - start
        rows = np.repeat(np.arange(row_users.size, dtype=np.int64), lengths)
        # Position of every cell inside the sorted exclusions: each row's run
        # start, plus its offset within the run.
        first = np.cumsum(lengths) - lengths
        within = np.arange(rows.size, dtype=np.int64) - np.repeat(first, lengths)
        return rows, self.items[np.repeat(start, lengths) + within]


def _chunks(n: int, num_items: int, max_cells: int) -> Iterator[slice]:
    if max_cells < 1:
        raise ValueError(f"max_cells={max_cells}: must be >= 1")
    size = max(1, max_cells // max(1, num_items))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _device(model: Recommender) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _users(users: np.ndarray) -> np.ndarray:
    users = np.asarray(users, dtype=np.int64)
    if users.ndim != 1:
        raise ValueError(f"users must be a 1-D array, got shape {users.shape}")
    return users


def _scored_chunk(
    model: Recommender, users: np.ndarray, excluded: _Exclusions, device: torch.device
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Float32 logits ``(len(users), num_items)`` and the chunk's excluded cells."""
    scores = model.score_all(torch.from_numpy(users).to(device)).float()
    rows, items = excluded.cells(users)
    cells = (torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device))
    return scores, cells


@torch.no_grad()
def top_k(
    model: Recommender,
    users: np.ndarray,
    k: int,
    *,
    exclude_users: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    max_cells: int = _DEFAULT_MAX_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring catalogue items of each user, excluded pairs skipped.

    Parameters
    ----------
    model : Recommender
        Scores the catalogue (:meth:`~fedrec_flwr.models.base.Recommender.score_all`).
    users : numpy.ndarray
        ``(n,)`` model-local user indices.
    k : int
        Items per user (``>= 1``).
    exclude_users : numpy.ndarray or None (default: None)
        Local user index of each excluded pair (same index space as ``users``);
        parallel to ``exclude_items``.
    exclude_items : numpy.ndarray or None (default: None)
        Item code of each excluded pair. Repeated pairs are allowed.
    max_cells : int (default: 2**24)
        Bound on ``chunk_users * num_items``, the user-by-item score block held
        in memory at once.

    Returns
    -------
    items : numpy.ndarray
        ``(n, k)`` int64 item codes, best first; equal logits are ordered by
        lower item code (deterministic).
    scores : numpy.ndarray
        ``(n, k)`` float32 logits of ``items``.

    Notes
    -----
    A user with fewer than ``k`` eligible items gets item ``-1`` with score
    ``-inf`` in the missing trailing slots. Excluded cells are marked with a
    ``-inf`` logit, so an eligible item whose logit is itself ``-inf`` is
    reported as missing too (the logits of a trained model are finite).

    Raises
    ------
    ValueError
        For ``k < 1``, ``max_cells < 1``, or malformed exclusions.
    """
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    users = _users(users)
    num_items = model.catalogue_size()
    excluded = _Exclusions(exclude_users, exclude_items, num_items)
    device = _device(model)
    top_items = np.full((users.size, k), -1, dtype=np.int64)
    top_scores = np.full((users.size, k), -np.inf, dtype=np.float32)
    width = min(k, num_items)
    for chunk in _chunks(users.size, num_items, max_cells):
        scores, cells = _scored_chunk(model, users[chunk], excluded, device)
        scores[cells] = -torch.inf
        items, values = _top_sorted(scores, width)
        missing = values == -torch.inf
        items[missing] = -1
        top_items[chunk, :width] = items.cpu().numpy()
        top_scores[chunk, :width] = values.cpu().numpy()
    return top_items, top_scores


def _top_sorted(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` per row, ordered by (score descending, item ascending).

    ``torch.topk`` picks an arbitrary subset among items tied with the k-th
    value; rows where such a tie crosses the cut are redone with a stable sort,
    which keeps the lowest item codes.
    """
    # One extra item tells whether a tie crosses the cut: the (k+1)-th value
    # equals the k-th (cheaper than counting the cells >= the k-th value).
    extra = min(k + 1, scores.shape[1])
    values, items = torch.topk(scores, extra, dim=1, largest=True, sorted=True)
    kth = values[:, k - 1]
    # -inf at the cut only ties with excluded cells, which are reported missing.
    if extra > k:
        crossing = (values[:, k] == kth) & (kth > -torch.inf)
    else:
        crossing = torch.zeros_like(kth, dtype=torch.bool)
    items, values = items[:, :k], values[:, :k]
    # Reorder ties inside the selection: by item first, then stably by score.
    by_item = torch.argsort(items, dim=1)
    items, values = items.gather(1, by_item), values.gather(1, by_item)
    by_score = torch.sort(values, dim=1, descending=True, stable=True).indices
    items, values = items.gather(1, by_score), values.gather(1, by_score)
    rows = torch.nonzero(crossing).flatten()
    if rows.numel():
        sorted_values, sorted_items = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        items[rows], values[rows] = sorted_items[:, :k], sorted_values[:, :k]
    return items, values


@torch.no_grad()
def full_ranking_sums(
    model: Recommender,
    users: np.ndarray,
    targets: np.ndarray,
    ks: Iterable[int],
    *,
    exclude_users: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    max_cells: int = _DEFAULT_MAX_CELLS,
) -> dict[str, float]:
    """Sums over users of HR, recall and NDCG at each K, ranked over the whole catalogue.

    Each user's held-out target is ranked against every eligible catalogue
    item (all items but the user's excluded ones). Its 0-based rank is the
    number of eligible non-target items scoring at least as high: ties count
    against the target, as :func:`~fedrec_flwr.train.metrics.rank_of_positive`.

    Parameters
    ----------
    model : Recommender
        Scores the catalogue.
    users : numpy.ndarray
        ``(n,)`` model-local user indices, one row per held-out target.
    targets : numpy.ndarray
        ``(n,)`` held-out item code of each row.
    ks : iterable of int
        Cut-offs.
    exclude_users : numpy.ndarray or None (default: None)
        Local user index of each excluded pair (same index space as ``users``).
    exclude_items : numpy.ndarray or None (default: None)
        Item code of each excluded pair (e.g. the user's training items).
    max_cells : int (default: 2**24)
        Bound on ``chunk_users * num_items`` held in memory at once.

    Returns
    -------
    dict of str to float
        ``full-hr@K`` (hit when ``rank < K``), ``full-recall@K`` (hits over the
        row's number of targets, here 1) and ``full-ndcg@K``
        (``1 / log2(rank + 2)`` on a hit), each summed over the ``n`` rows;
        divide by ``n`` (:func:`~fedrec_flwr.train.metrics.finalize_sums`).

    Raises
    ------
    ValueError
        If a target is excluded for its user (the message names the user), a
        target is outside the catalogue, shapes differ, or the exclusions are
        malformed.
    """
    users = _users(users)
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != users.shape:
        raise ValueError(f"targets {targets.shape} must match users {users.shape}")
    ks = list(ks)
    num_items = model.catalogue_size()
    if targets.size and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"targets must lie in [0, {num_items})")
    excluded = _Exclusions(exclude_users, exclude_items, num_items)
    device = _device(model)
    ranks = np.empty(users.size, dtype=np.int64)
    for chunk in _chunks(users.size, num_items, max_cells):
        scores, cells = _scored_chunk(model, users[chunk], excluded, device)
        ranks[chunk] = _target_ranks(scores, cells, users[chunk], targets[chunk])
    return _rank_sums(ranks, ks)


def full_ranking_sums_of_scores(
    scores: np.ndarray,
    users: np.ndarray,
    targets: np.ndarray,
    ks: Iterable[int],
    *,
    exclude_users: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`full_ranking_sums` of catalogue scores computed elsewhere.

    For scores no single model gives, e.g. every user's own fine-tuned copy
    (:meth:`~fedrec_flwr.train.trainer.PerUserTrainer.personalised_rank`).
    Row ``r`` of ``scores`` (``(n, num_items)``) scores the catalogue for
    ``users[r]``; the other parameters, ranks and sums are :func:`full_ranking_sums`'.
    """
    users = _users(users)
    targets = np.asarray(targets, dtype=np.int64)
    scores_t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    if scores_t.dim() != 2 or scores_t.shape[0] != users.size or targets.shape != users.shape:
        raise ValueError(
            f"scores {tuple(scores_t.shape)} must be (n, num_items) for {users.size} users "
            f"and targets {targets.shape}"
        )
    num_items = scores_t.shape[1]
    if targets.size and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"targets must lie in [0, {num_items})")
    rows, items = _Exclusions(exclude_users, exclude_items, num_items).cells(users)
    cells = (torch.from_numpy(rows), torch.from_numpy(items))
    return _rank_sums(_target_ranks(scores_t, cells, users, targets), ks)


def _target_ranks(
    scores: torch.Tensor,
    cells: tuple[torch.Tensor, torch.Tensor],
    users: np.ndarray,
    targets: np.ndarray,
) -> np.ndarray:
    """0-based rank of each row's target among its eligible items (ties count against it)."""
    chunk_targets = torch.from_numpy(targets).to(scores.device)
    target_excluded = cells[1] == chunk_targets[cells[0]]
    if bool(target_excluded.any()):
        row = int(cells[0][target_excluded][0])
        raise ValueError(f"user {int(users[row])}: its target item {int(targets[row])} is excluded")
    target_scores = scores.gather(1, chunk_targets[:, None])
    at_least = scores >= target_scores
    at_least[cells] = False
    # Minus one: the target itself always scores at least as high as itself.
    # int32 counts: summing booleans into int64 is much slower.
    ranks: np.ndarray = (at_least.sum(1, dtype=torch.int32) - 1).cpu().numpy()
    return ranks


def _rank_sums(ranks: np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    targets_per_row = np.ones(ranks.size)  # one held-out target per row
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"full-hr@{k}"] = float(hit.sum())
        out[f"full-recall@{k}"] = float((hit / targets_per_row).sum())
        out[f"full-ndcg@{k}"] = float((hit / np.log2(ranks + 2.0)).sum())
    return out
