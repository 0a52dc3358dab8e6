"""Group training, one optimiser over the whole group: BCE with sampled
negatives (ranking, :func:`train_epochs`) or MSE on the rating (rating
prediction, :func:`train_rating_epochs`).

The same functions serve a federated client (its user group) and the
centralised baseline (every user), so the two are directly comparable.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..datasets.negatives import InteractionSet, sample_train_negatives
from ..models.base import Recommender
from ..protocol import PROXIMAL_MU_KEY

__all__ = ["train_epochs", "train_rating_epochs"]


def train_epochs(
    model: nn.Module,
    users: np.ndarray,
    items: np.ndarray,
    exclude: InteractionSet,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    num_negatives: int,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
    anchor: Mapping[str, torch.Tensor] | None = None,
    embedding_l2: float = 0.0,
) -> float:
    """Train on implicit positives plus fresh negatives each epoch.

    Parameters
    ----------
    model : torch.nn.Module
        Scores ``(users, items)`` as logits.
    users, items : numpy.ndarray
        Positive interactions (model-local user index, item code).
    exclude : InteractionSet
        Pairs never drawn as negatives: the *training* interactions only, so
        held-out items stay eligible (see :mod:`fedrec_flwr.datasets.negatives`).
    epochs, batch_size : int
        Passes over the data and mini-batch size.
    optimizer : torch.optim.Optimizer
        Over ``model``'s parameters. The caller owns it, so its state can span
        calls (centralised epochs) or start fresh (each federated round).
    num_negatives : int
        Negatives per positive, redrawn every epoch.
    rng : numpy.random.Generator
        Source of all randomness here (negatives, shuffling): same seed, same run.
    proximal_mu : float (default: 0.0)
        FedProx: adds ``mu/2 * ||w - anchor||^2`` to each batch's mean loss.
    anchor : mapping of str to torch.Tensor, optional (default: None)
        Parameter name -> value the proximal term pulls towards (the global
        model); parameters not named here (user embeddings) are not pulled.
    embedding_l2 : float (default: 0.0)
        Adds ``embedding_l2`` times the squared norm of the embedding rows each
        sample reads (its user's rows of the private tables, its item's rows of
        :meth:`~fedrec_flwr.models.base.Recommender.item_tables`, negatives
        included), averaged over the batch: the regulariser of Rendle et al.
        (2020)'s tuned dot product. Unlike Adam's ``weight_decay``, it leaves
        the rows a batch does not read alone.

    Returns
    -------
    float
        Mean BCE loss over all samples of the last epoch (a model with its own
        objective, ``pairwise = False``: its mean loss, from its bound data,
        which must be ``users``/``items``).

    Raises
    ------
    ValueError
        For FedProx (``proximal_mu`` > 0) or ``embedding_l2`` > 0 with a model
        trained by its own objective.
    """
    if isinstance(model, Recommender) and not model.pairwise:
        for key, value in ((PROXIMAL_MU_KEY, proximal_mu), ("embedding-l2", embedding_l2)):
            if value > 0:
                raise ValueError(
                    f"{type(model).__name__} is trained by its own objective, which has no "
                    f"{key} term: set {key}=0"
                )
        return model.train_epochs(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            num_negatives=num_negatives,
            rng=rng,
            exclude=exclude,
        )
    model.train()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    pos_users = torch.from_numpy(np.asarray(users, dtype=np.int64))
    pos_items = torch.from_numpy(np.asarray(items, dtype=np.int64))
    n_pos = len(pos_users)
    labels = torch.cat([torch.ones(n_pos), torch.zeros(n_pos * num_negatives)])
    all_users = torch.cat([pos_users, pos_users.repeat_interleave(num_negatives)])
    mean_loss = float("nan")
    params = dict(model.named_parameters())
    pulled = (
        [(params[name], value.detach()) for name, value in anchor.items()]
        if proximal_mu > 0 and anchor
        else []
    )
    user_rows, item_rows = _read_tables(model) if embedding_l2 > 0 else ([], [])
    for _ in range(epochs):
        negatives = sample_train_negatives(rng, users, exclude, num_negatives)
        all_items = torch.cat([pos_items, torch.from_numpy(negatives.reshape(-1))])
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            u, i = all_users[idx], all_items[idx]
            loss = loss_fn(model(u, i), labels[idx])
            objective = loss / len(idx)
            if user_rows or item_rows:
                objective = objective + embedding_l2 * _row_norms(user_rows, item_rows, u, i) / len(
                    idx
                )
            if pulled:
                prox = sum(((p - a) ** 2).sum() for p, a in pulled)
                objective = objective + 0.5 * proximal_mu * prox
            objective.backward()
            optimizer.step()
            total += float(loss.detach())
        mean_loss = total / len(labels)
    return mean_loss


def train_rating_epochs(
    model: nn.Module,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    *,
    offset: float,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
    anchor: Mapping[str, torch.Tensor] | None = None,
    embedding_l2: float = 0.0,
) -> float:
    """Train on explicit ratings: squared error of ``model(u, i) + offset``.

    Parameters
    ----------
    model : torch.nn.Module
        Scores ``(users, items)``; its output plus ``offset`` is the predicted rating.
    users, items, ratings : numpy.ndarray
        Training ratings (model-local user index, item code, rating).
    offset : float
        Added to every output: the mean training rating
        (:attr:`~fedrec_flwr.datasets.prepare.RatingRows.mean`), so a model
        whose output starts near 0 starts at the global mean.
    epochs, batch_size : int
        Passes over the ratings and mini-batch size.
    optimizer : torch.optim.Optimizer
        Over ``model``'s parameters (see :func:`train_epochs`).
    rng : numpy.random.Generator
        Shuffles the ratings each epoch: same seed, same run.
    proximal_mu : float (default: 0.0)
        FedProx: adds ``mu/2 * ||w - anchor||^2`` to each batch's mean loss.
    anchor : mapping of str to torch.Tensor, optional (default: None)
        As for :func:`train_epochs`.
    embedding_l2 : float (default: 0.0)
        Adds ``embedding_l2`` times the squared norm of the embedding rows each
        rating reads (its user's rows of the private tables, its item's rows of
        :meth:`~fedrec_flwr.models.base.Recommender.item_tables`), averaged over
        the batch: Surprise's ``reg``. Unlike Adam's ``weight_decay``, a row no
        rating of the batch reads is not pulled, which matters when every
        round starts a fresh Adam (its first steps would shrink every
        untouched row by about the learning rate).

    Returns
    -------
    float
        Mean squared error over the ratings of the last epoch (nan without
        ratings; the penalty is not included).
    """
    model.train()
    all_users = torch.from_numpy(np.asarray(users, dtype=np.int64))
    all_items = torch.from_numpy(np.asarray(items, dtype=np.int64))
    targets = torch.from_numpy(np.asarray(ratings, dtype=np.float32))
    params = dict(model.named_parameters())
    pulled = (
        [(params[name], value.detach()) for name, value in anchor.items()]
        if proximal_mu > 0 and anchor
        else []
    )
    user_rows, item_rows = _read_tables(model) if embedding_l2 > 0 else ([], [])
    mean_loss = float("nan")
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(targets)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            error = model(all_users[idx], all_items[idx]) + offset - targets[idx]
            loss = (error * error).sum()
            objective = loss / len(idx)
            if user_rows or item_rows:
                u, i = all_users[idx], all_items[idx]
                objective = objective + embedding_l2 * _row_norms(user_rows, item_rows, u, i) / len(
                    idx
                )
            if pulled:
                prox = sum(((p - a) ** 2).sum() for p, a in pulled)
                objective = objective + 0.5 * proximal_mu * prox
            objective.backward()
            optimizer.step()
            total += float(loss.detach())
        if len(targets):
            mean_loss = total / len(targets)
    return mean_loss


def _read_tables(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The tables ``embedding-l2`` penalises: the private (user-row) parameters
    and the item tables of a :class:`Recommender`."""
    if not isinstance(model, Recommender):
        raise ValueError("embedding-l2 needs a Recommender (it names its user and item tables)")
    params = dict(model.named_parameters())
    user_rows = [p for name, p in params.items() if model.is_private(name)]
    item_rows = [params[name] for name in model.item_tables() if name in params]
    return user_rows, item_rows


def _row_norms(
    user_rows: list[nn.Parameter],
    item_rows: list[nn.Parameter],
    users: torch.Tensor,
    items: torch.Tensor,
) -> torch.Tensor:
    """Squared norm of the rows a batch reads, summed over its samples (a row
    read twice counts twice)."""
    rows = [t[users] for t in user_rows] + [t[items] for t in item_rows]
    return torch.stack([(r * r).sum() for r in rows]).sum()
