"""Group training: BCE with sampled negatives, one optimiser over the whole group.

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

__all__ = ["train_epochs"]


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

    Returns
    -------
    float
        Mean BCE loss over all samples of the last epoch (a model with its own
        objective, ``pairwise = False``: its mean loss, from its bound data,
        which must be ``users``/``items``).

    Raises
    ------
    ValueError
        For FedProx (``proximal_mu`` > 0) with a model trained by its own objective.
    """
    if isinstance(model, Recommender) and not model.pairwise:
        if proximal_mu > 0:
            raise ValueError(
                f"{type(model).__name__} is trained by its own objective, which has no "
                "FedProx term: set proximal-mu=0"
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
    for _ in range(epochs):
        negatives = sample_train_negatives(rng, users, exclude, num_negatives)
        all_items = torch.cat([pos_items, torch.from_numpy(negatives.reshape(-1))])
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(all_users[idx], all_items[idx]), labels[idx])
            objective = loss / len(idx)
            if pulled:
                prox = sum(((p - a) ** 2).sum() for p, a in pulled)
                objective = objective + 0.5 * proximal_mu * prox
            objective.backward()
            optimizer.step()
            total += float(loss.detach())
        mean_loss = total / len(labels)
    return mean_loss
