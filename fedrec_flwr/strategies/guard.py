"""Wrap any Message-API strategy: validated replies, fixed order, seeded sampling."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any, TypeGuard

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..protocol import (
    CONFIG_RECORD,
    NUM_EXAMPLES_KEY,
    NUM_PARTITIONS_KEY,
    NUM_USERS_KEY,
    PARTITION_ID_KEY,
    SERVER_ROUND_KEY,
    SUM_SUFFIX,
)
from .aggregate import order_replies, restore_dtypes
from .validation import (
    MAX_MAGNITUDE,
    ArraySpec,
    PartitionSizes,
    ReplyLimits,
    array_spec,
    check_finite_aggregate,
    check_reply,
    clip_bound,
    show,
)

__all__ = ["PartitionMismatchError", "ValidatedStrategy", "sample_rank"]


def sample_rank(seed: int, server_round: int, node: int, partition: int | None) -> tuple[int, int]:
    """Sort key of a node when a round samples part of them: the first ``k`` are asked.

    A node with a known partition id ranks by a digest of (seed, round,
    partition), so the sample depends on the partitions and the seed, not on
    Flower's random node ids; nodes of unknown partition come after, by node id.
    """
    if partition is None:
        return (1, node)
    digest = np.random.SeedSequence([seed, server_round, partition]).generate_state(2)
    return (0, int(digest[0]) << 32 | int(digest[1]))


class PartitionMismatchError(RuntimeError):
    """Nodes report different ``num-partitions``: their user groups overlap or leave users out."""


class ValidatedStrategy(Strategy):
    """Put a reply-validation layer (and reproducible sampling) around ``strategy``.

    Every reply is checked by :func:`~fedrec_flwr.strategies.validation.
    check_reply` before ``strategy`` sees it: the arrays must match the names,
    shapes and dtypes the server sent and be finite (and, with
    ``max_update_norm``, lie within that distance of what was sent); the weight
    must be a finite number in ``(0, cap]``; metrics must be finite, per-user
    sums within ``[0, num-users]``, ``partition-id``/``num-partitions``
    consistent. A failing reply is dropped with a log line naming the node and
    the reason (also kept in :attr:`dropped`), and the round goes on with the
    rest; so are a node's second and later replies in one round (the first in
    the fixed order counts) and replies whose record names or metric keys
    differ from the majority's (Flower would otherwise end the run). If no
    reply survives, the wrapped strategy gets none and returns ``None``, so
    Flower keeps the previous model. Surviving replies are passed in a fixed order (by
    ``partition-id``, then node id).

    Without a prior ``configure_train`` (Flower's strategy tests call
    ``aggregate_train`` directly) training replies are checked against the
    array names, shapes and dtypes most replies share, instead of raising.

    Dtypes: the aggregate is cast back to the dtypes the model was sent in
    (Flower's FedAdam returns float64 whatever it received, which would get
    every later reply dropped as of the wrong dtype). An aggregate with a
    non-finite value is refused (recorded in :attr:`rejected`) and the
    previous model kept.

    Weights: a reply whose partition has a cap (``partition_caps`` of the
    limits: declared, or computed from the data by ``partition_sizes``) must
    stay within it and is never clipped. Any other reply's weight is clipped to
    ``clip_multiple`` times the round's lower median weight (logged, kept in
    :attr:`clipped`); with ``K`` valid replies one node's share of the
    aggregate is then at most ``m / (m + floor(K/2))`` while fewer than half of
    the replies inflate their weights (see
    :func:`~fedrec_flwr.strategies.validation.clip_bound`). In an evaluation
    reply its ``-sum`` metrics are scaled by the same factor, so its per-user
    means are kept and only its share shrinks.

    Partitions: every NCF reply carries ``partition-id`` and ``num-partitions``.
    The first replies (or query answers) that report ``num-partitions`` fix the
    federation's value: if they disagree, :class:`PartitionMismatchError` is
    raised (the run stops before any aggregate: with different counts the
    nodes' user groups overlap and leave users out). Later replies with another
    value, or a ``partition-id`` not below it, are dropped. Once agreed,
    ``partition_sizes`` (if given) supplies each partition's true size as its
    cap.

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
        Limits for training replies (weight key, caps, clipping, update norm,
        required metric lists).
    evaluate_limits : ReplyLimits, optional (default: train_limits' weight key, no cap)
        Limits for evaluation replies (their weight is the number of users).
    uniform_weights : bool (default: False)
        After validation, set every training reply's weight to 1 (plain mean
        over clients) for whatever strategy is wrapped; no clipping then.
    seed : int (default: 0)
        Seeds the node sample.
    query_timeout : float (default: 60.0)
        Seconds to wait for partition-id answers.
    partition_sizes : callable, optional (default: None)
        ``num_partitions -> PartitionSizes``: each partition's true training
        interactions and users, used as exact caps once the nodes agree on
        ``num-partitions`` (the server holds the data). Training weights are
        capped by ``examples`` (``users`` when the weight key is
        ``num-users``), evaluation weights and ``num-users`` by ``users``.

    Attributes
    ----------
    dropped : list of tuple
        ``(server_round, node_id, reason)`` for every dropped reply.
    clipped : list of dict
        ``{"round", "kind", "node", "partition", "claimed", "used"}`` for every
        clipped weight.
    rejected : list of tuple
        ``(server_round, reason)`` for every aggregate refused because it holds
        non-finite values (the previous model is kept).
    partitions : dict of int to int
        Node id -> partition id, as learned.
    num_partitions : int or None
        The agreed ``num-partitions`` (``None`` until a node reported one).
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
        partition_sizes: Callable[[int], PartitionSizes] | None = None,
    ) -> None:
        self.strategy = strategy
        self.train_limits = train_limits or ReplyLimits()
        self.evaluate_limits = evaluate_limits or ReplyLimits(
            weight_key=self.train_limits.weight_key
        )
        self.uniform_weights = uniform_weights
        self.seed = seed
        self.query_timeout = query_timeout
        self.partition_sizes = partition_sizes
        self.dropped: list[tuple[int, int, str]] = []
        self.clipped: list[dict[str, Any]] = []
        self.rejected: list[tuple[int, str]] = []
        self.partitions: dict[int, int] = {}
        self.num_partitions: int | None = None
        self._spec: ArraySpec | None = None
        self._sent: dict[str, np.ndarray] | None = None
        self._cast_logged = False

    def __repr__(self) -> str:
        return f"ValidatedStrategy({self.strategy!r})"

    # Flower's strategy tests read and set the wrapped strategy's attributes
    # (e.g. FedOpt's ``current_arrays``, ``eta``) on whatever they test: pass
    # through what the wrapper does not define itself.

    def __getattr__(self, name: str) -> Any:
        """An attribute the wrapper lacks: the wrapped strategy's."""
        inner = self.__dict__.get("strategy")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set on the wrapped strategy what only it has; everything else here."""
        inner = self.__dict__.get("strategy")
        mine = name in _OWN or name in self.__dict__ or hasattr(type(self), name)
        if inner is not None and not mine and hasattr(inner, name):
            setattr(inner, name, value)
        else:
            object.__setattr__(self, name, value)

    def summary(self) -> None:
        """Log the wrapper's limits, then the wrapped strategy's summary."""
        limits = self.train_limits
        log(INFO, "\t├──> Reply validation (fedrec-flwr):")
        log(INFO, "\t│\t├── weight key: %s", limits.weight_key)
        log(INFO, "\t│\t├── weight cap (train): %s", limits.max_weight)
        log(INFO, "\t│\t├── declared partition caps (train): %d", len(limits.partition_caps))
        log(INFO, "\t│\t├── weight clip multiple: %s", limits.clip_multiple or "off")
        log(INFO, "\t│\t├── max update norm: %s", limits.max_update_norm)
        log(INFO, "\t│\t└── uniform weights: %s", self.uniform_weights)
        self.strategy.summary()

    # --- configure: remember what was sent, make the sample reproducible ------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate; remember the arrays' spec (and values); re-target a partial sample."""
        self._spec = array_spec(arrays)
        if math.isfinite(self.train_limits.max_update_norm):
            self._sent = {name: a.numpy() for name, a in arrays.items()}
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
        return sample_rank(self.seed, server_round, node, self.partitions.get(node))

    def _learn_partitions(self, server_round: int, nodes: list[int], grid: Grid) -> None:
        """Ask unknown nodes for ``partition-id`` and ``num-partitions`` (one small message each).

        Raises
        ------
        PartitionMismatchError
            If no value was agreed yet and the answers disagree (before training).
        """
        if not nodes:
            return
        config = ConfigRecord({SERVER_ROUND_KEY: server_round})
        queries = [
            Message(
                RecordDict({CONFIG_RECORD: config}), dst_node_id=n, message_type=MessageType.QUERY
            )
            for n in nodes
        ]
        reported: dict[int, tuple[object, int]] = {}
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or len(reply.content.metric_records) != 1:
                continue
            record = next(iter(reply.content.metric_records.values()))
            pid, k = record.get(PARTITION_ID_KEY), record.get(NUM_PARTITIONS_KEY)
            if _is_int(k) and 1 <= k <= MAX_MAGNITUDE:
                reported[node] = (pid, k)
            if _is_int(pid) and 0 <= pid <= MAX_MAGNITUDE and (not _is_int(k) or pid < k):
                self._claim(node, pid)
        self._agree(reported)

    def _claim(self, node: int, pid: object) -> str | None:
        """Bind node to partition on first claim; refuse changes and duplicates."""
        if not _is_int(pid) or pid < 0:
            return f"partition-id {show(pid)} is not a non-negative integer"
        known = self.partitions.get(node)
        if known is not None and known != pid:
            return f"partition-id changed from {known} to {pid}"
        owner = next((n for n, p in self.partitions.items() if p == pid and n != node), None)
        if owner is not None:
            return f"partition-id {pid} already belongs to node {owner}"
        self.partitions[node] = pid
        return None

    # --- num-partitions: agreed once, then enforced ----------------------------

    def _agree(self, reported: Mapping[Any, tuple[object, int]]) -> None:
        """Fix the federation's ``num-partitions`` from the first reports.

        Raises
        ------
        PartitionMismatchError
            If the reports disagree.
        """
        if self.num_partitions is not None or not reported:
            return
        values = {k for _, k in reported.values()}
        if len(values) > 1:
            who = ", ".join(
                f"node {node} (partition-id {show(pid)}) says {show(k)}"
                for node, (pid, k) in sorted(reported.items(), key=lambda item: str(item[0]))
            )
            raise PartitionMismatchError(
                f"nodes disagree on {NUM_PARTITIONS_KEY}: {who}; start every SuperNode with "
                f"the same --node-config {NUM_PARTITIONS_KEY} (one partition-id each, "
                f"0 .. {NUM_PARTITIONS_KEY}-1)"
            )
        self._set_num_partitions(values.pop())

    def _set_num_partitions(self, k: int) -> None:
        self.num_partitions = k
        train = dataclasses.replace(self.train_limits, num_partitions=k)
        evaluate = dataclasses.replace(self.evaluate_limits, num_partitions=k)
        if self.partition_sizes is not None:
            sizes = self.partition_sizes(k)
            by_key = {NUM_EXAMPLES_KEY: sizes.examples, NUM_USERS_KEY: sizes.users}
            train = dataclasses.replace(
                train,
                partition_caps=_tightest(train.partition_caps, by_key.get(train.weight_key, {})),
                user_caps=_tightest(train.user_caps, sizes.users),
            )
            # An evaluation reply's weight is its number of users.
            evaluate = dataclasses.replace(
                evaluate,
                partition_caps=_tightest(evaluate.partition_caps, sizes.users),
                user_caps=_tightest(evaluate.user_caps, sizes.users),
            )
        self.train_limits, self.evaluate_limits = train, evaluate
        log(
            INFO,
            "fedrec-flwr: nodes agree on %s=%d%s",
            NUM_PARTITIONS_KEY,
            k,
            "; each partition's weight is capped by its size" if self.partition_sizes else "",
        )

    # --- aggregate: validate, order, delegate ----------------------------------

    def _filter(
        self, server_round: int, replies: Iterable[Message], train: bool
    ) -> tuple[list[Message], ArraySpec | None]:
        """The replies the wrapped strategy may see, in order, and the train spec used."""
        ordered = order_replies(replies)
        if self.num_partitions is None:
            self._agree(_reported_partitions(ordered))
        limits = self.train_limits if train else self.evaluate_limits
        spec: ArraySpec | None = None
        if train:
            spec = self._spec if self._spec is not None else _majority_spec(ordered)
        sent = self._sent if train and self._spec is not None else None
        kept: list[Message] = []
        seen: set[int] = set()
        for msg in ordered:
            if msg.has_error():
                kept.append(msg)  # the wrapped strategy logs and skips errors
                continue
            node = msg.metadata.src_node_id
            if _is_int(node):
                if node in seen:
                    duplicate = (
                        f"node {node} already replied in round {server_round}; "
                        "its first reply counts"
                    )
                    self._drop(server_round, msg, duplicate, train)
                    continue
                seen.add(node)
            reason: str | None = check_reply(msg.content, limits, spec, sent)
            if reason is None:
                metrics = _metrics(msg)
                if PARTITION_ID_KEY in metrics:
                    reason = self._claim(node, metrics[PARTITION_ID_KEY])
            if reason is None:
                kept.append(msg)
            else:
                self._drop(server_round, msg, reason, train)
        kept = self._majority_keys(server_round, kept, train)
        if train and self.uniform_weights:
            kept = [m if m.has_error() else _with_metrics(m, {limits.weight_key: 1}) for m in kept]
        else:
            kept = self._clip(server_round, kept, limits, train)
        return kept, spec

    def _majority_keys(
        self, server_round: int, replies: list[Message], train: bool
    ) -> list[Message]:
        """Drop replies whose record names or metric keys differ from the majority's.

        Flower's aggregation raises (ending the run) unless every reply names
        its records alike and carries the same metric keys.
        """

        def keys(msg: Message) -> tuple[tuple[str, ...], tuple[str, ...]]:
            content = msg.content
            names = (*content.metric_records, *content.array_records)
            return names, tuple(sorted(_metrics(msg).keys()))

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
            names, got = keys(msg)
            missing, extra = sorted(set(best[1]) - set(got)), sorted(set(got) - set(best[1]))
            if names != best[0]:
                reason = (
                    f"record names {list(names)} differ from the other replies' {list(best[0])}"
                )
            else:
                reason = (
                    f"metric keys differ from the other replies': missing {missing}, "
                    f"unexpected {extra}"
                )
            self._drop(server_round, msg, reason, train)
        return kept

    def _clip(
        self, server_round: int, replies: list[Message], limits: ReplyLimits, train: bool
    ) -> list[Message]:
        """Clip uncapped weights to ``clip_multiple`` x the round's lower median weight."""
        key = limits.weight_key
        valid = [m for m in replies if not m.has_error()]
        bound = clip_bound([float(_metrics(m)[key]) for m in valid], limits.clip_multiple)  # type: ignore[arg-type]
        if not math.isfinite(bound):
            return replies
        out = []
        for msg in replies:
            metrics = None if msg.has_error() else _metrics(msg)
            pid = None if metrics is None else metrics.get(PARTITION_ID_KEY)
            capped = _is_int(pid) and pid in limits.partition_caps
            if metrics is None or capped or float(metrics[key]) <= bound:  # type: ignore[arg-type]
                out.append(msg)
                continue
            claimed = float(metrics[key])  # type: ignore[arg-type]
            changes: dict[str, float] = {key: bound}
            if not train:
                # Sums are over the claimed weight: scale them with it, keeping
                # the reply's per-user means and shrinking only its share.
                factor = bound / claimed
                for name, value in metrics.items():
                    if name.endswith(SUM_SUFFIX) and not isinstance(value, list):
                        changes[name] = float(value) * factor
            out.append(_with_metrics(msg, changes))
            node = msg.metadata.src_node_id
            self.clipped.append(
                {
                    "round": server_round,
                    "kind": "train" if train else "evaluate",
                    "node": node,
                    "partition": pid,
                    "claimed": claimed,
                    "used": bound,
                }
            )
            log(
                WARNING,
                "fedrec-flwr: round %d: clipped %s weight of node %s (partition %s): "
                "%r=%.6g -> %.6g (%g x the round's lower median weight)",
                server_round,
                "train" if train else "evaluate",
                node,
                pid,
                key,
                claimed,
                bound,
                limits.clip_multiple,
            )
        return out

    def _drop(self, server_round: int, msg: Message, reason: str, train: bool) -> None:
        node = msg.metadata.src_node_id
        self.dropped.append((server_round, node, reason))
        log(
            WARNING,
            "fedrec-flwr: round %d: dropped %s reply from node %s: %s",
            server_round,
            "train" if train else "evaluate",
            node,
            reason,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, order, let the wrapped strategy aggregate, restore the sent dtypes."""
        kept, spec = self._filter(server_round, replies, train=True)
        if not any(not m.has_error() for m in kept):
            log(WARNING, "fedrec-flwr: round %d: no valid reply; model unchanged", server_round)
            return None, None
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        if arrays is not None and spec:
            arrays, cast = restore_dtypes(arrays, {n: dtype for n, (_, dtype) in spec.items()})
            if cast and not self._cast_logged:
                self._cast_logged = True
                log(
                    INFO,
                    "fedrec-flwr: %s returns arrays in other dtypes than sent; each round's "
                    "aggregate is cast back to the model's (e.g. %r: %s)",
                    type(self.strategy).__name__,
                    cast[0],
                    spec[cast[0]][1],
                )
        reason = None if arrays is None else check_finite_aggregate(arrays)
        if reason is not None:
            # Finite replies can still sum past float32's range (or a wrapped
            # strategy can misbehave): keep the previous model rather than poison it.
            self.rejected.append((server_round, reason))
            log(WARNING, "fedrec-flwr: round %d: %s; model unchanged", server_round, reason)
            return None, metrics
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Validate, order, then let the wrapped strategy aggregate."""
        kept, _ = self._filter(server_round, replies, train=False)
        if not any(not m.has_error() for m in kept):
            return None
        return self.strategy.aggregate_evaluate(server_round, kept)


# The wrapper's own attributes (set in __init__): never passed through, even if
# the wrapped strategy has one of the same name (e.g. a nested ValidatedStrategy).
_OWN = frozenset(
    {
        "strategy",
        "train_limits",
        "evaluate_limits",
        "uniform_weights",
        "seed",
        "query_timeout",
        "partition_sizes",
        "dropped",
        "clipped",
        "partitions",
        "num_partitions",
        "_spec",
        "_sent",
        "_cast_logged",
    }
)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


def _tightest(*caps: Mapping[int, float]) -> dict[int, float]:
    """Per partition, the smallest cap any source gives."""
    out: dict[int, float] = {}
    for source in caps:
        for pid, cap in source.items():
            out[pid] = min(cap, out.get(pid, math.inf))
    return out


def _reported_partitions(replies: list[Message]) -> dict[Any, tuple[object, int]]:
    """Node -> (partition-id, num-partitions) from the replies that report one."""
    out: dict[Any, tuple[object, int]] = {}
    for msg in replies:
        if msg.has_error() or len(msg.content.metric_records) != 1:
            continue
        metrics = _metrics(msg)
        k = metrics.get(NUM_PARTITIONS_KEY)
        if _is_int(k) and 1 <= k <= MAX_MAGNITUDE:
            out.setdefault(msg.metadata.src_node_id, (metrics.get(PARTITION_ID_KEY), k))
    return out


def _majority_spec(replies: list[Message]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The array names, shapes and dtypes most replies share (the first such on ties).

    Used when no ``configure_train`` told the wrapper what was sent; replies
    without exactly one ArrayRecord are dropped by the checks anyway.
    """
    counts: Counter[tuple[tuple[str, tuple[tuple[int, ...], str]], ...]] = Counter()
    for msg in replies:
        if msg.has_error() or len(msg.content.array_records) != 1:
            continue
        counts[
            tuple(sorted(array_spec(next(iter(msg.content.array_records.values()))).items()))
        ] += 1
    if not counts:
        return {}
    most = max(counts.values())
    return dict(
        next(spec for spec, n in counts.items() if n == most)
    )  # Counter keeps first-seen order


def _with_metrics(msg: Message, changes: Mapping[str, float | int]) -> Message:
    """``msg`` with some metric values replaced; the caller's records are not modified."""
    content = msg.content
    name = next(iter(content.metric_records))
    record = MetricRecord(dict(content.metric_records[name]))
    for key, value in changes.items():
        record[key] = value
    new_content = RecordDict(dict(content.items()))
    new_content[name] = record
    if type(msg) is Message:
        out = copy.copy(msg)  # same metadata, new content
        out.content = new_content
        return out
    msg.content = new_content  # a test double (Flower's tests use Mock(spec=Message))
    return msg
