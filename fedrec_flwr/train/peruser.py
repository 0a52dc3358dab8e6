"""Per-user federated training at group cost, for any :class:`Recommender`.

In per-user federated recommendation every user is its own client: it starts
from the global shared model, trains on its own interactions only (fresh Adam,
``local-epochs`` passes, its own negatives) and the server averages the users'
models weighted by their interaction counts. Run as one Flower node per user,
that costs one message, one process start and one model copy per user per
round, which dominates on a catalogue of hundreds of users.

:func:`train_users_independently` computes *exactly* those independent per-user
updates for a whole user group inside one node and returns the group's weighted
mean. Because FedAvg is a weighted mean, the server's mean of group means
weighted by ``n_g = sum of n_u`` equals the mean over all users::

    sum_g n_g * (sum_{u in g} n_u w_u / n_g) / n  ==  sum_u n_u w_u / n

so a federation of user groups in this mode reproduces one-user-per-client
FedAvg while paying Flower's per-message cost once per group.

:func:`finetune_users_and_score` uses the same machinery for per-user
personalisation: each user fine-tunes its own copy alone and scores its own
candidates with it, as a one-user client would.

How it stays generic: the model is defined once, by its own ``forward``.
Users are trained side by side on stacked per-user copies of the parameters;
one step runs every user's next mini-batch through
``torch.func.vmap(torch.func.functional_call(model, ...))`` and one
``torch.optim.Adam`` over the stacked tensors (Adam is elementwise, so that is
one independent Adam per user). A user whose batches are exhausted is put back
exactly as it was, parameters and optimiser state.

How it stays cheap: each user carries only the rows of the model's item tables
(:meth:`Recommender.item_tables`) it touches this round, indexed by local row
(rows it never touches receive no gradient and, with Adam and no weight decay,
never move), plus one row of each private table; frozen parameters are not
copied at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn import functional

from ..datasets.negatives import InteractionSet, sample_train_negatives
from ..models.base import Recommender

__all__ = [
    "PerUserUpdate",
    "UserLevelDP",
    "finetune_users_and_score",
    "noised_user_mean",
    "train_users_independently",
]


@dataclass(frozen=True)
class UserLevelDP:
    """DP-FedAvg at user level inside one node (McMahan et al., ICLR 2018).

    Every user's update ``w_u - w`` (all trained shared arrays together) is
    clipped to L2 norm ``clip``; the node sums the clipped updates, adds
    Gaussian noise of standard deviation ``noise_multiplier * clip`` to every
    element of every trained shared array (rows nobody touched included, so
    which rows moved says nothing), and divides by its number of users, a
    public count. One user's presence or absence (zero-out: its update there or
    zero) moves the sum by at most ``clip``, so the reply is one Gaussian
    release with that noise multiplier (see :mod:`fedrec_flwr.privacy.accounting`).

    Parameters
    ----------
    clip : float
        L2 bound on one user's update.
    noise_multiplier : float
        Noise standard deviation over ``clip``.
    noise_seed : int
        Seeds the noise; it must be secret from the server (whoever can
        recompute the noise can subtract it).
    """

    clip: float
    noise_multiplier: float
    noise_seed: int


@dataclass(frozen=True)
class PerUserUpdate:
    """The result of training every user of a group independently.

    Attributes
    ----------
    shared : dict of str to numpy.ndarray
        Weighted mean of the users' shared arrays, ``sum n_u w_u / sum n_u``.
    private : dict of str to numpy.ndarray
        Each user's own trained private rows (the model's private arrays).
    weight : int
        ``sum n_u``: the group's number of training interactions.
    loss : float
        Mean BCE over every sample of each user's last local epoch.
    """

    shared: dict[str, np.ndarray]
    private: dict[str, np.ndarray]
    weight: int
    loss: float


@dataclass
class _UserPlan:
    """One user's whole round, drawn up front with its own generator."""

    user: int
    rows: np.ndarray  # catalogue items the user touches, sorted
    items: np.ndarray  # (steps * batch,) local row per slot, padded
    labels: np.ndarray
    weights: np.ndarray  # 1/len(batch) for real samples, 0 for padding
    last_epoch: np.ndarray  # slot belongs to the last local epoch
    steps: int


