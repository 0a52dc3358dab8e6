"""One trainer interface for a node's users, with two implementations.

:class:`GroupTrainer` trains the node's user group as one client (one
optimiser over the group's interactions); :class:`PerUserTrainer` trains every
user alone from the global model and returns their interaction-weighted mean,
which makes FedAvg over nodes equal FedAvg with one user per client (see
:mod:`fedrec_flwr.train.peruser`). The client picks one for training
(``client-mode``) and one for personalised evaluation (``finetune-unit``) and
otherwise does not know which it has.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RoundKnobs, TrainingOptions
from ..datasets.negatives import InteractionSet
from ..datasets.prepare import ClientData
from ..models import Recommender, load_arrays, shared_arrays
from .evaluate import (
    EvalResult,
    evaluate_val_test,
    rank_logits,
    rank_val_test,
    with_full_ranking,
)
from .group import train_epochs, train_rating_epochs
from .looped import finetune_users_looped, train_users_looped
from .peruser import UserLevelDP, finetune_users_and_score, train_users_independently

__all__ = [
    "GroupTrainer",
    "LocalUpdate",
    "PerUserTrainer",
    "Trainer",
    "adam_state_arrays",
    "load_adam_state",
    "rank_val_test",
    "round_seed",
]

_FINETUNE = 0xF17E  # separates fine-tuning draws from training draws
_DP_NOISE = 0xD15E  # separates DP noise draws from the others


def round_seed(seed: int, partition_id: int, server_round: int, *extra: int) -> int:
    """A stable per-(run seed, client, round) seed."""
    entropy = [seed, partition_id, server_round, *extra]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass(frozen=True)
class LocalUpdate:
    """What one round of local training produced.

    Attributes
    ----------
    shared : dict of str to numpy.ndarray
        The shared arrays to send (personal layers not yet echoed).
    weight : int
        The FedAvg weight: training interactions.
    loss : float
        Mean training BCE of the last local epoch (the rating task: MSE).
    optimizer_state : dict of str to numpy.ndarray or None (default: None)
        ``optimizer-state='keep'``: the node's Adam state after this round
        (:func:`adam_state_arrays`), kept on the node; None otherwise.
    """

    shared: dict[str, np.ndarray]
    weight: int
    loss: float
    optimizer_state: dict[str, np.ndarray] | None = None


#: The per-parameter Adam state a kept optimizer carries (torch's own names).
_ADAM_FIELDS = ("step", "exp_avg", "exp_avg_sq")


def adam_state_arrays(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, np.ndarray]:
    """``optimizer``'s Adam state as arrays named ``<parameter>/<field>``.

    Parameters
    ----------
    model : torch.nn.Module
        Names the parameters.
    optimizer : torch.optim.Optimizer
        An Adam over them.

    Returns
    -------
    dict of str to numpy.ndarray
        ``step``, ``exp_avg`` and ``exp_avg_sq`` per parameter, copies.
        Parameters without state (never updated) are left out;
        :func:`load_adam_state` then starts them afresh, as Adam itself would.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param, {})
        for field in _ADAM_FIELDS:
            if field in state:
                arrays[f"{name}/{field}"] = state[field].detach().cpu().numpy().copy()
    return arrays


def load_adam_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]
) -> None:
    """Put :func:`adam_state_arrays`' output into a fresh Adam over ``model``'s parameters.

    Parameters
    ----------
    model : torch.nn.Module
        Names the parameters.
    optimizer : torch.optim.Optimizer
        A fresh Adam over all of ``model.parameters()``, in their order.
    arrays : mapping of str to numpy.ndarray
        As :func:`adam_state_arrays` returns them.

    Raises
    ------
    ValueError
        If ``arrays`` names a parameter ``model`` lacks, or a state of another shape.
    """
    params = dict(model.named_parameters())
    index = {name: i for i, name in enumerate(params)}
    unknown = sorted({key.rsplit("/", 1)[0] for key in arrays} - set(params))
    if unknown:
        raise ValueError(f"stored optimizer state for parameters the model lacks: {unknown}")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        name, field = key.rsplit("/", 1)
        tensor = torch.from_numpy(np.array(value, copy=True))
        if field != "step" and tensor.shape != params[name].shape:
            raise ValueError(
                f"stored optimizer state {key} has shape {tuple(tensor.shape)}, the "
                f"parameter {tuple(params[name].shape)}"
            )
        state.setdefault(index[name], {})[field] = tensor
    # load_state_dict, not a direct write: torch's own checks and dtype rules apply.
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


