"""Serve a node's recommendations on demand, from its own folder.

A node folder (:func:`~fedrec_flwr.serving.store.node_folder`) holds after
delivery the shared model (``model.npz``), the users' rows (the store's round
files) and ``node.json`` (run and node config, delivered round). With the
node's own log, that is everything :class:`NodeRecommender` needs; nothing is
fetched from the server. The API follows ``implicit``'s
``recommend(userid, user_items, N)``: :meth:`NodeRecommender.recommend` takes
raw user ids and ``k``, and excludes what each user has already seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import Context, RecordDict

from ..errors import ConfigError
from ..paths import NPZ_ERRORS, read_npz
from ..protocol import DELIVER_ROUND_KEY, PARTITION_ID_KEY, STATE_RUN_KEY
from .deliver import MODEL_FILE, NODE_FILE, recommendations_frame
from .store import NodeStore

__all__ = ["EXCLUDE_SEEN", "NodeRecommender", "UnknownUserError"]

#: ``exclude_seen``: nothing, the user's training items, or every item of theirs
#: the node holds (training, validation and test).
EXCLUDE_SEEN = ("none", "train", "all")


class UnknownUserError(KeyError):
    """A user id this node does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown user"


class NodeRecommender:
    """The delivered model of one node, with its users' private rows.

    Build it with :meth:`load`; ``client_`` (the node's
    :class:`~fedrec_flwr.client.numpy_client.NCFClient`, model loaded) and
    ``node_`` (``node.json``) are its learned state.
    """

    def __init__(self, client: Any, node: dict[str, Any]) -> None:
        self.client_ = client
        self.node_ = node
        ids = client.user_ids()
        self._index = {str(u): i for i, u in enumerate(ids.tolist())}

    @classmethod
    def load(cls, node_dir: str | Path) -> NodeRecommender:
        """Read a node folder written by delivery.

        Raises
        ------
        ConfigError
            If ``node.json`` or ``model.npz`` is missing or unreadable, or the
            store holds no rows of the delivered round (names the file).
        """
        from ..app.client_app import client_fn

        folder = Path(node_dir)
        node_path, model_path = folder / NODE_FILE, folder / MODEL_FILE
        for path in (node_path, model_path):
            if not path.is_file():
                raise ConfigError(
                    f"{path} not found: --node-dir names a node folder written after a "
                    "run's delivery (<state-dir>/<run lineage>/partition-<id>)"
                )
        try:
            node = json.loads(node_path.read_text(encoding="utf-8"))
            shared = read_npz(model_path)
        except NPZ_ERRORS as exc:
            raise ConfigError(f"{folder}: {exc}; the node folder is damaged") from exc
        rnd = int(node[DELIVER_ROUND_KEY])
        stored = NodeStore(folder.parent.parent, node[STATE_RUN_KEY], _pid(node)).load(rnd)
        if stored is None:
            raise ConfigError(f"{folder}: no stored user rows of round {rnd} or before")
        context = Context(
            run_id=0,
            node_id=0,
            node_config=dict(node["node-config"]),
            state=RecordDict(),
            run_config=dict(node["run-config"]),
        )
        client = client_fn(context)
        from ..models import load_arrays

        load_arrays(client.model, stored.private, private=True)
        client.set_shared([shared[n] for n in client.array_names()])
        return cls(client, node)

    @property
    def user_ids(self) -> list[str]:
        """The raw ids of the users this node holds."""
        return list(self._index)

    def recommend(
        self, user_ids: Sequence[object] | None = None, k: int = 10, *, exclude_seen: str = "train"
    ) -> pd.DataFrame:
        """The top-``k`` items of each user in ``user_ids`` (all users if None).

        Parameters
        ----------
        user_ids : sequence, optional (default: None = every user of the node)
            Raw user ids (compared as text).
        k : int (default: 10)
            Items per user.
        exclude_seen : {"none", "train", "all"} (default: "train")
            Leave out nothing, each user's training items, or all of their
            items the node holds.

        Returns
        -------
        pandas.DataFrame
            ``user``, ``rank`` (from 1), ``item``, ``score``; raw ids.

        Raises
        ------
        UnknownUserError
            Naming the first id this node does not hold.
        ValueError
            If ``k < 1`` or ``exclude_seen`` is not accepted.
        """
        if k < 1:
            raise ValueError(f"k={k}: must be >= 1")
        if exclude_seen not in EXCLUDE_SEEN:
            raise ValueError(f"exclude_seen={exclude_seen!r}: accepted {', '.join(EXCLUDE_SEEN)}")
        wanted = list(self._index) if user_ids is None else [str(u) for u in user_ids]
        missing = [u for u in wanted if u not in self._index]
        if missing:
            raise UnknownUserError(
                f"user {missing[0]!r} is not a user of this node ({len(self._index)} users, "
                f"e.g. {', '.join(list(self._index)[:3])})"
            )
        local = np.asarray([self._index[u] for u in wanted], dtype=np.int64)
        client = self.client_
        items, scores = client.recommend(k, exclude=exclude_seen, users=local)
        wanted_ids = np.asarray(wanted, dtype=np.str_)
        return recommendations_frame(wanted_ids, client.item_ids(), items, scores)


def _pid(node: dict[str, Any]) -> int:
    return int(node["node-config"][PARTITION_ID_KEY])