def _plan_user(
    user: int,
    items: np.ndarray,
    exclude: InteractionSet,
    rng: np.random.Generator,
    *,
    epochs: int,
    batch_size: int,
    num_negatives: int,
    all_rows: bool,
    extra_rows: np.ndarray | None = None,
) -> _UserPlan:
    # Same draws, in the same order, as train.group.train_epochs on this user alone.
    n_pos = len(items)
    n = n_pos * (1 + num_negatives)
    labels_once = np.concatenate([np.ones(n_pos), np.zeros(n_pos * num_negatives)])
    per_epoch = math.ceil(n / batch_size)
    slots = per_epoch * batch_size
    seq = np.zeros(epochs * slots, dtype=np.int64)
    lab = np.zeros(epochs * slots, dtype=np.float32)
    wts = np.zeros(epochs * slots, dtype=np.float32)
    last = np.zeros(epochs * slots, dtype=bool)
    users = np.full(n_pos, user, dtype=np.int64)
    for epoch in range(epochs):
        negatives = sample_train_negatives(rng, users, exclude, num_negatives)
        all_items = np.concatenate([items, negatives.reshape(-1)])
        order = rng.permutation(n)
        base = epoch * slots
        for step in range(per_epoch):
            chunk = order[step * batch_size : (step + 1) * batch_size]
            lo = base + step * batch_size
            seq[lo : lo + len(chunk)] = all_items[chunk]
            lab[lo : lo + len(chunk)] = labels_once[chunk]
            wts[lo : lo + len(chunk)] = 1.0 / len(chunk)
        if epoch == epochs - 1:
            last[base : base + slots] = wts[base : base + slots] > 0
    touched = seq[wts > 0]
    if extra_rows is not None:
        touched = np.concatenate([touched, np.asarray(extra_rows, dtype=np.int64)])
    rows = np.arange(exclude.num_items) if all_rows else np.unique(touched)
    local = np.searchsorted(rows, seq)
    local[wts == 0] = 0
    return _UserPlan(user, rows, local, lab, wts, last, epochs * per_epoch)


@dataclass(frozen=True)
class _Layout:
    """How a model's state is laid out per user for one call."""

    state: dict[str, torch.Tensor]  # the model's state_dict, detached views: read only
    private: tuple[str, ...]  # user tables: one row per group-local user
    tables: frozenset[str]  # declared item tables
    trained: tuple[str, ...]  # parameters the optimiser moves, state order
    sliced: bool  # item tables cut to each user's rows; items are local rows
    num_users: int


def _layout(model: Recommender, *, frozen_shared: bool, weight_decay: float) -> _Layout:
    if not model.pairwise:
        raise ValueError(
            f"{type(model).__name__} is trained by its own objective (pairwise=False): "
            "train its users with fedrec_flwr.train.looped instead"
        )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    private = tuple(n for n in state if model.is_private(n))
    # Shared data buffers (item features) have a row per item: sliced like the tables.
    item_data = [b for b in model.data_buffers() if not model.is_private(b)]
    tables = frozenset((*model.item_tables(), *item_data))
    wrong = sorted(t for t in tables if t not in state or t in private)
    if wrong:
        raise ValueError(
            f"{type(model).__name__}.item_tables() names {wrong}, which are not shared "
            "state_dict entries; declare only shared tables row-indexed by item code"
        )
    parameters = {n for n, _ in model.named_parameters()}
    trained = tuple(
        n for n in state if n in parameters and not (frozen_shared and n not in private)
    )
    if not private:
        raise ValueError(
            f"{type(model).__name__} has no private (user) parameters: per-user "
            "training needs at least one user table (see Recommender.is_private)"
        )
    sizes = {n: state[n].shape[0] if state[n].dim() else 0 for n in private}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"private tables disagree on the number of users: {sizes}; each must have "
            "one row per user"
        )
    trains_table = any(t in trained for t in tables)
    # With weight decay every row of a trained table moves: carry whole tables.
    sliced = trains_table and weight_decay == 0
    return _Layout(state, private, tables, trained, sliced, next(iter(sizes.values())))


@contextmanager
def _mode(model: Recommender, training: bool) -> Iterator[None]:
    """``model.train(training)`` for the block, then the caller's mode again."""
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