class Trainer(abc.ABC):
    """Local training and personalised ranking of one node's users.

    Parameters
    ----------
    training : TrainingOptions
        Learning rate, epochs, batch size, negatives, weight decay, fine-tuning.
    seed : int
        The run seed; every draw is seeded from it, the node or user, and the round.
    """

    def __init__(self, training: TrainingOptions, seed: int) -> None:
        self.training = training
        self.seed = seed

    @abc.abstractmethod
    def init_private(self, model: Recommender, data: ClientData) -> None:
        """Draw the users' private rows for a node that has none stored yet."""

    @abc.abstractmethod
    def train(
        self,
        model: Recommender,
        data: ClientData,
        exclude: InteractionSet,
        *,
        server_round: int,
        knobs: RoundKnobs,
        anchor: Mapping[str, np.ndarray],
        optimizer_state: Mapping[str, np.ndarray] | None = None,
    ) -> LocalUpdate:
        """One round of local training from the global shared arrays in ``model``.

        Afterwards ``model`` holds the users' trained private rows (they stay
        on the node); the returned update carries what is sent. ``anchor``
        holds the global arrays the FedProx term pulls towards (personal
        layers left out); ``optimizer_state`` the node's Adam state from its
        last round, used under ``optimizer-state='keep'`` only (None or
        ``fresh``: a fresh Adam).
        """

    @abc.abstractmethod
    def personalised_rank(
        self,
        model: Recommender,
        data: ClientData,
        exclude: InteractionSet,
        *,
        server_round: int,
        knobs: RoundKnobs,
        personal: Sequence[str],
    ) -> tuple[EvalResult, EvalResult]:
        """Fine-tune for ``knobs.finetune_epochs`` (0 = none), then rank the
        validation and test items; the fine-tuned copy is not kept."""


