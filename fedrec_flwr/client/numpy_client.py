"""The NCF client: a Flower ``NumPyClient`` over one user group.

It receives and returns only the *shared* arrays (by name, see
:meth:`NCFClient.array_names`). The user embeddings of its users are private:
they are kept in the node's ``context.state`` between rounds and never appear in
a reply.

Strategy knobs (each read from the message's config first, so a server can set
them per round, else from the run config; see :meth:`RunConfig.round_knobs
<fedrec_flwr.config.RunConfig.round_knobs>`):

- ``proximal-mu``: FedProx term on the shared parameters during ``fit``.
- ``private-layers``: shared-parameter prefixes kept private across rounds
  (FedPer-style personal layers): the client trains its own copy, stored in
  ``context.state``, and echoes the server's copy back unchanged.
- ``finetune-epochs``: personalised evaluation. ``val-*``/``test-*`` are then
  the personalised model's (global model + personal layers, fine-tuned locally
  for that many epochs on the group's training data) and ``global-val-*``/
  ``global-test-*`` the global model's; the fine-tuned copy is discarded.
- ``finetune-scope``: ``private`` (default) fine-tunes only the user embeddings
  and personal layers, re-aligning them to the new global item embeddings
  without moving those; ``all`` fine-tunes every parameter.
- ``finetune-unit`` (run config): ``user`` fine-tunes a copy per user, each on
  its own interactions alone (as a one-user client would), instead of one copy
  for the whole group.
- ``client-mode`` (run config): ``per-user`` trains every user of the group as
  its own FedAvg client and returns their interaction-weighted mean (see
  :mod:`fedrec_flwr.train.peruser`); fine-tuning is then per user too.
  ``negative-pool`` picks the training-negative pool.
- ``item-counts`` (message config only): when true, ``fit`` also reports
  ``item-counts``, the group's training interactions per item, for row-wise
  item aggregation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.compat.client.numpy_client import NumPyClient

from ..config import RunConfig
from ..datasets.prepare import ClientData
from ..models.ncf import NCF, is_private, load_arrays, private_arrays, shared_arrays
from ..protocol import (
    COMPUTE_SECONDS_KEY,
    GLOBAL_PREFIX,
    ITEM_COUNTS_KEY,
    PERSONAL_STATE_KEY,
    PRIVATE_STATE_KEY,
    TEST_PART,
    TRAIN_LOSS_KEY,
    VAL_PART,
    node_metrics,
    server_round,
    sum_key,
)
from ..threads import CLIENT_DEFAULT_THREADS, apply_num_threads
from ..train.evaluate import evaluate_ranking, rank_logits
from ..train.group import train_epochs
from ..train.peruser import finetune_users_and_score, train_users_independently

__all__ = ["NCFClient"]


class NCFClient(NumPyClient):
    """Train and evaluate NCF on one user group.

    Parameters
    ----------
    data : ClientData
        The group's users, training interactions and evaluation candidates.
    config : RunConfig
        The run's settings (its ``model`` and ``training`` groups and the seed).
    state : flwr.app.RecordDict
        The node's ``context.state``: private user embeddings are read from and
        written to it, so they persist across rounds on this node only.
    """

    def __init__(self, data: ClientData, config: RunConfig, state: RecordDict) -> None:
        self.data = data
        self.config = config
        self.state = state
        # One thread per client unless num-threads says otherwise: simulation
        # runs several clients side by side on one machine's CPUs.
        apply_num_threads(config.training.num_threads, default=CLIENT_DEFAULT_THREADS)
        self.model = NCF(
            data.num_users,
            data.num_items,
            config.model.model,
            config.model.factors,
            config.model.mlp_layers,
            seed=config.data.seed,
        )
        if PRIVATE_STATE_KEY in state.array_records:
            record = state.array_records[PRIVATE_STATE_KEY]
            load_arrays(self.model, {k: v.numpy() for k, v in record.items()}, private=True)
        elif config.training.client_mode == "per-user":
            self._reset_private_per_user()
        else:
            self.model.reset_private(_seed(config.data.seed, data.partition_id, 0))
        # Which training interactions negatives avoid (see TrainingOptions.negative_pool).
        self.exclude = data.negative_pool(config.training.negative_pool)

    def _reset_private_per_user(self) -> None:
        """Each user's rows from its own seed, drawn as a one-user client would
        draw them (``NCF.reset_private`` with the user's code as partition id),
        so per-user mode starts where one-user-per-client FedAvg starts."""
        with torch.no_grad():
            privates = [p for n, p in self.model.named_parameters() if is_private(n)]
            for row, code in enumerate(self.data.users):
                gen = torch.Generator().manual_seed(_seed(self.config.data.seed, int(code), 0))
                for param in privates:
                    param[row : row + 1].normal_(0.0, 0.01, generator=gen)

    def _personal_names(self, prefixes: tuple[str, ...]) -> list[str]:
        """The shared arrays named by ``private-layers`` prefixes (already parsed)."""
        names = self.array_names()
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unknown:
            raise ValueError(
                f"private-layers={','.join(prefixes)}: {unknown} match no shared parameter; "
                f"shared parameters: {names}"
            )
        return [n for n in names if any(n.startswith(p) for p in prefixes)]

    def _load_personal(self, names: list[str]) -> None:
        """Overwrite personal layers with this client's own copy, if it has one."""
        if names and PERSONAL_STATE_KEY in self.state.array_records:
            record = self.state.array_records[PERSONAL_STATE_KEY]
            state = self.model.state_dict()
            with torch.no_grad():
                for name in names:
                    state[name].copy_(torch.from_numpy(record[name].numpy()))

    def array_names(self) -> list[str]:
        """Names of the shared arrays, in the order of the NumPy lists."""
        return [name for name in self.model.state_dict() if not is_private(name)]

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Shared arrays only; user embeddings are never returned."""
        return list(shared_arrays(self.model).values())

    def _set_shared(self, parameters: Sequence[np.ndarray]) -> None:
        names = self.array_names()
        if len(parameters) != len(names):
            raise ValueError(
                f"received {len(parameters)} arrays, the model shares {len(names)}: {names}"
            )
        load_arrays(self.model, dict(zip(names, parameters, strict=True)), private=False)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train locally from the global shared arrays; keep user embeddings here.

        Returns the updated shared arrays, the number of training interactions
        (the FedAvg weight) and ``train-loss`` plus ``partition-id`` (used by the
        server to order replies deterministically) and ``num-partitions`` (the
        server checks that every node cut the same number of groups).
        """
        started = time.perf_counter()
        self._set_shared(parameters)
        if self.config.training.client_mode == "per-user":
            return self._fit_per_user(parameters, config, started)
        knobs = self.config.round_knobs(config)
        personal = self._personal_names(knobs.private_layers)
        self._load_personal(personal)
        round_ = server_round(config)
        rng = np.random.default_rng(_seed(self.config.data.seed, self.data.partition_id, round_))
        train, data = self.config.training, self.data
        mu = knobs.proximal_mu
        anchor = (
            {
                n: torch.from_numpy(np.asarray(a))
                for n, a in zip(self.array_names(), parameters, strict=True)
                if n not in personal
            }
            if mu > 0
            else None
        )
        # A fresh optimizer each round: no optimizer state crosses rounds, as in
        # FedAvg (the server only averages parameters).
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay
        )
        loss = train_epochs(
            self.model,
            data.train_users,
            data.train_items,
            self.exclude,
            epochs=train.local_epochs,
            batch_size=train.batch_size,
            optimizer=optimizer,
            num_negatives=train.num_negatives,
            rng=rng,
            proximal_mu=mu,
            anchor=anchor,
        )
        self.state[PRIVATE_STATE_KEY] = ArrayRecord(
            {k: Array(v) for k, v in private_arrays(self.model).items()}
        )
        updated = shared_arrays(self.model)
        if personal:
            self.state[PERSONAL_STATE_KEY] = ArrayRecord({n: Array(updated[n]) for n in personal})
            # Echo the server's copy: personal layers never leave the client.
            received = dict(zip(self.array_names(), parameters, strict=True))
            for name in personal:
                updated[name] = np.array(received[name], copy=True)
        metrics: dict[str, Any] = {
            TRAIN_LOSS_KEY: loss,
            **node_metrics(data.partition_id, data.num_partitions, data.num_users),
        }
        if config.get(ITEM_COUNTS_KEY):
            counts = np.bincount(data.train_items, minlength=data.num_items)
            metrics[ITEM_COUNTS_KEY] = [int(c) for c in counts]
        metrics[COMPUTE_SECONDS_KEY] = time.perf_counter() - started
        return list(updated.values()), self.data.num_train, metrics

    def _fit_per_user(
        self, parameters: list[np.ndarray], config: dict[str, Any], started: float
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Every user trains alone from the global model; return their mean.

        Each user draws from the seed a one-user client with the user's code as
        partition id would use, so the server's FedAvg over nodes equals FedAvg
        over one-user clients (tested against exactly that).
        """
        train, data = self.config.training, self.data
        round_ = server_round(config)
        update = train_users_independently(
            shared_arrays(self.model),
            private_arrays(self.model),
            data.train_users,
            data.train_items,
            self.exclude,
            [_seed(self.config.data.seed, int(code), round_) for code in data.users],
            epochs=train.local_epochs,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            num_negatives=train.num_negatives,
            weight_decay=train.weight_decay,
        )
        load_arrays(self.model, update.private, private=True)
        self.state[PRIVATE_STATE_KEY] = ArrayRecord(
            {k: Array(v) for k, v in private_arrays(self.model).items()}
        )
        metrics: dict[str, Any] = {
            TRAIN_LOSS_KEY: update.loss,
            **node_metrics(data.partition_id, data.num_partitions, data.num_users),
            COMPUTE_SECONDS_KEY: time.perf_counter() - started,
        }
        names = self.array_names()
        return [update.shared[n] for n in names], update.weight, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Rank validation and test items of this group's users.

        Returns the validation BCE loss, the number of users (the weight), and
        metric *sums* (``val-hr@10-sum`` ...) so the server can compute exact
        global values. With personalisation on (``finetune-epochs`` > 0 or
        ``private-layers``), ``val-``/``test-`` are the personalised model's and
        ``global-val-``/``global-test-`` the global model's.
        """
        started = time.perf_counter()
        self._set_shared(parameters)
        data = self.data
        metrics: dict[str, Any] = node_metrics(
            data.partition_id, data.num_partitions, data.num_users
        )
        # A server's per-round private-layers with per-user fine-tuning is refused here.
        knobs = self.config.round_knobs(config)
        personal = self._personal_names(knobs.private_layers)
        epochs = knobs.finetune_epochs
        if not personal and epochs <= 0:
            loss = self._rank_into(metrics, "")
            metrics[COMPUTE_SECONDS_KEY] = time.perf_counter() - started
            return loss, self.data.num_users, metrics
        self._rank_into(metrics, GLOBAL_PREFIX)
        if self.config.training.finetunes_per_user and epochs > 0:
            loss = self._finetune_per_user(metrics, epochs, knobs.finetune_scope, config)
            metrics[COMPUTE_SECONDS_KEY] = time.perf_counter() - started
            return loss, self.data.num_users, metrics
        self._load_personal(personal)
        if epochs > 0:
            round_ = server_round(config)
            rng = np.random.default_rng(
                _seed(self.config.data.seed, self.data.partition_id, round_, _FINETUNE)
            )
            train, data = self.config.training, self.data
            params = [
                p
                for n, p in self.model.named_parameters()
                if knobs.finetune_scope == "all" or is_private(n) or n in personal
            ]
            optimizer = torch.optim.Adam(
                params, lr=train.finetune_lr, weight_decay=train.weight_decay
            )
            train_epochs(
                self.model,
                data.train_users,
                data.train_items,
                self.exclude,
                epochs=epochs,
                batch_size=train.batch_size,
                optimizer=optimizer,
                num_negatives=train.num_negatives,
                rng=rng,
            )
        # Nothing of the fine-tuned copy is stored: the next message rebuilds the
        # model from the global arrays and the stored private state.
        loss = self._rank_into(metrics, "")
        metrics[COMPUTE_SECONDS_KEY] = time.perf_counter() - started
        return loss, self.data.num_users, metrics

    def _finetune_per_user(
        self, metrics: dict[str, Any], epochs: int, scope: str, config: dict[str, Any]
    ) -> float:
        """Per-user personalisation: each user fine-tunes its own copy alone.

        The copy a one-user client would fine-tune (same seed: the user's code
        as partition id), scored on the user's validation and test candidates,
        then discarded. Adds ``val-*-sum``/``test-*-sum``; returns the val loss.
        """
        train, data = self.config.training, self.data
        round_ = server_round(config)
        # One fine-tuning serves both parts: columns 0/1 are the val/test items.
        candidates = np.concatenate(
            [data.val_items[:, None], data.test_items[:, None], data.eval_negatives], axis=1
        )
        scores = finetune_users_and_score(
            shared_arrays(self.model),
            private_arrays(self.model),
            data.train_users,
            data.train_items,
            self.exclude,
            [_seed(self.config.data.seed, int(code), round_, _FINETUNE) for code in data.users],
            candidates,
            scope=scope,
            epochs=epochs,
            batch_size=train.batch_size,
            learning_rate=train.finetune_lr,
            num_negatives=train.num_negatives,
            weight_decay=train.weight_decay,
        )
        results = {
            part: rank_logits(
                torch.from_numpy(np.concatenate([scores[:, [column]], scores[:, 2:]], axis=1)),
                train.ks,
            )
            for part, column in ((VAL_PART, 0), (TEST_PART, 1))
        }
        for part, result in results.items():
            metrics.update({sum_key(part, k): v for k, v in result.sums.items()})
        return results[VAL_PART].loss

    def _rank_into(self, metrics: dict[str, Any], prefix: str) -> float:
        """Add ``{prefix}val-*-sum`` and ``{prefix}test-*-sum``; return the val loss."""
        users = np.arange(self.data.num_users)
        loss = float("nan")
        for part, positives in (
            (VAL_PART, self.data.val_items),
            (TEST_PART, self.data.test_items),
        ):
            result = evaluate_ranking(
                self.model, users, positives, self.data.eval_negatives, self.config.training.ks
            )
            metrics.update({sum_key(part, k, prefix): v for k, v in result.sums.items()})
            if part == VAL_PART:
                loss = result.loss
        return loss


_FINETUNE = 0xF17E  # separates fine-tuning draws from training draws


def _seed(seed: int, partition_id: int, server_round: int, *extra: int) -> int:
    """A stable per-(run seed, client, round) seed."""
    entropy = [seed, partition_id, server_round, *extra]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
