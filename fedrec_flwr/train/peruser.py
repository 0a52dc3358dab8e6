"""Per-user federated training at group cost.

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

How it stays cheap: users are trained side by side, each with its own stacked
copy of the dense layers and of only the item-embedding rows it touches this
round (rows it never touches receive no gradient and, with Adam and no weight
decay, never move). A step runs every user's next mini-batch with batched
matrix products; a user whose batches are exhausted is masked out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from ..datasets.negatives import InteractionSet, sample_train_negatives

__all__ = ["PerUserUpdate", "finetune_users_and_score", "train_users_independently"]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults


@dataclass(frozen=True)
class PerUserUpdate:
    """The result of training every user of a group independently.

    Attributes
    ----------
    shared : dict of str to numpy.ndarray
        Weighted mean of the users' shared arrays, ``sum n_u w_u / sum n_u``.
    private : dict of str to numpy.ndarray
        Each user's own trained embedding rows (``user_*`` arrays).
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
    # Same draws, in the same order, as training.train_epochs on this user alone.
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


def _tower_names(shared: Iterable[str]) -> list[str]:
    """``mlp.<i>`` prefixes of the tower's linear layers, in order."""
    prefixes = {name.rsplit(".", 1)[0] for name in shared if name.startswith("mlp.")}
    return sorted(prefixes, key=lambda p: int(p.split(".")[1]))


def _forward(p: dict[str, torch.Tensor], tower: Sequence[str], idx: torch.Tensor) -> torch.Tensor:
    """Logits ``(U, B)`` for each user's batch of local item rows ``idx``."""
    parts = []
    if "item_gmf.weight" in p:
        table = p["item_gmf.weight"]
        item = torch.gather(table, 1, idx[..., None].expand(-1, -1, table.shape[-1]))
        parts.append(p["user_gmf.weight"][:, None, :] * item)
    if "item_mlp.weight" in p:
        table = p["item_mlp.weight"]
        item = torch.gather(table, 1, idx[..., None].expand(-1, -1, table.shape[-1]))
        user = p["user_mlp.weight"][:, None, :].expand(-1, idx.shape[1], -1)
        x = torch.cat([user, item], -1)
        for name in tower:
            w, b = p[f"{name}.weight"], p[f"{name}.bias"]
            x = torch.relu(torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)))
        parts.append(x)
    z = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
    out = torch.baddbmm(p["output.bias"][:, None, :], z, p["output.weight"].transpose(1, 2))
    return out.squeeze(-1)


def train_users_independently(
    shared: Mapping[str, np.ndarray],
    private: Mapping[str, np.ndarray],
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
) -> PerUserUpdate:
    """Train each user of a group as its own FedAvg client; return the mean.

    Every user ``u`` starts from ``shared`` and its own ``private`` rows, and
    trains exactly as :func:`fedrec_flwr.train.group.train_epochs` would on ``u``
    alone with a fresh ``torch.optim.Adam``, drawing negatives and batch order
    from ``numpy.random.default_rng(user_seeds[u])``. The users run side by side;
    the result equals a loop over users up to float rounding (tested).

    Parameters
    ----------
    shared : mapping of str to numpy.ndarray
        The global shared arrays, named as in :class:`fedrec_flwr.models.ncf.NCF`.
    private : mapping of str to numpy.ndarray
        The group's user-embedding tables (``user_gmf.weight`` ...), one row per
        group-local user.
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

    Returns
    -------
    PerUserUpdate
        The weighted mean of the users' shared arrays (weight = interactions),
        the users' trained private rows, the total weight and the mean loss.
    """
    users = np.asarray(users, dtype=np.int64)
    num_users = next(iter(private.values())).shape[0]
    counts = np.bincount(users, minlength=num_users)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no user of the group has a training interaction")
    item_tables = [name for name in shared if name.startswith("item_")]
    dense = [name for name in shared if name not in item_tables]
    global_t = _as_tensors(shared)
    acc = {k: np.zeros(v.shape, dtype=np.float64) for k, v in shared.items()}
    out_private = {k: np.array(v, dtype=np.float32, copy=True) for k, v in private.items()}
    loss_sum, loss_n = 0.0, 0.0
    for chunk in _train_chunks(
        global_t,
        private,
        users,
        items,
        exclude,
        user_seeds,
        _Local(epochs, batch_size, learning_rate, num_negatives, weight_decay, chunk_users),
        frozen=frozenset(),
        with_empty=False,
    ):
        loss_sum += chunk.loss_sum
        loss_n += chunk.loss_n
        with torch.no_grad():
            weights = torch.from_numpy(counts[chunk.ids].astype(np.float64))
            for name in item_tables:
                # Rows a user never touched equal the global rows: only deltas move.
                base = global_t[name][chunk.rows].double()
                delta = (chunk.params[name].double() - base) * weights[:, None, None]
                flat = torch.zeros(acc[name].shape, dtype=torch.float64)
                flat.index_add_(0, chunk.rows[chunk.valid], delta[chunk.valid])
                acc[name] += flat.numpy()
            for name in dense:
                acc[name] += torch.einsum(
                    "u,u...->...", weights, chunk.params[name].double()
                ).numpy()
            for name in out_private:
                out_private[name][chunk.ids] = chunk.params[name].detach().numpy()

    mean: dict[str, np.ndarray] = {}
    for name, value in shared.items():
        if name in item_tables:
            mean[name] = (np.asarray(value, dtype=np.float64) + acc[name] / total).astype(
                np.float32
            )
        else:
            mean[name] = (acc[name] / total).astype(np.float32)
    loss = loss_sum / loss_n if loss_n else float("nan")
    return PerUserUpdate(shared=mean, private=out_private, weight=total, loss=loss)