def _vmapped_logits(
    model: Recommender,
    params: Mapping[str, torch.Tensor],
    dims: Mapping[str, int | None],
    items: torch.Tensor,
) -> torch.Tensor:
    """Logits ``(U, B)``: user ``j``'s own parameters on its items ``items[j]``.

    Each user's private tables hold its one row, so its user index is 0.
    """
    users = torch.zeros(items.shape[1], dtype=torch.int64)

    def one(p: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(model, p, (users, idx))
        return out

    logits: torch.Tensor = vmap(one, in_dims=(dict(dims), 0))(dict(params), items)
    return logits


def train_users_independently(
    model: Recommender,
    users: np.ndarray,
    items: np.ndarray,
    exclude: InteractionSet,
    user_seeds: Sequence[int],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    num_negatives: int,
    weight_decay: float = 0.0,
    chunk_users: int = 16,
    dp: UserLevelDP | None = None,
) -> PerUserUpdate:
    """Train each user of a group as its own FedAvg client; return the mean.

    Every user ``u`` starts from ``model``'s shared arrays and its own rows of
    the private tables, and trains exactly as
    :func:`fedrec_flwr.train.group.train_epochs` would on ``u`` alone with a
    fresh ``torch.optim.Adam``, drawing negatives and batch order from
    ``numpy.random.default_rng(user_seeds[u])``. The users run side by side;
    the result equals a loop over users up to float rounding (tested).

    Parameters
    ----------
    model : Recommender
        The global shared arrays and the group's private tables (one row per
        group-local user). Read only: neither its parameters nor its mode change.
    users, items : numpy.ndarray
        Training positives (group-local user index, catalogue item code).
    exclude : InteractionSet
        Pairs never drawn as training negatives (the training interactions).
    user_seeds : sequence of int
        One generator seed per group-local user.
    epochs, batch_size, learning_rate, num_negatives : int, int, float, int
        Local training settings, as for ``train_epochs``.
    weight_decay : float (default: 0.0)
        Adam's L2 penalty. With a penalty every item row moves, so each user
        then carries the whole catalogue (slower, still exact).
    chunk_users : int (default: 16)
        Users trained side by side; bounds memory.
    dp : UserLevelDP, optional (default: None)
        If set, the shared arrays are the DP-FedAvg estimate instead: the
        global arrays plus the noised sum of the clipped user updates over
        the number of users (every user weighs the same), and the weight is
        the number of users.

    Returns
    -------
    PerUserUpdate
        The weighted mean of the users' shared arrays (weight = interactions),
        the users' trained private rows, the total weight and the mean loss.

    Raises
    ------
    ValueError
        If no user has a training interaction, the seed count differs from
        the number of users, or the model breaks the :class:`Recommender`
        contract (see :meth:`Recommender.item_tables`).
    """
    layout = _layout(model, frozen_shared=False, weight_decay=weight_decay)
    users = np.asarray(users, dtype=np.int64)
    counts = np.bincount(users, minlength=layout.num_users)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no user of the group has a training interaction")
    data = frozenset(model.data_buffers())  # the node's data: neither averaged nor returned
    shared = [n for n in layout.state if n not in layout.private and n not in data]
    acc = {n: torch.zeros(layout.state[n].shape, dtype=torch.float64) for n in shared}
    out_private = {n: layout.state[n].numpy().copy() for n in layout.private if n not in data}
    loss_sum, loss_n = 0.0, 0.0
    for chunk in _train_chunks(
        model,
        layout,
        users,
        items,
        exclude,
        user_seeds,
        _Local(epochs, batch_size, learning_rate, num_negatives, weight_decay, chunk_users),
        with_empty=False,
    ):
        loss_sum += chunk.loss_sum
        loss_n += chunk.loss_n
        with torch.no_grad():
            if dp is not None:
                _add_clipped_updates(acc, layout, chunk, shared, dp.clip)
            else:
                weights = torch.from_numpy(counts[chunk.ids].astype(np.float64))
                for name in shared:
                    if name not in layout.trained:
                        continue
                    value = chunk.params[name].double()
                    if layout.sliced and name in layout.tables:
                        # Rows a user never touched equal the global rows: only deltas move.
                        base = layout.state[name].double()[chunk.rows]
                        delta = (value - base) * weights.view(-1, *[1] * (value.dim() - 1))
                        acc[name].index_add_(0, chunk.rows[chunk.valid], delta[chunk.valid])
                    else:
                        acc[name] += torch.einsum("u,u...->...", weights, value)
            for name in out_private:
                out_private[name][chunk.ids] = chunk.params[name][:, 0].numpy()

    loss = loss_sum / loss_n if loss_n else float("nan")
    if dp is not None:
        noised = _noised_mean(acc, layout, shared, dp)
        return PerUserUpdate(shared=noised, private=out_private, weight=layout.num_users, loss=loss)
    mean: dict[str, np.ndarray] = {}
    for name in shared:
        value = layout.state[name]
        if name not in layout.trained:
            mean[name] = value.numpy().copy()  # nobody moves it: the global value, exactly
        elif layout.sliced and name in layout.tables:
            mean[name] = (value.double() + acc[name] / total).numpy().astype(np.float32)
        else:
            mean[name] = (acc[name] / total).numpy().astype(np.float32)
    return PerUserUpdate(shared=mean, private=out_private, weight=total, loss=loss)


def _add_clipped_updates(
    acc: dict[str, torch.Tensor],
    layout: _Layout,
    chunk: _TrainedChunk,
    shared: Sequence[str],
    clip: float,
) -> None:
    """Add each user's update, clipped to L2 norm ``clip`` over all its arrays, to ``acc``."""
    deltas: dict[str, torch.Tensor] = {}
    for name in shared:
        if name not in layout.trained:
            continue
        value = chunk.params[name].double()
        if layout.sliced and name in layout.tables:
            base = layout.state[name].double()[chunk.rows]
            # Padding rows repeat row 0 of the catalogue: they carry no update.
            mask = chunk.valid.view(*chunk.valid.shape, *[1] * (value.dim() - 2))
            deltas[name] = (value - base) * mask
        else:
            deltas[name] = value - layout.state[name].double()
    n_u = len(chunk.ids)
    squares = torch.zeros(n_u, dtype=torch.float64)
    for delta in deltas.values():
        squares += delta.reshape(n_u, -1).pow(2).sum(dim=1)
    norms = squares.sqrt()
    factor = torch.where(norms > clip, clip / norms.clamp_min(1e-300), torch.ones_like(norms))
    for name, delta in deltas.items():
        scaled = delta * factor.view(-1, *[1] * (delta.dim() - 1))
        if layout.sliced and name in layout.tables:
            acc[name].index_add_(0, chunk.rows[chunk.valid], scaled[chunk.valid])
        else:
            acc[name] += scaled.sum(dim=0)


def _noised_mean(
    acc: Mapping[str, torch.Tensor],
    layout: _Layout,
    shared: Sequence[str],
    dp: UserLevelDP,
) -> dict[str, np.ndarray]:
    """Global arrays + (sum of clipped updates + Gaussian noise) / number of users."""
    base = {name: layout.state[name] for name in shared}
    trained = {name: acc[name] for name in shared if name in layout.trained}
    return noised_user_mean(base, trained, layout.num_users, dp)


def noised_user_mean(
    base: Mapping[str, torch.Tensor],
    clipped_sum: Mapping[str, torch.Tensor],
    num_users: int,
    dp: UserLevelDP,
) -> dict[str, np.ndarray]:
    """``base + (clipped_sum + N(0, (noise_multiplier * clip)^2)) / num_users``.

    Parameters
    ----------
    base : mapping of str to torch.Tensor
        The global arrays the users started from, in state order (the noise is
        drawn in this order, so the same seed gives the same bits).
    clipped_sum : mapping of str to torch.Tensor
        Sum over users of their clipped updates (float64), for the trained
        arrays only; the others are returned as sent, without noise.
    num_users : int
        The public denominator: every user of the node, trained or not.
    dp : UserLevelDP
        Clip, noise multiplier and the node's secret noise seed.
    """
    generator = torch.Generator().manual_seed(dp.noise_seed)
    std = dp.noise_multiplier * dp.clip
    out: dict[str, np.ndarray] = {}
    for name, value in base.items():
        if name not in clipped_sum:
            out[name] = value.numpy().copy()
            continue
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float64) * std
        step = (clipped_sum[name] + noise) / num_users
        out[name] = (value.double() + step).numpy().astype(np.float32)
    return out


