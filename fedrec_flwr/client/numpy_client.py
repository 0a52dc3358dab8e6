"""The client: a Flower ``NumPyClient`` over one user group, thin.

It receives and returns only the *shared* arrays (by name, see
:meth:`NCFClient.array_names`). The user embeddings of its users are private:
they are kept in the node's ``context.state`` between rounds and never appear in
a reply. The learning is delegated to a :class:`~fedrec_flwr.train.trainer.Trainer`
(``client-mode``: the group as one client, or every user alone) and personal
layers to :class:`~fedrec_flwr.client.personal.PersonalLayers`.

Per-round knobs (``proximal-mu``, ``private-layers``, ``finetune-epochs``,
``finetune-scope``) are read from the message's config first, so a server can
set them per round (:meth:`~fedrec_flwr.config.RunConfig.round_knobs`). With
``finetune-epochs`` > 0 or personal layers, ``val-*``/``test-*`` are the
personalised model's metrics and ``global-val-*``/``global-test-*`` the global
model's; the fine-tuned copy is discarded. ``item-counts`` in the message config
asks ``fit`` for the group's training interactions per item (row-wise item
aggregation).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.compat.client.numpy_client import NumPyClient

from ..config import RunConfig
from ..datasets.prepare import ClientData
from ..models import load_arrays, private_arrays, shared_arrays, shared_names
from ..privacy.local import perturb_item_update
from ..protocol import (
    COMPUTE_SECONDS_KEY,
    DP_NOISE_SEED_KEY,
    GLOBAL_PREFIX,
    ITEM_COUNTS_KEY,
    OPTIMIZER_STATE_KEY,
    PRIVATE_STATE_KEY,
    SERVE_TARGET,
    TEST_PART,
    TRAIN_LOSS_KEY,
    USER_IDS_STATE_KEY,
    VAL_PART,
    WARM_STATE_KEY,
    WARM_USERS_KEY,
    node_metrics,
    server_round,
    sum_key,
)
from ..serving.mod import user_ids_of, user_ids_record
from ..serving.scoring import top_k
from ..threads import CLIENT_DEFAULT_THREADS, apply_num_threads
from ..train.evaluate import EvalResult, evaluate_val_test
from ..train.peruser import UserLevelDP
from ..train.trainer import GroupTrainer, PerUserTrainer, Trainer, round_seed
from .personal import PersonalLayers

__all__ = ["NCFClient"]

_LDP = 0x1D9  # separates local-DP draws from the DP noise draws


class NCFClient(NumPyClient):
    """Train and evaluate a recommender on one user group.

    Parameters
    ----------
    data : ClientData
        The group's users, training interactions and evaluation candidates.
    config : RunConfig
        The run's settings (its ``model`` and ``training`` groups and the seed).
    state : flwr.app.RecordDict
        The node's ``context.state``: private user embeddings (and, with
        ``optimizer-state='keep'``, the node's Adam state) are read from and
        written to it, so they persist across rounds on this node only.
    noise_seed : int, optional (default: None)
        The node's secret seed for DP and LDP noise (node-config
        ``dp-noise-seed``). None: derived from the run seed, which the server
        knows, so the noise is reproducible but could be subtracted; a warning
        says so when noise is on.
    """

    def __init__(
        self,
        data: ClientData,
        config: RunConfig,
        state: RecordDict,
        noise_seed: int | None = None,
    ) -> None:
        self.data = data
        self.config = config
        self.state = state
        training, seed = config.training, config.data.seed
        privacy = config.privacy
        noisy = privacy.dp == "user" or privacy.ldp_noise > 0 or privacy.pseudo_items > 0
        if noise_seed is None and noisy:
            warnings.warn(
                f"node-config {DP_NOISE_SEED_KEY} is not set: the DP/LDP noise is derived "
                "from the run seed, which the server knows (fine for a simulation; set a "
                "secret per node in a deployment)",
                stacklevel=2,
            )
        self.noise_seed = seed if noise_seed is None else noise_seed
        # One thread per client unless num-threads says otherwise: simulation
        # runs several clients side by side on one machine's CPUs.
        apply_num_threads(training.num_threads, default=CLIENT_DEFAULT_THREADS)
        self.model = config.model.build(data.num_users, data.num_items, seed=seed)
        self.model.bind(data.context())
        self.trainer: Trainer
        if training.client_mode == "per-user":
            dp = (
                UserLevelDP(privacy.dp_clip, config.node_noise_multiplier(), self.noise_seed)
                if privacy.dp == "user"
                else None
            )
            self.trainer = PerUserTrainer(training, seed, dp=dp)
        else:
            self.trainer = GroupTrainer(training, seed)
        self.finetuner: Trainer = (PerUserTrainer if training.finetunes_per_user else GroupTrainer)(
            training, seed
        )
        self.personal = PersonalLayers(state)
        if PRIVATE_STATE_KEY in state.array_records:
            record = state.array_records[PRIVATE_STATE_KEY]
            load_arrays(self.model, {k: v.numpy() for k, v in record.items()}, private=True)
        else:
            self.trainer.init_private(self.model, data)
            self._warm_start()
        # Which training interactions negatives avoid (see TrainingOptions.negative_pool).
        self.exclude = data.negative_pool(training.negative_pool)

    def user_ids(self) -> np.ndarray:
        """Raw id (text) of each local user (global codes when the data has none)."""
        if self.data.raw_user_ids is not None:
            return self.data.raw_user_ids
        return np.asarray([str(u) for u in self.data.users.tolist()], dtype=np.str_)

    def _warm_start(self) -> None:
        """Copy an earlier run's rows for the users it had (``init-from``).

        Rows are matched by raw user id, so a log that grew (new users, other
        order) keeps every known user's row; new users keep their fresh rows.
        """
        if WARM_STATE_KEY not in self.state.array_records:
            return
        old_ids = user_ids_of(self.state.config_records.get(WARM_USERS_KEY, {}))  # type: ignore[arg-type]
        where = {u: i for i, u in enumerate(old_ids)}
        ids = self.user_ids().tolist()
        new_rows = np.asarray([i for i, u in enumerate(ids) if u in where], dtype=np.int64)
        old_rows = np.asarray([where[ids[i]] for i in new_rows], dtype=np.int64)
        current = private_arrays(self.model)
        for name, array in self.state.array_records[WARM_STATE_KEY].items():
            if name in current and len(new_rows):
                current[name][new_rows] = array.numpy()[old_rows]
        load_arrays(self.model, current, private=True)

    def item_ids(self) -> np.ndarray:
        """Raw id (text) of each item code (the codes themselves when the data has none)."""
        if self.data.raw_item_ids is not None:
            return self.data.raw_item_ids
        return np.asarray([str(i) for i in range(self.data.num_items)], dtype=np.str_)

    def recommend(
        self, k: int, *, exclude: str = "train", users: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items and scores of local users, their seen items excluded.

        Parameters
        ----------
        k : int
            Items per user.
        exclude : {"none", "train", "all"} (default: "train")
            Exclude nothing, each user's training items, or also their
            validation and test items.
        users : numpy.ndarray, optional (default: None = every local user)
            Local user indices, in output order.
        """
        data = self.data
        users = np.arange(data.num_users) if users is None else np.asarray(users, np.int64)
        if exclude == "none":
            seen_users = seen_items = np.zeros(0, dtype=np.int64)
        else:
            seen_users, seen_items = data.train_users, data.train_items
            if exclude == "all":
                held_users, held_items = data.held_out()
                seen_users = np.concatenate([seen_users, held_users])
                seen_items = np.concatenate([seen_items, held_items])
        wanted = np.zeros(data.num_users, dtype=bool)
        wanted[users] = True
        keep = wanted[seen_users]  # only the asked users' pairs
        with self.model.history_for(SERVE_TARGET):  # a sequence model reads everything known
            return top_k(
                self.model, users, k, exclude_users=seen_users[keep], exclude_items=seen_items[keep]
            )

    def array_names(self) -> list[str]:
        """Names of the shared arrays, in the order of the NumPy lists."""
        return shared_names(self.model)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Shared arrays only; user embeddings are never returned."""
        return list(shared_arrays(self.model).values())

    def set_shared(self, parameters: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Load the shared arrays (in :meth:`array_names` order); return them by name."""
        names = self.array_names()
        if len(parameters) != len(names):
            raise ValueError(
                f"received {len(parameters)} arrays, the model shares {len(names)}: {names}"
            )
        received = dict(zip(names, parameters, strict=True))
        load_arrays(self.model, received, private=False)
        return received

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train locally from the global shared arrays; keep user embeddings here.

        Returns the updated shared arrays, the FedAvg weight (training
        interactions) and ``train-loss`` plus the node's identity
        (:func:`~fedrec_flwr.protocol.node_metrics`: the server orders replies
        by ``partition-id`` and checks ``num-partitions``).
        """
        started = time.perf_counter()
        received = self.set_shared(parameters)
        knobs = self.config.round_knobs(config)
        personal = PersonalLayers.names(self.array_names(), knobs.private_layers)
        self.personal.load(self.model, personal)
        kept = self.state.array_records.get(OPTIMIZER_STATE_KEY)
        update = self.trainer.train(
            self.model,
            self.data,
            self.exclude,
            server_round=server_round(config),
            knobs=knobs,
            anchor={n: a for n, a in received.items() if n not in personal},
            optimizer_state={k: v.numpy() for k, v in kept.items()} if kept else None,
        )
        self.state[PRIVATE_STATE_KEY] = ArrayRecord(
            {k: Array(v) for k, v in private_arrays(self.model).items()}
        )
        if update.optimizer_state is not None:  # optimizer-state='keep': stays on the node
            self.state[OPTIMIZER_STATE_KEY] = ArrayRecord(
                {k: Array(v) for k, v in update.optimizer_state.items()}
            )
        self.state[USER_IDS_STATE_KEY] = user_ids_record(self.user_ids().tolist())
        shared = dict(update.shared)
        privacy, data = self.config.privacy, self.data
        if privacy.ldp_clip > 0 or privacy.pseudo_items > 0:
            rng = np.random.default_rng(
                round_seed(self.noise_seed, data.partition_id, server_round(config), _LDP)
            )
            shared = perturb_item_update(
                received,
                shared,
                self.model.item_tables(),
                clip=privacy.ldp_clip,
                noise=privacy.ldp_noise,
                pseudo_items=privacy.pseudo_items,
                rng=rng,
            )
        self.personal.keep(personal, shared, received)
        metrics: dict[str, Any] = dict(
            node_metrics(data.partition_id, data.num_partitions, data.num_users)
        )
        if privacy.dp != "user":
            # Under user-level DP the loss would be an un-noised release of the
            # users' data; the weight is then the (public) number of users.
            metrics[TRAIN_LOSS_KEY] = update.loss
        if config.get(ITEM_COUNTS_KEY):
            counts = np.bincount(data.train_items, minlength=data.num_items)
            metrics[ITEM_COUNTS_KEY] = [int(c) for c in counts]
        metrics[COMPUTE_SECONDS_KEY] = time.perf_counter() - started
        return [shared[n] for n in self.array_names()], update.weight, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Rank validation and test items of this group's users (the rating
        task: predict their validation and test ratings).

        Returns the validation BCE loss (MSE), the number of users (the weight),
        and metric *sums* (``val-hr@10-sum`` ..., ``val-sq-error-sum``,
        ``val-abs-error-sum``, ``val-ratings-sum``) so the server can compute
        exact global values. With personalisation on (``finetune-epochs`` > 0 or
        ``private-layers``), ``val-``/``test-`` are the personalised model's and
        ``global-val-``/``global-test-`` the global model's.
        """
        started = time.perf_counter()
        self.set_shared(parameters)
        data = self.data
        metrics: dict[str, Any] = node_metrics(
            data.partition_id, data.num_partitions, data.num_users
        )
        knobs = self.config.round_knobs(config)
        personal = PersonalLayers.names(self.array_names(), knobs.private_layers)
        ks = self.config.training.ks
        ranked = evaluate_val_test(self.model, data, ks, full=self.config.training.full_ranking)
        personalised = bool(personal) or knobs.finetune_epochs > 0
        if personalised:
            _add_sums(metrics, ranked, GLOBAL_PREFIX)
            self.personal.load(self.model, personal)
            # Nothing of the fine-tuned copy is stored: the next message rebuilds
            # the model from the global arrays and the stored private state.
            ranked = self.finetuner.personalised_rank(
                self.model,
                data,
                self.exclude,
                server_round=server_round(config),
                knobs=knobs,
                personal=personal,
            )
        _add_sums(metrics, ranked, "")
        metrics[COMPUTE_SECONDS_KEY] = time.perf_counter() - started
        return ranked[0].loss, data.num_users, metrics


def _add_sums(metrics: dict[str, Any], ranked: tuple[EvalResult, EvalResult], prefix: str) -> None:
    """``{prefix}val-*-sum`` and ``{prefix}test-*-sum`` of a (val, test) ranking."""
    for part, result in zip((VAL_PART, TEST_PART), ranked, strict=True):
        metrics.update({sum_key(part, k, prefix): v for k, v in result.sums.items()})
