"""Server-side item-inference attacks on one training reply, and their scores.

A curious server holds the global shared arrays it sent and the arrays a node
replied with. Row ``i`` of an item table belongs to item ``i``
(:meth:`~fedrec_flwr.models.Recommender.item_tables`), so the row updates say
which items the node trained on. Three attacks, each giving a score per
catalogue item (higher = more likely a training item) and a predicted set:

- ``changed-rows``: the rows that changed at all. Adam, from a fresh state each
  round, leaves a row whose gradient was always zero exactly unchanged, so this
  set is the node's positives *and* its sampled negatives.
- ``direction``: the sign of each changed row's update along the main
  direction of all updates (top singular vector, uncentred) of the GMF item
  table (the first item table for models without one). With one user, every
  GMF item row moves along ``+/- p * h`` (user row times output weights):
  positives one way, negatives the other. The smaller side is taken as the
  training items (a node samples several negatives per positive).
- ``signature``: gradient matching against the global model that was sent, in
  the spirit of the shadow-model attacks of Yuan et al., "Interaction-level
  Membership Inference Attack Against Federated Recommender Systems" (IMIA,
  WWW 2023). A shadow user row is fitted so that the global model's per-item
  gradient signature ``d logit(p, i) / d rows(i)`` best explains the observed
  row updates (a positive's rows move along ``+signature``, a negative's along
  ``-signature``); each item is scored by the mean over item tables of the
  cosine between its update and ``+signature``. One backward pass gives every
  item's signature, because each logit reads only its own item's rows.

:func:`audit_reply` runs them all; :func:`score_attack` compares a prediction
with the truth (the simulation knows each node's training items): precision,
recall, AUC of the scores over the whole catalogue and the base rate. Without
truth (a real deployment) only the inferred count is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..models import Recommender

__all__ = [
    "ATTACKS",
    "REPORTED_COUNTS",
    "AttackResult",
    "auc",
    "audit_reply",
    "changed_rows_attack",
    "direction_attack",
    "item_updates",
    "reported_counts_attack",
    "score_attack",
    "signature_attack",
]

#: The attacks :func:`audit_reply` runs, in order.
ATTACKS = ("changed-rows", "direction", "signature")
#: Not an inference: with row-wise item aggregation a reply's metrics carry
#: the node's training interactions per item (``item-counts``), read as they are.
REPORTED_COUNTS = "reported-counts"

# Unchanged rows score below any cosine (in [-1, 1]) or projection: never trained.
_UNCHANGED = -np.inf


@dataclass(frozen=True)
class AttackResult:
    """One attack's inference on one reply.

    Attributes
    ----------
    attack : str
        One of :data:`ATTACKS`.
    scores : numpy.ndarray
        ``(num_items,)`` float; higher = more likely a training item
        (``-inf`` for rows that did not change).
    predicted : numpy.ndarray
        ``(num_items,)`` bool: the inferred training items.
    """

    attack: str
    scores: np.ndarray
    predicted: np.ndarray


def item_updates(
    sent: Mapping[str, np.ndarray], reply: Mapping[str, np.ndarray], tables: Sequence[str]
) -> dict[str, np.ndarray]:
    """Row updates ``reply - sent`` of the item tables, as 2-D float64 arrays.

    Parameters
    ----------
    sent : mapping of str to numpy.ndarray
        The global shared arrays the server sent to the node.
    reply : mapping of str to numpy.ndarray
        The shared arrays of the node's reply.
    tables : sequence of str
        Item-table names (:meth:`~fedrec_flwr.models.Recommender.item_tables`).

    Returns
    -------
    dict of str to numpy.ndarray
        ``(num_items, -1)`` update per table.

    Raises
    ------
    ValueError
        If a table is missing from either side or shapes differ.
    """
    out: dict[str, np.ndarray] = {}
    for name in tables:
        if name not in sent or name not in reply:
            raise ValueError(f"item table {name!r} missing from the sent or replied arrays")
        before, after = np.asarray(sent[name]), np.asarray(reply[name])
        if before.shape != after.shape:
            raise ValueError(f"item table {name!r}: shape {after.shape} != sent {before.shape}")
        delta = after.astype(np.float64) - before.astype(np.float64)
        out[name] = delta.reshape(delta.shape[0], -1)
    return out


def _changed(updates: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows where any element of any item table changed."""
    masks = [np.any(d != 0, axis=1) for d in updates.values()]
    return np.logical_or.reduce(masks) if masks else np.zeros(0, dtype=bool)