def finetune_users_and_score(
    shared: Mapping[str, np.ndarray],
    private: Mapping[str, np.ndarray],
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
    its own ``private`` rows) on its own training interactions, exactly as
    :func:`train_users_independently` trains it, then scores its own row of
    ``candidates`` with that copy. The copies are discarded: nothing leaves
    the function but the scores.

    Parameters
    ----------
    shared, private, users, items, exclude, user_seeds
        As for :func:`train_users_independently`.
    candidates : numpy.ndarray
        ``(num_users, C)`` catalogue item codes to score for each user.
    scope : {"private", "all"}
        ``private`` fine-tunes only the user's embedding rows (the shared
        arrays stay global); ``all`` fine-tunes every parameter, so each user
        ends with its own item embeddings and tower.
    epochs, batch_size, learning_rate, num_negatives, weight_decay, chunk_users
        As for :func:`train_users_independently`; ``epochs`` = fine-tuning epochs.

    Returns
    -------
    numpy.ndarray
        ``(num_users, C)`` logits. A user with no training interaction is scored
        by the global model with its current private rows.
    """
    if scope not in ("private", "all"):
        raise ValueError(f"scope={scope!r}: expected 'private' or 'all'")
    candidates = np.asarray(candidates, dtype=np.int64)
    num_users = next(iter(private.values())).shape[0]
    if candidates.shape[0] != num_users:
        raise ValueError(f"{candidates.shape[0]} candidate rows for {num_users} users")
    global_t = _as_tensors(shared)
    tower = _tower_names(shared)
    frozen = frozenset(shared) if scope == "private" else frozenset()
    scores = np.zeros(candidates.shape, dtype=np.float32)
    for chunk in _train_chunks(
        global_t,
        private,
        np.asarray(users, dtype=np.int64),
        items,
        exclude,
        user_seeds,
        _Local(epochs, batch_size, learning_rate, num_negatives, weight_decay, chunk_users),
        frozen=frozen,
        with_empty=True,
        extra_rows=candidates,
    ):
        rows = chunk.rows.numpy()
        local = np.stack(
            [
                np.searchsorted(rows[j, : chunk.num_rows[j]], candidates[u])
                for j, u in enumerate(chunk.ids)
            ]
        )
        with torch.no_grad():
            logits = _forward(chunk.params, tower, torch.from_numpy(local))
        scores[chunk.ids] = logits.numpy()
    return scores


def _as_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}


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
    params: dict[str, torch.Tensor]
    loss_sum: float
    loss_n: float


def _train_chunks(
    global_t: Mapping[str, torch.Tensor],
    private: Mapping[str, np.ndarray],
    users: np.ndarray,
    items: np.ndarray,
    exclude: InteractionSet,
    user_seeds: Sequence[int],
    local: _Local,
    *,
    frozen: frozenset[str],
    with_empty: bool,
    extra_rows: np.ndarray | None = None,
) -> Iterator[_TrainedChunk]:
    """Train every user independently, ``local.chunk_users`` at a time; yield chunks.

    ``frozen`` names shared arrays that are not trained (their rows still take
    part in the forward pass). ``extra_rows[u]`` are item rows added to user
    ``u``'s local table without being trained on (an untouched row gets no
    gradient, and Adam leaves it exactly where it was). Users without training
    interactions are skipped unless ``with_empty``.
    """
    items = np.asarray(items, dtype=np.int64)
    num_users = next(iter(private.values())).shape[0]
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
            all_rows=local.weight_decay > 0 and set(global_t) - frozen != set(),
            extra_rows=None if extra_rows is None else extra_rows[u],
        )
        for u in range(num_users)
        if with_empty or bounds[u + 1] > bounds[u]
    ]
    tower = _tower_names(global_t)
    item_tables = [name for name in global_t if name.startswith("item_")]
    dense = [name for name in global_t if name not in item_tables]

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

        params: dict[str, torch.Tensor] = {}
        for name in item_tables:
            params[name] = global_t[name][rows_t].clone()
        for name in dense:
            params[name] = global_t[name].expand(n_u, *global_t[name].shape).clone()
        for name, table in private.items():
            params[name] = torch.from_numpy(np.asarray(table, dtype=np.float32)[ids]).clone()
        trained = {k: v for k, v in params.items() if k not in frozen}
        for tensor in trained.values():
            tensor.requires_grad_(True)
        exp_avg = {k: torch.zeros_like(v) for k, v in trained.items()}
        exp_avg_sq = {k: torch.zeros_like(v) for k, v in trained.items()}

        seq_t, lab_t, wts_t = torch.from_numpy(seq), torch.from_numpy(lab), torch.from_numpy(wts)
        last_t = torch.from_numpy(last)
        loss_sum, loss_n = 0.0, 0.0
        for step in range(max_steps):
            cut = slice(step * batch_size, (step + 1) * batch_size)
            logits = _forward(params, tower, seq_t[:, cut])
            per_sample = functional.binary_cross_entropy_with_logits(
                logits, lab_t[:, cut], reduction="none"
            )
            for p in trained.values():
                p.grad = None
            (per_sample * wts_t[:, cut]).sum().backward()
            in_last = last_t[:, cut]
            loss_sum += float(per_sample.detach()[in_last].double().sum())
            loss_n += float(in_last.sum())
            active = steps > step
            _adam_step(
                trained,
                exp_avg,
                exp_avg_sq,
                active,
                step + 1,
                local.learning_rate,
                local.weight_decay,
            )
        yield _TrainedChunk(ids, rows_t, num_rows, valid, params, loss_sum, loss_n)


@torch.no_grad()
def _adam_step(
    params: dict[str, torch.Tensor],
    exp_avg: dict[str, torch.Tensor],
    exp_avg_sq: dict[str, torch.Tensor],
    active: torch.Tensor,
    step: int,
    lr: float,
    weight_decay: float,
) -> None:
    """``torch.optim.Adam``'s update, one independent optimiser per user row of
    the stacked tensors; users in ``~active`` are left exactly as they are.

    Every active user is at the same step count (all start together and a user
    only ever drops out), so one bias correction serves them all.
    """
    bias1 = 1 - _BETA1**step
    bias2_sqrt = math.sqrt(1 - _BETA2**step)
    every = bool(active.all())
    for name, param in params.items():
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        m = exp_avg[name].lerp(grad, 1 - _BETA1)
        v = exp_avg_sq[name].mul(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        denom = (v.sqrt() / bias2_sqrt).add_(_EPS)
        new = param.detach().addcdiv(m, denom, value=-lr / bias1)
        if every:
            exp_avg[name], exp_avg_sq[name] = m, v
            param.copy_(new)
        else:
            mask = active.view(-1, *([1] * (param.dim() - 1)))
            exp_avg[name] = torch.where(mask, m, exp_avg[name])
            exp_avg_sq[name] = torch.where(mask, v, exp_avg_sq[name])
            param.copy_(torch.where(mask, new, param.detach()))
