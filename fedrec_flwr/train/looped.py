"""Per-user training for models with their own objective, one user at a time.

:mod:`fedrec_flwr.train.peruser` trains a group's users side by side because a
pairwise model scores every ``(user, item)`` pair independently. A model with
its own objective (``Recommender.pairwise = False``: a sequence model, a
graph model) couples a user's items inside one forward pass, so here each
user is trained the plain way: a copy of the node's model, bound to that
user's interactions only, a fresh Adam, its own generator. The copy keeps
every user's rows, but only the trained user's interactions reach the
objective, so the other rows get no gradient and the copy trains exactly as
a one-user client would (tested against one). Slower than the side-by-side
path, and exact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..datasets.negatives import InteractionSet
from ..models.base import NodeContext, Recommender, private_arrays, shared_arrays
from ..protocol import TEST_PART, VAL_PART
from .evaluate import EvalResult, rank_logits, with_full_ranking
from .peruser import PerUserUpdate, UserLevelDP, noised_user_mean

__all__ = ["finetune_users_looped", "train_users_looped"]


def _one_user(context: NodeContext, user: int) -> NodeContext:
    """``context`` with only ``user``'s training interactions (rows stay numbered)."""
    rows = context.train_users == user
    return NodeContext(
        num_users=context.num_users,
        train_users=context.train_users[rows],
        train_items=context.train_items[rows],
        val_items=context.val_items,
        test_items=context.test_items,
        user_table=context.user_table,
        item_table=context.item_table,
    )


def _trained_copy(
    model: Recommender,
    context: NodeContext,
    exclude: InteractionSet,
    user: int,
    seed: int,
    *,
    params: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    num_negatives: int,
    weight_decay: float,
) -> tuple[Recommender, float]:
    one = copy.deepcopy(model)
    one.bind(_one_user(context, user))
    chosen = [p for n, p in one.named_parameters() if params == "all" or one.is_private(n)]
    for name, p in one.named_parameters():
        p.requires_grad_(params == "all" or one.is_private(name))
    loss = float("nan")
    if chosen:
        optimizer = torch.optim.Adam(chosen, lr=learning_rate, weight_decay=weight_decay)
        loss = one.train_epochs(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            num_negatives=num_negatives,
            rng=np.random.default_rng(seed),
            exclude=exclude,
        )
    for p in one.parameters():
        p.requires_grad_(True)
    return one, loss


def train_users_looped(
    model: Recommender,
    context: NodeContext,
    exclude: InteractionSet,
    user_seeds: Sequence[int],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    num_negatives: int,
    weight_decay: float = 0.0,
    dp: UserLevelDP | None = None,
) -> PerUserUpdate:
    """Train each user of a group as its own FedAvg client; return the mean.

    Parameters
    ----------
    model : Recommender
        Bound to the group (``context``); read only.
    context : NodeContext
        The group's data, as bound.
    exclude : InteractionSet
        Pairs never drawn as training negatives.
    user_seeds : sequence of int
        One generator seed per group-local user.
    epochs, batch_size, learning_rate, num_negatives, weight_decay
        Local training settings.
    dp : UserLevelDP, optional (default: None)
        User-level DP as in :func:`~fedrec_flwr.train.peruser.train_users_independently`:
        each user's update over all shared parameters is clipped to ``dp.clip``,
        and the reply is the global arrays plus the noised sum over the node's
        number of users (every user weighs the same; the weight is that count).

    Returns
    -------
    PerUserUpdate
        Interaction-weighted mean of the users' shared arrays (under ``dp``: the
        noised clipped mean), their trained private rows, the total weight and
        the mean of the users' losses.

    Raises
    ------
    ValueError
        If no user has a training interaction or the seed count is wrong.
    """
    if len(user_seeds) != context.num_users:
        raise ValueError(f"{len(user_seeds)} user seeds for {context.num_users} users")
    counts = np.bincount(context.train_users, minlength=context.num_users)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no user of the group has a training interaction")
    base = {n: torch.from_numpy(v) for n, v in shared_arrays(model).items()}  # as sent
    sent = {n: v.double() for n, v in base.items()}
    trained = {n for n, _ in model.named_parameters() if not model.is_private(n)}
    acc = {n: torch.zeros_like(v) for n, v in sent.items()}
    out_private = private_arrays(model)
    losses = []
    for user in np.flatnonzero(counts):
        one, loss = _trained_copy(
            model,
            context,
            exclude,
            int(user),
            user_seeds[int(user)],
            params="all",
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            num_negatives=num_negatives,
            weight_decay=weight_decay,
        )
        losses.append(loss)
        arrays = {n: torch.from_numpy(v).double() for n, v in shared_arrays(one).items()}
        if dp is None:
            for name, array in arrays.items():
                acc[name] += counts[user] * array
        else:
            delta = {n: arrays[n] - sent[n] for n in trained}
            norm = math.sqrt(sum(float(d.pow(2).sum()) for d in delta.values()))
            # The scalar form of peruser._add_clipped_updates's clipping rule.
            factor = dp.clip / norm if norm > dp.clip else 1.0
            for name, d in delta.items():
                acc[name] += d * factor
        for name, rows in private_arrays(one).items():
            out_private[name][user] = rows[user]
    loss = float(np.mean(losses))
    if dp is not None:
        clipped = {n: acc[n] for n in sent if n in trained}
        noised = noised_user_mean(base, clipped, context.num_users, dp)
        return PerUserUpdate(
            shared=noised, private=dict(out_private), weight=context.num_users, loss=loss
        )
    mean = {n: (a / total).numpy().astype(np.float32) for n, a in acc.items()}
    return PerUserUpdate(shared=mean, private=dict(out_private), weight=total, loss=loss)


