"""Wrap any Message-API strategy: validated replies, fixed order, seeded sampling."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .aggregate import ORDER_KEY, order_replies
from .validation import ArraySpec, ReplyLimits, array_spec, check_reply

__all__ = ["ValidatedStrategy"]


class ValidatedStrategy(Strategy):
    """Put a reply-validation layer (and reproducible sampling) around ``strategy``.

    Every reply is checked by :func:`~fedrec_flwr.strategies.validation.
    check_reply` before ``strategy`` sees it: the arrays must match the names,
    shapes and dtypes the server sent and be finite; the weight must be a finite
    number in ``(0, cap]``; metrics must be finite. A failing reply is dropped
    with a log line naming the node and the reason (also kept in
    :attr:`dropped`), and the round goes on with the rest; replies whose metric
    keys differ from the majority are dropped too (Flower would otherwise end
    the run). If no reply survives, the wrapped strategy gets none and returns
    ``None``, so Flower keeps the previous model. Surviving replies are passed
    in a fixed order (by ``partition-id``, then node id).

    Sampling: when ``strategy`` samples fewer nodes than are connected, the
    wrapper re-targets its messages to the same number of nodes ranked by a hash
    of ``(seed, server round, partition id)``, so the sample depends only on the
    seed and the partitions, not on Flower's unseeded ``random`` or on node ids
    (random per run in simulation). The server learns each node's partition id
    from its replies (``partition-id`` in every NCF reply) and, for nodes not yet
    seen, from one ``query`` message answered by the ClientApp from its
    ``node_config``; a node that does not answer is ranked by node id after the
    others.

    Put this wrapper *outermost*, e.g. around Flower's
    ``DifferentialPrivacyServerSideFixedClipping``, so that clipping and noise
    never see a malformed reply.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The strategy doing the aggregation (ours, Flower's, or a DP wrapper).
    train_limits : ReplyLimits (default: ReplyLimits())
        Limits for training replies (weight key, caps, required metric lists).
    evaluate_limits : ReplyLimits, optional (default: train_limits' weight key, no cap)
        Limits for evaluation replies.
    uniform_weights : bool (default: False)
        After validation, set every training reply's weight to 1 (plain mean
        over clients) for whatever strategy is wrapped.
    seed : int (default: 0)
        Seeds the node sample.
    query_timeout : float (default: 60.0)
        Seconds to wait for partition-id answers.

    Attributes
    ----------
    dropped : list of tuple
        ``(server_round, node_id, reason)`` for every dropped reply.
    partitions : dict of int to int
        Node id -> partition id, as learned.
    """

    def __init__(
        self,
        strategy: Strategy,
        train_limits: ReplyLimits | None = None,
        evaluate_limits: ReplyLimits | None = None,
        *,
        uniform_weights: bool = False,
        seed: int = 0,
        query_timeout: float = 60.0,
    ) -> None:
        self.strategy = strategy
        self.train_limits = train_limits or ReplyLimits()
        self.evaluate_limits = evaluate_limits or ReplyLimits(
            weight_key=self.train_limits.weight_key
        )
        self.uniform_weights = uniform_weights
        self.seed = seed
        self.query_timeout = query_timeout
        self.dropped: list[tuple[int, int, str]] = []
        self.partitions: dict[int, int] = {}
        self._spec: ArraySpec | None = None

    def __repr__(self) -> str:
        return f"ValidatedStrategy({self.strategy!r})"

    def summary(self) -> None:
        """Log the wrapper's limits, then the wrapped strategy's summary."""
        log(INFO, "\t├──> Reply validation (fedrec-flwr):")
        log(INFO, "\t│\t├── weight key: %s", self.train_limits.weight_key)
        log(INFO, "\t│\t├── weight cap (train): %s", self.train_limits.max_weight)
        log(INFO, "\t│\t└── uniform weights: %s", self.uniform_weights)
        self.strategy.summary()

    # --- configure: remember what was sent, make the sample reproducible ------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate; remember the arrays' spec; re-target a partial sample."""
        self._spec = array_spec(arrays)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        return self._resample(server_round, messages, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate; re-target a partial sample."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        return self._resample(server_round, messages, grid)

    def _resample(self, server_round: int, messages: list[Message], grid: Grid) -> list[Message]:
        nodes = sorted(grid.get_node_ids())
        if not messages or len(messages) >= len(nodes):
            return messages  # everyone is asked: nothing to choose
        self._learn_partitions(server_round, [n for n in nodes if n not in self.partitions], grid)
        chosen = sorted(nodes, key=lambda n: self._rank(server_round, n))[: len(messages)]
        log(INFO, "fedrec-flwr: round %d samples partitions %s", server_round, self._pids(chosen))
        return [
            Message(
                content=msg.content,
                message_type=msg.metadata.message_type,
                dst_node_id=node,
                group_id=msg.metadata.group_id,
            )
            for msg, node in zip(messages, chosen, strict=True)
        ]

    def _pids(self, nodes: list[int]) -> list[str]:
        known = sorted(self.partitions[n] for n in nodes if n in self.partitions)
        return [str(p) for p in known] + [f"node {n}" for n in nodes if n not in self.partitions]

    def _rank(self, server_round: int, node: int) -> tuple[int, int]:
        pid = self.partitions.get(node)
        if pid is None:
            return (1, node)
        digest = np.random.SeedSequence([self.seed, server_round, pid]).generate_state(2)
        return (0, int(digest[0]) << 32 | int(digest[1]))

    def _learn_partitions(self, server_round: int, nodes: list[int], grid: Grid) -> None:
        """Ask unknown nodes for their ``partition-id`` (one small message each)."""
        if not nodes:
            return
        config = ConfigRecord({"server-round": server_round})
        queries = [
            Message(RecordDict({"config": config}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes
        ]
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or len(reply.content.metric_records) != 1:
                continue
            pid = next(iter(reply.content.metric_records.values())).get(ORDER_KEY)
            if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
                self._claim(node, pid)

    def _claim(self, node: int, pid: object) -> str | None:
        """Bind node to partition on first claim; refuse changes and duplicates."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            return f"partition-id {pid!r} is not a non-negative integer"
        known = self.partitions.get(node)
        if known is not None and known != pid:
            return f"partition-id changed from {known} to {pid}"
        owner = next((n for n, p in self.partitions.items() if p == pid and n != node), None)
        if owner is not None:
            return f"partition-id {pid} already belongs to node {owner}"
        self.partitions[node] = pid
        return None

    # --- aggregate: validate, order, delegate ----------------------------------

    def _filter(self, server_round: int, replies: Iterable[Message], train: bool) -> list[Message]:
        limits = self.train_limits if train else self.evaluate_limits
        spec = self._spec if train else None
        if train and spec is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        kept: list[Message] = []
        # Ordered first, so that a disputed partition-id goes to the same node
        # whatever the arrival order.
        for msg in order_replies(replies):
            if msg.has_error():
                kept.append(msg)  # the wrapped strategy logs and skips errors
                continue
            reason = check_reply(msg.content, limits, spec)
            if reason is None:
                metrics = next(iter(msg.content.metric_records.values()))
                if ORDER_KEY in metrics:
                    reason = self._claim(msg.metadata.src_node_id, metrics[ORDER_KEY])
            if reason is None:
                kept.append(msg)
            else:
                self._drop(server_round, msg, reason, train)
        kept = self._majority_keys(server_round, kept, train)
        ordered = order_replies(kept)
        if train and self.uniform_weights:
            for msg in ordered:
                if not msg.has_error():
                    next(iter(msg.content.metric_records.values()))[limits.weight_key] = 1
        return ordered

    def _majority_keys(
        self, server_round: int, replies: list[Message], train: bool
    ) -> list[Message]:
        def keys(msg: Message) -> tuple[str, ...]:
            return tuple(sorted(next(iter(msg.content.metric_records.values())).keys()))

        ok = [m for m in replies if not m.has_error()]
        if not ok:
            return replies
        counts = Counter(keys(m) for m in ok)
        best = max(counts, key=lambda k: (counts[k], k))
        kept = []
        for msg in replies:
            if msg.has_error() or keys(msg) == best:
                kept.append(msg)
                continue
            got = set(keys(msg))
            reason = (
                f"metric keys differ from the other replies': missing "
                f"{sorted(set(best) - got)}, unexpected {sorted(got - set(best))}"
            )
            self._drop(server_round, msg, reason, train)
        return kept

    def _drop(self, server_round: int, msg: Message, reason: str, train: bool) -> None:
        node = msg.metadata.src_node_id
        self.dropped.append((server_round, node, reason))
        log(
            WARNING,
            "fedrec-flwr: round %d: dropped %s reply from node %d: %s",
            server_round,
            "train" if train else "evaluate",
            node,
            reason,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, order, then let the wrapped strategy aggregate."""
        kept = self._filter(server_round, replies, train=True)
        if not any(not m.has_error() for m in kept):
            log(WARNING, "fedrec-flwr: round %d: no valid reply; model unchanged", server_round)
            return None, None
        return self.strategy.aggregate_train(server_round, kept)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Validate, order, then let the wrapped strategy aggregate."""
        kept = self._filter(server_round, replies, train=False)
        if not any(not m.has_error() for m in kept):
            return None
        return self.strategy.aggregate_evaluate(server_round, kept)
