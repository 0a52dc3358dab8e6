"""The NCF client: a Flower ``NumPyClient`` over one user group.

It receives and returns only the *shared* arrays (by name, see
:meth:`NCFClient.array_names`). The user embeddings of its users are private:
they are kept in the node's ``context.state`` between rounds and never appear in
a reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.compat.client.numpy_client import NumPyClient

from .config import RunConfig
from .datasets.prepare import ClientData
from .model import NCF, is_private, load_arrays, private_arrays, shared_arrays
from .training import evaluate_ranking, train_epochs

__all__ = ["PRIVATE_STATE_KEY", "NCFClient"]

PRIVATE_STATE_KEY = "fedrec-private-arrays"


class NCFClient(NumPyClient):
    """Train and evaluate NCF on one user group.

    Parameters
    ----------
    data : ClientData
        The group's users, training interactions and evaluation candidates.
    config : RunConfig
        Model and training settings.
    state : flwr.app.RecordDict
        The node's ``context.state``: private user embeddings are read from and
        written to it, so they persist across rounds on this node only.
    """

    def __init__(self, data: ClientData, config: RunConfig, state: RecordDict) -> None:
        self.data = data
        self.config = config
        self.state = state
        # One thread per client: simulation runs one client per CPU, and a
        # fixed thread count keeps float reductions bit-reproducible.
        torch.set_num_threads(1)
        self.model = NCF(
            data.num_users,
            data.num_items,
            config.model,
            config.factors,
            config.mlp_layers,
            seed=config.seed,
        )
        if PRIVATE_STATE_KEY in state.array_records:
            record = state.array_records[PRIVATE_STATE_KEY]
            load_arrays(self.model, {k: v.numpy() for k, v in record.items()}, private=True)
        else:
            self.model.reset_private(_seed(config.seed, data.partition_id, 0))

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
        server to order replies deterministically).
        """
        self._set_shared(parameters)
        server_round = int(config.get("server-round", 0))
        rng = np.random.default_rng(_seed(self.config.seed, self.data.partition_id, server_round))
        cfg, data = self.config, self.data
        # A fresh optimizer each round: no optimizer state crosses rounds, as in
        # FedAvg (the server only averages parameters).
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        loss = train_epochs(
            self.model,
            data.train_users,
            data.train_items,
            data.train_set,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            optimizer=optimizer,
            num_negatives=cfg.num_negatives,
            rng=rng,
        )
        self.state[PRIVATE_STATE_KEY] = ArrayRecord(
            {k: Array(v) for k, v in private_arrays(self.model).items()}
        )
        metrics = {"train-loss": loss, "partition-id": self.data.partition_id}
        return self.get_parameters({}), self.data.num_train, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Rank validation and test items of this group's users.

        Returns the validation BCE loss, the number of users (the weight), and
        metric *sums* (``val-hr@10-sum`` ...) so the server can compute exact
        global values.
        """
        self._set_shared(parameters)
        users = np.arange(self.data.num_users)
        metrics: dict[str, Any] = {"partition-id": self.data.partition_id}
        loss = float("nan")
        for part, positives in (
            ("val", self.data.val_items),
            ("test", self.data.test_items),
        ):
            result = evaluate_ranking(
                self.model, users, positives, self.data.eval_negatives, self.config.ks
            )
            metrics.update({f"{part}-{k}-sum": v for k, v in result.sums.items()})
            if part == "val":
                loss = result.loss
        return loss, self.data.num_users, metrics


def _seed(seed: int, partition_id: int, server_round: int) -> int:
    """A stable per-(run seed, client, round) seed."""
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])
