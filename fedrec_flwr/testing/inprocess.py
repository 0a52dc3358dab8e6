"""Run a ServerApp's strategy against ClientApps in this process, no Ray.

:class:`InProcessGrid` is a real :class:`flwr.serverapp.Grid`: every message
and reply is serialised to protobuf and back, as on the wire, so a client can
never share memory with the server. It makes federated behaviour testable in
seconds (a few users, a few rounds) and lets the same strategy code run here and
under ``flwr run``.
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]

_CLIENT_APP_EXCEPTION = 2  # mirrors flwr's ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def _wire_copy(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApps called in this process.

    Parameters
    ----------
    client_app : flwr.clientapp.ClientApp
        The app every node runs.
    node_configs : sequence of mapping
        One ``node_config`` per node (e.g. ``partition-id``, ``num-partitions``).
    run_config : mapping
        The run config every node sees.
    node_ids : sequence of int, optional (default: 101, 102, ...)
        Node ids, in the order of ``node_configs``.
    shuffle_seed : int, optional (default: None)
        If set, replies come back in a shuffled order, as arrival order varies
        on a real SuperLink.
    run_id : int (default: 1)
        The run id nodes see.

    Attributes
    ----------
    contexts : dict of int to flwr.app.Context
        Each node's context (its ``state`` persists across rounds).
    replies : list of flwr.app.Message
        Every reply received, as the server saw it (for inspection in tests).

    Notes
    -----
    Creating the grid sets Flower's process-wide ``TaskIdentity`` to that of a
    ServerApp, as Flower's own ServerApp runner does.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[Mapping[str, Any]],
        run_config: Mapping[str, Any],
        *,
        node_ids: Sequence[int] | None = None,
        shuffle_seed: int | None = None,
        run_id: int = 1,
    ) -> None:
        self._app = client_app
        ids = (
            list(node_ids) if node_ids is not None else [101 + i for i in range(len(node_configs))]
        )
        if len(ids) != len(node_configs):
            raise ValueError("node_ids and node_configs differ in length")
        self.contexts = {
            nid: Context(
                run_id=run_id,
                node_id=nid,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for nid, cfg in zip(ids, node_configs, strict=True)
        }
        self._run = Run.create_empty(run_id)
        # Flower stamps new messages with the process's task identity, which its
        # own ServerApp runner sets per process; this process is the server here.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        self._ids = itertools.count(1)
        self._pending: dict[str, Message] = {}
        self._lock = threading.Lock()
        self.replies: list[Message] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        # Keep the instruction's metadata (Flower's own deserialisation path does).
        inbound = Message(  # type: ignore[call-overload]
            content=_wire_copy(message.content), metadata=message.metadata
        )
        try:
            reply = self._app(inbound, self.contexts[node_id])
        except Exception as exc:  # a client failure becomes an error reply, as in Flower
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=_CLIENT_APP_EXCEPTION, reason=reason), reply_to=message)
        if reply.has_error():
            return reply
        return Message(content=_wire_copy(reply.content), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            reply = self._deliver(message)
            with self._lock:
                message_id = f"m{next(self._ids)}"
                self._pending[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            replies = [self._pending.pop(mid) for mid in message_ids if mid in self._pending]
            self.replies.extend(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver every message now and return the replies."""
        replies = list(self.pull_messages(self.push_messages(messages)))
        if self._rng is not None:
            replies = [replies[i] for i in self._rng.permutation(len(replies))]
        return replies