def _group_epochs(
    model: Recommender,
    data: ClientData,
    exclude: InteractionSet,
    training: TrainingOptions,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
    anchor: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """The task's group training: MSE on the ratings when ``data`` has them, else
    BCE with sampled negatives."""
    if data.ratings is not None:
        return train_rating_epochs(
            model,
            data.train_users,
            data.train_items,
            data.ratings.train_ratings,
            offset=data.ratings.mean,
            epochs=epochs,
            batch_size=training.batch_size,
            optimizer=optimizer,
            rng=rng,
            proximal_mu=proximal_mu,
            anchor=anchor,
            embedding_l2=training.embedding_l2,
        )
    return train_epochs(
        model,
        data.train_users,
        data.train_items,
        exclude,
        epochs=epochs,
        batch_size=training.batch_size,
        optimizer=optimizer,
        num_negatives=training.num_negatives,
        rng=rng,
        proximal_mu=proximal_mu,
        anchor=anchor,
        embedding_l2=training.embedding_l2,
    )


class GroupTrainer(Trainer):
    """The node's user group trained as one client (one Adam over the group);
    for the rating task, by MSE on its ratings."""

    def init_private(self, model: Recommender, data: ClientData) -> None:
        model.reset_private(round_seed(self.seed, data.partition_id, 0))

    def train(
        self,
        model: Recommender,
        data: ClientData,
        exclude: InteractionSet,
        *,
        server_round: int,
        knobs: RoundKnobs,
        anchor: Mapping[str, np.ndarray],
        optimizer_state: Mapping[str, np.ndarray] | None = None,
    ) -> LocalUpdate:
        t = self.training
        rng = np.random.default_rng(round_seed(self.seed, data.partition_id, server_round))
        mu = knobs.proximal_mu
        pulled = {n: torch.from_numpy(np.asarray(a)) for n, a in anchor.items()} if mu > 0 else None
        # By default a fresh optimizer each round: no optimizer state crosses
        # rounds, as in FedAvg (the server only averages parameters). With
        # optimizer-state='keep' the node's moments go on from its last round.
        optimizer = torch.optim.Adam(
            model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        keep = t.optimizer_state == "keep"
        if keep and optimizer_state:
            load_adam_state(model, optimizer, optimizer_state)
        loss = _group_epochs(
            model,
            data,
            exclude,
            t,
            epochs=t.local_epochs,
            optimizer=optimizer,
            rng=rng,
            proximal_mu=mu,
            anchor=pulled,
        )
        kept = adam_state_arrays(model, optimizer) if keep else None
        return LocalUpdate(
            shared=dict(shared_arrays(model)),
            weight=data.num_train,
            loss=loss,
            optimizer_state=kept,
        )

    def personalised_rank(
        self,
        model: Recommender,
        data: ClientData,
        exclude: InteractionSet,
        *,
        server_round: int,
        knobs: RoundKnobs,
        personal: Sequence[str],
    ) -> tuple[EvalResult, EvalResult]:
        t = self.training
        params = [
            p
            for n, p in model.named_parameters()
            if knobs.finetune_scope == "all" or model.is_private(n) or n in personal
        ]
        if knobs.finetune_epochs > 0 and params:  # no private rows: nothing to fine-tune
            seed = round_seed(self.seed, data.partition_id, server_round, _FINETUNE)
            optimizer = torch.optim.Adam(params, lr=t.finetune_lr, weight_decay=t.weight_decay)
            _group_epochs(
                model,
                data,
                exclude,
                t,
                epochs=knobs.finetune_epochs,
                optimizer=optimizer,
                rng=np.random.default_rng(seed),
            )
        return evaluate_val_test(model, data, t.ks, full=t.full_ranking)


class PerUserTrainer(Trainer):
    """Every user of the node trained alone, as its own one-user client.

    Parameters
    ----------
    training : TrainingOptions
        As for :class:`Trainer`.
    seed : int
        As for :class:`Trainer`.
    dp : UserLevelDP, optional (default: None)
        User-level DP: clip every user's update and noise the node's sum
        (:class:`~fedrec_flwr.train.peruser.UserLevelDP`); its ``noise_seed``
        is the node's secret base seed, mixed with the node and the round.
    """

    def __init__(self, training: TrainingOptions, seed: int, dp: UserLevelDP | None = None) -> None:
        super().__init__(training, seed)
        self.dp = dp

    def _user_seeds(self, data: ClientData, server_round: int, *extra: int) -> list[int]:
        # The user's code as partition id: the seed a one-user client would use.
        return [round_seed(self.seed, int(code), server_round, *extra) for code in data.users]

    def init_private(self, model: Recommender, data: ClientData) -> None:
        """Each user's rows from its own seed, drawn as a one-user client draws them
        (``reset_private`` with the user's code as partition id)."""
        with torch.no_grad():
            privates = [p for n, p in model.named_parameters() if model.is_private(n)]
            for row, seed in enumerate(self._user_seeds(data, 0)):
                gen = torch.Generator().manual_seed(seed)
                for param in privates:
                    param[row : row + 1].normal_(0.0, 0.01, generator=gen)

    def train(
        self,
        model: Recommender,
        data: ClientData,
        exclude: InteractionSet,
        *,
        server_round: int,
        knobs: RoundKnobs,
        anchor: Mapping[str, np.ndarray],
        optimizer_state: Mapping[str, np.ndarray] | None = None,
    ) -> LocalUpdate:
        if optimizer_state:  # RunConfig refuses optimizer-state='keep' with per-user mode
            raise ValueError("client-mode='per-user' starts every user's Adam afresh")
        if knobs.proximal_mu or knobs.private_layers:
            raise ValueError(
                "client-mode='per-user' trains plain FedAvg clients: the server sent "
                "proximal-mu or private-layers, which it does not support"
            )
        if data.ratings is not None:
            raise ValueError(
                "client-mode='per-user' with task='rating': per-user training is pairwise "
                "BCE with sampled negatives; use client-mode='group'"
            )
        t = self.training
        dp = self.dp
        if dp is not None:
            dp = dataclasses.replace(
                dp,
                noise_seed=round_seed(dp.noise_seed, data.partition_id, server_round, _DP_NOISE),
            )
        if not model.pairwise:
            update = train_users_looped(
                model,
                data.context(),
                exclude,
                self._user_seeds(data, server_round),
                epochs=t.local_epochs,
                batch_size=t.batch_size,
                learning_rate=t.learning_rate,
                num_negatives=t.num_negatives,
                weight_decay=t.weight_decay,
                dp=dp,
            )
        else:
            update = train_users_independently(
                model,
                data.train_users,
                data.train_items,
                exclude,
                self._user_seeds(data, server_round),
                epochs=t.local_epochs,
                batch_size=t.batch_size,
                learning_rate=t.learning_rate,
                num_negatives=t.num_negatives,
                weight_decay=t.weight_decay,
                dp=dp,
            )
        load_arrays(model, update.private, private=True)
        return LocalUpdate(shared=dict(update.shared), weight=update.weight, loss=update.loss)

    def personalised_rank(
        self,
        model: Recommender,
        data: ClientData,
        exclude: InteractionSet,
        *,
        server_round: int,
        knobs: RoundKnobs,
        personal: Sequence[str],
    ) -> tuple[EvalResult, EvalResult]:
        if personal:  # a server may send private-layers per round
            raise ValueError(
                "private-layers with per-user fine-tuning: personal layers belong to "
                "a client, not to each user"
            )
        t = self.training
        if knobs.finetune_epochs <= 0:
            return rank_val_test(model, data, t.ks, full=t.full_ranking)
        if not model.pairwise:
            return finetune_users_looped(
                model,
                data.context(),
                exclude,
                self._user_seeds(data, server_round, _FINETUNE),
                data.eval_negatives,
                t.ks,
                scope=knobs.finetune_scope,
                epochs=knobs.finetune_epochs,
                batch_size=t.batch_size,
                learning_rate=t.finetune_lr,
                num_negatives=t.num_negatives,
                weight_decay=t.weight_decay,
                full=t.full_ranking,
            )
        # One fine-tuning serves both parts: columns 0/1 are the val/test items;
        # with full ranking the whole catalogue follows the sampled candidates.
        sampled = np.concatenate(
            [data.val_items[:, None], data.test_items[:, None], data.eval_negatives], axis=1
        )
        width = sampled.shape[1]
        candidates = sampled
        if t.full_ranking:
            catalogue = np.broadcast_to(np.arange(data.num_items), (data.num_users, data.num_items))
            candidates = np.concatenate([sampled, catalogue], axis=1)
        scores = finetune_users_and_score(
            model,
            data.train_users,
            data.train_items,
            exclude,
            self._user_seeds(data, server_round, _FINETUNE),
            candidates,
            scope=knobs.finetune_scope,
            epochs=knobs.finetune_epochs,
            batch_size=t.batch_size,
            learning_rate=t.finetune_lr,
            num_negatives=t.num_negatives,
            weight_decay=t.weight_decay,
        )
        val, test = (
            rank_logits(
                torch.from_numpy(np.concatenate([scores[:, [column]], scores[:, 2:width]], axis=1)),
                t.ks,
            )
            for column in (0, 1)
        )
        if t.full_ranking:
            val, test = (
                with_full_ranking(
                    result,
                    scores[:, width:],
                    held_out,
                    t.ks,
                    exclude_users=data.train_users,
                    exclude_items=data.train_items,
                )
                for held_out, result in ((data.val_items, val), (data.test_items, test))
            )
        return val, test