def _direction_table(model: Recommender) -> str:
    """The GMF item table if the model has one, else its first item table."""
    tables = model.item_tables()
    if not tables:
        raise ValueError(f"{type(model).__name__} names no item tables: nothing to audit")
    return next((t for t in tables if "gmf" in t), tables[0])


def changed_rows_attack(
    sent: Mapping[str, np.ndarray], reply: Mapping[str, np.ndarray], model: Recommender
) -> AttackResult:
    """Infer the rows that changed at all (positives and sampled negatives).

    Parameters
    ----------
    sent, reply : mapping of str to numpy.ndarray
        As for :func:`item_updates`.
    model : Recommender
        Any model of the run's architecture (only its item-table names are read).

    Returns
    -------
    AttackResult
        Scores 1 (changed) or 0.
    """
    changed = _changed(item_updates(sent, reply, model.item_tables()))
    return AttackResult("changed-rows", changed.astype(np.float64), changed)


def _smaller_side_sign(projection: np.ndarray) -> float:
    """+1 or -1 so that fewer changed rows project positively (ties: +1)."""
    return 1.0 if np.sum(projection > 0) <= np.sum(projection < 0) else -1.0


def _top_direction(rows: np.ndarray) -> np.ndarray:
    """Top right singular vector of ``rows`` (uncentred); zeros if all rows are 0."""
    if not rows.size or not np.any(rows):
        return np.zeros(rows.shape[1] if rows.ndim == 2 else 0)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    return np.asarray(vt[0])


def direction_attack(
    sent: Mapping[str, np.ndarray], reply: Mapping[str, np.ndarray], model: Recommender
) -> AttackResult:
    """Split the changed rows by the sign of their update along the main direction.

    Parameters
    ----------
    sent, reply : mapping of str to numpy.ndarray
        As for :func:`item_updates`.
    model : Recommender
        Any model of the run's architecture (only its item-table names are read).

    Returns
    -------
    AttackResult
        Scores: the projection of each changed row's update on the top singular
        vector, signed so that the smaller side is positive; the predicted set
        is that side.
    """
    updates = item_updates(sent, reply, model.item_tables())
    changed = _changed(updates)
    delta = updates[_direction_table(model)]
    projection = delta[changed] @ _top_direction(delta[changed])
    projection *= _smaller_side_sign(projection)
    scores = np.full(changed.shape, _UNCHANGED)
    scores[changed] = projection
    return AttackResult("direction", scores, scores > 0)


def _row_cosines(a: Any, b: Any) -> Any:
    """Cosine of each row of ``a`` with the same row of ``b`` (0 where either is 0)."""
    import torch

    dot = (a * b).sum(dim=1)
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return torch.where(norms > 0, dot / norms.clamp_min(1e-30), torch.zeros_like(dot))