def finetune_users_and_score(
    model: Recommender,
    users: np.ndarray,
    items: np.ndarray,
    exclude: InteractionSet,
    user_seeds: Sequence[int],
    candidates: np.ndarray,
    *,
    scope: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    num_negatives: int,
    weight_decay: float = 0.0,
    chunk_users: int = 16,
) -> np.ndarray:
    """Personalise the global model for each user alone; score its candidates.

    Each user fine-tunes its own copy of the model (global shared arrays plus
    its own private rows) on its own training interactions, exactly as
    :func:`train_users_independently` trains it, then scores its own row of
    ``candidates`` with that copy. The copies are discarded: nothing leaves
    the function but the scores.

    Parameters
    ----------
    model, users, items, exclude, user_seeds
        As for :func:`train_users_independently`.
    candidates : numpy.ndarray
        ``(num_users, C)`` catalogue item codes to score for each user.
    scope : {"private", "all"}
        ``private`` fine-tunes only the user's private rows (the shared
        arrays stay global); ``all`` fine-tunes every parameter, so each user
        ends with its own item tables and dense layers.
    epochs, batch_size, learning_rate, num_negatives, weight_decay, chunk_users
        As for :func:`train_users_independently`; ``epochs`` = fine-tuning epochs.

    Returns
    -------
    numpy.ndarray
        ``(num_users, C)`` logits. A user with no training interaction is scored
        by the global model with its current private rows.

    Raises
    ------
    ValueError
        For an unknown ``scope``, a candidate row count other than the number
        of users, and as for :func:`train_users_independently`.
    """
    if scope not in ("private", "all"):
        raise ValueError(f"scope={scope!r}: expected 'private' or 'all'")
    layout = _layout(model, frozen_shared=scope == "private", weight_decay=weight_decay)
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.shape[0] != layout.num_users:
        raise ValueError(f"{candidates.shape[0]} candidate rows for {layout.num_users} users")
    scores = np.zeros(candidates.shape, dtype=np.float32)
    for chunk in _train_chunks(
        model,
        layout,
        np.asarray(users, dtype=np.int64),
        items,
        exclude,
        user_seeds,
        _Local(epochs, batch_size, learning_rate, num_negatives, weight_decay, chunk_users),
        with_empty=True,
        extra_rows=candidates,
    ):
        if layout.sliced:
            rows = chunk.rows.numpy()
            local = np.stack(
                [
                    np.searchsorted(rows[j, : chunk.num_rows[j]], candidates[u])
                    for j, u in enumerate(chunk.ids)
                ]
            )
        else:
            local = candidates[chunk.ids]
        with torch.no_grad(), _mode(model, training=False):
            logits = _vmapped_logits(model, chunk.params, chunk.dims, torch.from_numpy(local))
        scores[chunk.ids] = logits.numpy()
    return scores