@torch.no_grad()
def _score(model: Recommender, user: int, candidates: np.ndarray, target: str) -> torch.Tensor:
    users = torch.full((candidates.size,), user, dtype=torch.int64)
    was = model.training  # the node's own model may be scored: leave its mode as it was
    model.eval()
    try:
        with model.history_for(target):
            return model(users, torch.from_numpy(candidates.astype(np.int64)))
    finally:
        model.train(was)


def finetune_users_looped(
    model: Recommender,
    context: NodeContext,
    exclude: InteractionSet,
    user_seeds: Sequence[int],
    eval_negatives: np.ndarray,
    ks: Sequence[int],
    *,
    scope: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    num_negatives: int,
    weight_decay: float = 0.0,
    full: bool = False,
) -> tuple[EvalResult, EvalResult]:
    """Fine-tune a copy per user on its own interactions; rank its val and test items.

    Parameters
    ----------
    model, context, exclude, user_seeds
        As for :func:`train_users_looped`.
    eval_negatives : numpy.ndarray
        ``(num_users, k)`` evaluation negatives per user.
    ks : sequence of int
        Cut-offs.
    scope : {"private", "all"}
        Which parameters each copy fine-tunes.
    epochs, batch_size, learning_rate, num_negatives, weight_decay
        Fine-tuning settings.
    full : bool (default: False)
        Also rank each held-out item over the whole catalogue minus the user's
        training items, with the user's fine-tuned copy (``full-*`` sums, as
        :func:`~fedrec_flwr.train.evaluate.rank_val_test` adds them).

    Returns
    -------
    tuple of EvalResult
        Validation and test ranking over the users (a user without training
        interactions is scored by the global model).
    """
    if scope not in ("private", "all"):
        raise ValueError(f"scope={scope!r}: expected 'private' or 'all'")
    counts = np.bincount(context.train_users, minlength=context.num_users)
    rows: dict[str, list[torch.Tensor]] = {VAL_PART: [], TEST_PART: []}
    catalogue = np.arange(model.catalogue_size())
    full_rows: dict[str, list[torch.Tensor]] = {VAL_PART: [], TEST_PART: []}
    for user in range(context.num_users):
        one = model
        if counts[user]:
            one, _ = _trained_copy(
                model,
                context,
                exclude,
                user,
                user_seeds[user],
                params=scope,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                num_negatives=num_negatives,
                weight_decay=weight_decay,
            )
        for target, held_out in ((VAL_PART, context.val_items), (TEST_PART, context.test_items)):
            candidates = np.concatenate([[held_out[user]], eval_negatives[user]])
            rows[target].append(_score(one, user, candidates, target))
            if full:
                with torch.no_grad():
                    full_rows[target].append(_score(one, user, catalogue, target))
    val, test = (rank_logits(torch.stack(rows[t]), ks) for t in (VAL_PART, TEST_PART))
    if full:
        held = {VAL_PART: context.val_items, TEST_PART: context.test_items}
        val, test = (
            with_full_ranking(
                result,
                torch.stack(full_rows[t]).numpy(),
                held[t],
                ks,
                exclude_users=context.train_users,
                exclude_items=context.train_items,
            )
            for t, result in ((VAL_PART, val), (TEST_PART, test))
        )
    return val, test