def signature_attack(
    sent: Mapping[str, np.ndarray],
    reply: Mapping[str, np.ndarray],
    model: Recommender,
    *,
    seed: int = 0,
    steps: int = 20,
) -> AttackResult:
    """Score items by how well the global model's gradient signature explains their update.

    Follows the shadow-user idea of IMIA (Yuan et al., WWW 2023): a shadow user
    row ``p`` (every private table of a one-user model) is fitted to the
    observed row updates ``D``, then each changed item is scored by the
    alignment of ``D_i`` with ``+signature_i(p) = d logit(p, i) / d rows(i)``
    of the global model that was sent (a positive's rows move up the logit
    gradient, a negative's down).

    The fit maximises ``sum_t sum_i cos^2(D_t,i, G_t,i(p))`` over the changed
    rows ``i`` and item tables ``t`` (a sign-free objective: the squared cosine
    does not care whether the item was a positive or a negative) on ``p``
    through a double backward pass. Each table's cosines are then oriented
    so that the smaller side of the changed rows is positive (the prior of
    :func:`direction_attack`: a node samples several negatives per positive;
    for GMF the sign of ``p`` is not identifiable from one round's update), and
    the tables are averaged with weights ``(mean_i cos^2)^2`` (the squared
    share of the table's update the signature explains), so a table the
    shadow user fits badly (the MLP item table of a many-user node, whose
    signature differs per user) counts little.

    Parameters
    ----------
    sent, reply : mapping of str to numpy.ndarray
        As for :func:`item_updates`; ``sent`` must hold every shared array of
        ``model`` (the global model the server sent).
    model : Recommender
        A one-user model of the run's architecture (``num_users=1``, the run's
        ``num_items``); its shared parameters are not modified (the forward pass
        runs on copies via :func:`torch.func.functional_call`).
    seed : int (default: 0)
        Seed of the shadow user's initial row.
    steps : int (default: 20)
        Iterations of the fit (L-BFGS with a strong-Wolfe line search; a
        Rayleigh-quotient-like objective, which plain gradient ascent climbs
        slowly).

    Returns
    -------
    AttackResult
        Scores in [-1, 1] for changed rows (``-inf`` for unchanged); the
        predicted set is the changed rows scoring > 0.
    """
    import torch
    from torch.func import functional_call

    tables = model.item_tables()
    updates = item_updates(sent, reply, tables)
    changed = _changed(updates)
    scores = np.full(changed.shape, _UNCHANGED)
    rows = np.flatnonzero(changed)
    if not rows.size:
        return AttackResult("signature", scores, np.zeros(changed.shape, dtype=bool))
    state = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    # Shadow user: one row of every private table; the scale of a fresh user row.
    shadow = {
        name: (
            torch.randn((1, *value.shape[1:]), generator=gen, dtype=value.dtype) * 0.01
        ).requires_grad_(True)
        for name, value in state.items()
        if model.is_private(name)
    }
    params: dict[str, Any] = {
        name: torch.as_tensor(np.asarray(sent[name])).to(state[name].dtype)
        for name in state
        if not model.is_private(name)
    }
    index = torch.as_tensor(rows, dtype=torch.long)
    deltas = [torch.as_tensor(updates[t][rows], dtype=torch.float32) for t in tables]
    users = torch.zeros(rows.size, dtype=torch.long)
    # Only the changed rows enter the forward pass: row j of the sliced tables is item rows[j].
    sliced = {t: params[t][index].clone().requires_grad_(True) for t in tables}

    def cosines(create_graph: bool) -> list[Any]:
        logits = functional_call(
            model, {**params, **sliced, **shadow}, (users, torch.arange(rows.size))
        )
        grads = torch.autograd.grad(
            logits.sum(), [sliced[t] for t in tables], create_graph=create_graph
        )
        return [
            _row_cosines(d, g.reshape(g.shape[0], -1)) for d, g in zip(deltas, grads, strict=True)
        ]

    optimiser = torch.optim.LBFGS(
        list(shadow.values()), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure() -> Any:
        optimiser.zero_grad()
        loss = -sum(c.square().mean() for c in cosines(create_graph=True))
        if loss.requires_grad:
            loss.backward()
        return loss

    if steps > 0:
        optimiser.step(closure)
    final = [c.detach().double().numpy() for c in cosines(create_graph=False)]
    # Squared explained fraction: a table the shadow user explains badly counts little.
    weights = np.array([np.mean(c**2) for c in final]) ** 2
    combined = np.zeros(rows.size)
    for cos, weight in zip(final, weights, strict=True):
        combined += weight * cos * _smaller_side_sign(cos)
    if weights.sum() > 0:
        combined /= weights.sum()
    scores[rows] = combined
    return AttackResult("signature", scores, scores > 0)


def reported_counts_attack(counts: Sequence[int]) -> AttackResult:
    """Read the per-item training counts a row-wise-aggregation reply reports.

    Parameters
    ----------
    counts : sequence of int
        The reply's ``item-counts`` metric: training interactions per item.

    Returns
    -------
    AttackResult
        Scores = counts; predicted = items with a count > 0 (exactly the
        training items of an honest node).
    """
    scores = np.asarray(counts, dtype=np.float64)
    return AttackResult(REPORTED_COUNTS, scores, scores > 0)


def audit_reply(
    sent: Mapping[str, np.ndarray],
    reply: Mapping[str, np.ndarray],
    model: Recommender,
    *,
    attacks: Sequence[str] = ATTACKS,
    seed: int = 0,
) -> list[AttackResult]:
    """Run attacks on one reply.

    Parameters
    ----------
    sent, reply : mapping of str to numpy.ndarray
        The global shared arrays sent to the node and the node's replied arrays.
    model : Recommender
        A one-user model of the run's architecture and catalogue size.
    attacks : sequence of str (default: ATTACKS)
        Which attacks, by name.
    seed : int (default: 0)
        Seed of the ``signature`` attack's shadow user.

    Returns
    -------
    list of AttackResult
        One per attack, in the order asked.

    Raises
    ------
    ValueError
        For an unknown attack name, or item tables missing from the arrays.
    """
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    results = []
    for name in attacks:
        if name == "changed-rows":
            results.append(changed_rows_attack(sent, reply, model))
        elif name == "direction":
            results.append(direction_attack(sent, reply, model))
        else:
            results.append(signature_attack(sent, reply, model, seed=seed))
    return results


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the items in ``truth``.

    The Mann-Whitney statistic over all items: the probability that a random
    training item scores above a random other item, ties counted 1/2.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(num_items,)`` scores (``-inf`` allowed).
    truth : numpy.ndarray
        ``(num_items,)`` bool: the training items.

    Returns
    -------
    float
        In [0, 1]; NaN if ``truth`` is all True or all False.
    """
    from scipy.stats import rankdata

    truth = np.asarray(truth, dtype=bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if not positives or not negatives:
        return float("nan")
    # rankdata needs finite values: -inf (unchanged rows) ranks below every
    # finite score and ties among itself.
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    ranks = rankdata(np.where(finite, scores, floor))
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def score_attack(result: AttackResult, truth: np.ndarray | None) -> dict[str, Any]:
    """Compare one attack's inference with the node's training items.

    Parameters
    ----------
    result : AttackResult
        The attack's scores and predicted set.
    truth : numpy.ndarray or None
        Item codes of the node's training interactions (duplicates allowed), or
        None where the truth is unknown (a real deployment).

    Returns
    -------
    dict
        ``inferred`` (predicted count), ``true-items`` (distinct training
        items, None without truth), ``base-rate`` (``true-items / num_items``),
        ``precision`` (None if nothing is predicted), ``recall`` and ``auc``;
        all but ``inferred`` are None without truth.
    """
    inferred = int(result.predicted.sum())
    out: dict[str, Any] = {
        "inferred": inferred,
        "true-items": None,
        "base-rate": None,
        "precision": None,
        "recall": None,
        "auc": None,
    }
    if truth is None:
        return out
    mask = np.zeros(result.scores.shape, dtype=bool)
    mask[np.asarray(truth, dtype=np.int64)] = True
    hits = int((mask & result.predicted).sum())
    true_items = int(mask.sum())
    value = auc(result.scores, mask)
    out.update(
        {
            "true-items": true_items,
            "base-rate": true_items / mask.size,
            "precision": hits / inferred if inferred else None,
            "recall": hits / true_items if true_items else None,
            "auc": None if np.isnan(value) else value,
        }
    )
    return out