@dataclass(frozen=True)
class _Local:
    """Local training settings, as the public functions take them."""

    epochs: int
    batch_size: int
    learning_rate: float
    num_negatives: int
    weight_decay: float
    chunk_users: int


@dataclass
class _TrainedChunk:
    """Users trained side by side: their stacked parameters after training."""

    ids: np.ndarray  # group-local user index per stacked row
    rows: torch.Tensor  # (U, R) catalogue item per local item row, padded
    num_rows: np.ndarray  # real rows per user
    valid: torch.Tensor  # (U, R) row is real, not padding
    params: dict[str, torch.Tensor]  # every state entry, stacked per user or shared
    dims: dict[str, int | None]  # vmap dimension per entry: 0 stacked, None shared
    loss_sum: float
    loss_n: float


def _stack(
    layout: _Layout, ids: np.ndarray, rows: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, int | None]]:
    """Each user's starting copy: its private rows, its item-table rows, and
    the trained dense entries; untrained entries are shared, not copied."""
    n_u = len(ids)
    ids_t = torch.from_numpy(ids)
    params: dict[str, torch.Tensor] = {}
    dims: dict[str, int | None] = {}
    for name, value in layout.state.items():
        if name in layout.private:
            params[name], dims[name] = value[ids_t].unsqueeze(1).clone(), 0
        elif layout.sliced and name in layout.tables:
            params[name], dims[name] = value[rows].clone(), 0
        elif name in layout.trained:
            params[name], dims[name] = value.expand(n_u, *value.shape).clone(), 0
        else:
            params[name], dims[name] = value, None
    for name in layout.trained:
        params[name].requires_grad_(True)
    return params, dims


@torch.no_grad()
def _adam_step_keeping(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], keep: torch.Tensor
) -> None:
    """``optimizer.step()``, then users ``keep`` put back exactly as they were.

    Adam moves a parameter even at zero gradient (momentum), so an exhausted
    user's rows and optimiser state are saved and restored around the step.
    Its step counter is shared with the others; it never steps again.
    """
    saved = []
    for p in params:
        state = optimizer.state.get(p, {})
        moments = {k: state[k][keep].clone() for k in ("exp_avg", "exp_avg_sq") if k in state}
        saved.append((p[keep].clone(), moments))
    optimizer.step()
    for p, (value, moments) in zip(params, saved, strict=True):
        p[keep] = value
        state = optimizer.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k not in state:
                continue  # no gradient ever reached p: Adam skipped it
            # Before its first step a user had no moments: Adam's initial zeros.
            state[k][keep] = moments.get(k, 0.0)


