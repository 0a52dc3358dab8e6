"""Count bytes and time per round by wrapping any Flower ``Grid``.

Wrapping the grid rather than the strategy keeps metering orthogonal: any
strategy (Flower's DP wrappers, robust aggregators, ours) runs unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from ..protocol import COMPUTE_SECONDS_KEY, SERVER_ROUND_KEY

__all__ = ["DelegatingGrid", "MeteredGrid", "RoundTraffic", "payload_bytes"]


def payload_bytes(content: RecordDict) -> int:
    """Serialized (protobuf) size of a message's content, transport framing excluded."""
    return int(recorddict_to_proto(content).ByteSize())


@dataclass
class RoundTraffic:
    """What crossed the grid for one server round."""

    started: float
    finished: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    replies: int = 0
    failures: int = 0
    client_seconds: dict[str, float] = field(default_factory=dict)


class DelegatingGrid(Grid):
    """A Grid that forwards every call to ``grid``: the base of grid wrappers
    (metering, the privacy audit) that override only ``send_and_receive``.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The wrapped grid.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class MeteredGrid(DelegatingGrid):
    """Delegate to ``grid``; record bytes, replies and failures per round.

    The round is read from the ``server-round`` entry of the messages'
    ConfigRecord (every ``flwr.serverapp.strategy`` strategy sets it), else
    from the message's ``group_id`` (Flower's legacy workflows, SecAgg+ stages).

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid Flower handed to the ServerApp.
    poll_interval : float, optional (default: None)
        If set, ``send_and_receive`` pushes and then pulls replies every
        ``poll_interval`` seconds itself; if None, it delegates to ``grid``.
        Flower's deployment grid sleeps 3 s between pulls, which costs up to
        3 s per train/evaluate step on a loopback deployment.

    Attributes
    ----------
    rounds : dict of int to RoundTraffic
        Traffic per server round.
    failure_reasons : dict of int to list of str
        Error replies and missing replies per round.
    array_names_received : set of str
        Names of every array in every reply the server received (so a results
        file can show that no private array reached the server).

    Notes
    -----
    A reply's ``compute-seconds`` metric (the time a client spent computing,
    as it reports it) is summed per round and message type into
    ``RoundTraffic.client_seconds``: round wall time minus that sum is what the
    engine itself cost when clients run one at a time.
    """

    def __init__(self, grid: Grid, *, poll_interval: float | None = None) -> None:
        super().__init__(grid)
        self._poll_interval = poll_interval
        self.rounds: dict[int, RoundTraffic] = {}
        self.failure_reasons: dict[int, list[str]] = {}
        self.array_names_received: set[str] = set()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, wait, and account for both directions."""
        messages = list(messages)
        if not messages:
            return []
        server_round = _round_of(messages[0], default=max(self.rounds, default=0))
        traffic = self.rounds.setdefault(server_round, RoundTraffic(started=time.perf_counter()))
        traffic.bytes_sent += sum(payload_bytes(m.content) for m in messages)
        traffic.messages_sent += len(messages)
        if self._poll_interval is None:
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        else:
            replies = self._push_and_poll(messages, timeout, self._poll_interval)
        reasons = self.failure_reasons.setdefault(server_round, [])
        for reply in replies:
            if reply.has_error():
                traffic.failures += 1
                reasons.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            else:
                traffic.replies += 1
                traffic.bytes_received += payload_bytes(reply.content)
                for record in reply.content.array_records.values():
                    self.array_names_received.update(record.keys())
                kind = reply.metadata.message_type.split(".")[0]
                # Legacy replies (SecAgg+) carry their metrics in a ConfigRecord.
                content = reply.content
                records: list[MetricRecord | ConfigRecord] = [
                    *content.metric_records.values(),
                    *content.config_records.values(),
                ]
                for metrics in records:
                    seconds = metrics.get(COMPUTE_SECONDS_KEY)
                    if isinstance(seconds, (int, float)) and seconds >= 0:
                        traffic.client_seconds[kind] = traffic.client_seconds.get(
                            kind, 0.0
                        ) + float(seconds)
        missing = len(messages) - len(replies)
        if missing:
            traffic.failures += missing
            reasons.append(f"{missing} node(s) did not reply before the timeout")
        traffic.finished = time.perf_counter()
        return replies

    def _push_and_poll(
        self, messages: list[Message], timeout: float | None, interval: float
    ) -> list[Message]:
        """Flower's send-and-receive loop (push, pull until all replied or timeout)."""
        pending = set(self._grid.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.time() < end):
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if pending:
                time.sleep(interval)
        return replies


def _round_of(message: Message, default: int) -> int:
    for record in message.content.config_records.values():
        value = record.get(SERVER_ROUND_KEY)
        if isinstance(value, int):
            return value
    # Flower's legacy workflows (SecAgg+ stages carry no config of ours) put the
    # round into the message's group id.
    group = message.metadata.group_id
    if group.isdigit() and int(group) > 0:
        return int(group)
    return default