def _train_chunks(
    model: Recommender,
    layout: _Layout,
    users: np.ndarray,
    items: np.ndarray,
    exclude: InteractionSet,
    user_seeds: Sequence[int],
    local: _Local,
    *,
    with_empty: bool,
    extra_rows: np.ndarray | None = None,
) -> Iterator[_TrainedChunk]:
    """Train every user independently, ``local.chunk_users`` at a time; yield chunks.

    Parameters not in ``layout.trained`` are not trained (they still take part
    in the forward pass). ``extra_rows[u]`` are item rows added to user ``u``'s
    local tables without being trained on (an untouched row gets no gradient,
    and Adam leaves it exactly where it was). Users without training
    interactions are skipped unless ``with_empty``.
    """
    items = np.asarray(items, dtype=np.int64)
    num_users = layout.num_users
    if len(user_seeds) != num_users:
        raise ValueError(f"{len(user_seeds)} user seeds for {num_users} users")
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(num_users + 1))
    plans = [
        _plan_user(
            u,
            items[order[bounds[u] : bounds[u + 1]]],
            exclude,
            np.random.default_rng(user_seeds[u]),
            epochs=local.epochs,
            batch_size=local.batch_size,
            num_negatives=local.num_negatives,
            # Unsliced: local rows of the whole catalogue are the item codes.
            all_rows=not layout.sliced,
            extra_rows=None if extra_rows is None else extra_rows[u],
        )
        for u in range(num_users)
        if with_empty or bounds[u + 1] > bounds[u]
    ]

    # Users with similar step counts together: less padding per chunk.
    plans.sort(key=lambda plan: (plan.steps, len(plan.rows)))
    for start in range(0, len(plans), local.chunk_users):
        chunk = plans[start : start + local.chunk_users]
        n_u = len(chunk)
        max_steps = max(plan.steps for plan in chunk)
        max_rows = max(len(plan.rows) for plan in chunk)
        batch_size = local.batch_size
        slots = max_steps * batch_size
        seq = np.zeros((n_u, slots), dtype=np.int64)
        lab = np.zeros((n_u, slots), dtype=np.float32)
        wts = np.zeros((n_u, slots), dtype=np.float32)
        last = np.zeros((n_u, slots), dtype=bool)
        rows = np.zeros((n_u, max_rows), dtype=np.int64)
        for j, plan in enumerate(chunk):
            seq[j, : len(plan.items)] = plan.items
            lab[j, : len(plan.items)] = plan.labels
            wts[j, : len(plan.items)] = plan.weights
            last[j, : len(plan.items)] = plan.last_epoch
            rows[j, : len(plan.rows)] = plan.rows
        steps = torch.tensor([plan.steps for plan in chunk])
        rows_t = torch.from_numpy(rows)
        num_rows = np.array([len(plan.rows) for plan in chunk])
        # Padding rows (beyond a user's own) carry no update.
        valid = torch.arange(max_rows)[None, :] < torch.from_numpy(num_rows)[:, None]
        ids = np.array([plan.user for plan in chunk], dtype=np.int64)

        params, dims = _stack(layout, ids, rows_t)
        trained = [params[n] for n in layout.trained]
        optimizer = torch.optim.Adam(
            trained, lr=local.learning_rate, weight_decay=local.weight_decay
        )
        seq_t, lab_t, wts_t = torch.from_numpy(seq), torch.from_numpy(lab), torch.from_numpy(wts)
        last_t = torch.from_numpy(last)
        loss_sum, loss_n = 0.0, 0.0
        with _mode(model, training=True):
            for step in range(max_steps):
                cut = slice(step * batch_size, (step + 1) * batch_size)
                logits = _vmapped_logits(model, params, dims, seq_t[:, cut])
                per_sample = functional.binary_cross_entropy_with_logits(
                    logits, lab_t[:, cut], reduction="none"
                )
                optimizer.zero_grad(set_to_none=True)
                (per_sample * wts_t[:, cut]).sum().backward()
                in_last = last_t[:, cut]
                loss_sum += float(per_sample.detach()[in_last].double().sum())
                loss_n += float(in_last.sum())
                done = steps <= step
                if bool(done.any()):
                    _adam_step_keeping(optimizer, trained, done)
                else:
                    optimizer.step()
        for name in layout.trained:
            params[name] = params[name].detach()
        yield _TrainedChunk(ids, rows_t, num_rows, valid, params, dims, loss_sum, loss_n)
