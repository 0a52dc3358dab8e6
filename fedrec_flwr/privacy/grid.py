"""Run the item-inference audit on the replies as the server receives them.

:class:`AuditedGrid` wraps any Flower ``Grid`` (as
:class:`~fedrec_flwr.runs.metering.MeteredGrid` does), so every strategy runs
unchanged: on the training messages of an audited round it keeps the arrays
sent to each node and runs the attacks of :mod:`fedrec_flwr.privacy.audit` on
each reply. :func:`audit_summary` and :func:`plot_audit` turn the records into
the ``privacy-audit`` entry of ``results.json`` and ``privacy-audit.png``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from ..protocol import ITEM_COUNTS_KEY, NUM_PARTITIONS_KEY, PARTITION_ID_KEY, server_round
from ..runs.metering import DelegatingGrid
from .audit import ATTACKS, REPORTED_COUNTS, audit_reply, reported_counts_attack, score_attack

if TYPE_CHECKING:
    from ..datasets import DataOptions
    from ..models import Recommender

__all__ = ["AuditedGrid", "TruthFn", "audit_summary", "plot_audit", "training_items_truth"]

#: ``(partition_id, num_partitions) -> item codes`` of that partition's training interactions.
TruthFn = Callable[[int, int], np.ndarray]

#: Scored fields of a record that :func:`audit_summary` aggregates.
_METRICS = ("inferred", "base-rate", "precision", "recall", "auc", "auc-either-sign")


def training_items_truth(options: DataOptions) -> TruthFn:
    """The truth of a simulation: each partition's distinct training items.

    Parameters
    ----------
    options : DataOptions
        The run's data options (the partition cache the clients read).

    Returns
    -------
    TruthFn
        Reads a partition with :func:`~fedrec_flwr.datasets.load_client_data`
        once and caches its distinct training items.
    """
    from ..datasets import load_client_data

    cache: dict[tuple[int, int], np.ndarray] = {}

    def truth(partition_id: int, num_partitions: int) -> np.ndarray:
        key = (partition_id, num_partitions)
        if key not in cache:
            data = load_client_data(options, partition_id, num_partitions)
            cache[key] = np.unique(data.train_items)
        return cache[key]

    return truth


def _arrays(content: RecordDict) -> dict[str, np.ndarray]:
    """Every array of a message's ArrayRecords, by name."""
    return {
        name: array.numpy()
        for record in content.array_records.values()
        for name, array in record.items()
    }


def _sent_arrays(messages: Sequence[Message]) -> dict[int, dict[str, np.ndarray]]:
    """The arrays sent to each node; one copy per distinct content.

    A strategy usually sends every node the same global model: with one user per
    node, a copy per node would hold the model once per user in memory.
    """
    by_digest: dict[bytes, dict[str, np.ndarray]] = {}
    out = {}
    for message in messages:
        arrays = _arrays(message.content)
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(arrays):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name]).tobytes())
        out[message.metadata.dst_node_id] = by_digest.setdefault(digest.digest(), arrays)
    return out


def _metric_int(content: RecordDict, key: str) -> int | None:
    for record in content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _metric_counts(content: RecordDict) -> list[int] | None:
    """The ``item-counts`` list of a row-wise-aggregation reply, if it carries one."""
    for record in content.metric_records.values():
        value = record.get(ITEM_COUNTS_KEY)
        if isinstance(value, list) and all(isinstance(c, int) for c in value):
            return [int(c) for c in value]
    return None


def _round(message: Message) -> int:
    for record in message.content.config_records.values():
        value = server_round(record)
        if value:
            return value
    return 0


class AuditedGrid(DelegatingGrid):
    """Delegate to ``grid``; attack each training reply of the audited rounds.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid to delegate to (e.g. a
        :class:`~fedrec_flwr.runs.metering.MeteredGrid`).
    model : Recommender
        A one-user model of the run's architecture and catalogue size (the
        attacks read its item tables and run its forward pass on the arrays
        sent; its own parameters are not used).
    truth : TruthFn, optional (default: None)
        The training items of a partition, where the server knows them
        (simulation); None in a deployment: records then hold only what the
        attacks infer.
    every : int (default: 1)
        Audit rounds 1, 1+every, 1+2*every, ...
    attacks : sequence of str (default: ATTACKS)
        Attacks to run per reply.
    seed : int (default: 0)
        Seed of the ``signature`` attack.

    Attributes
    ----------
    records : list of dict
        One per (round, replying node, attack): ``round``, ``node``,
        ``partition-id`` (None if the reply does not carry it), ``attack``,
        then :func:`~fedrec_flwr.privacy.audit.score_attack`'s fields. A reply
        that reports its per-item training counts (row-wise item aggregation)
        adds a ``reported-counts`` record: no attack is needed to read those.

    Notes
    -----
    Only ``send_and_receive`` is audited (every ``flwr.serverapp.strategy``
    strategy trains through it); messages pushed with ``push_messages``
    directly pass unaudited.
    """

    def __init__(
        self,
        grid: Grid,
        model: Recommender,
        *,
        truth: TruthFn | None = None,
        every: int = 1,
        attacks: Sequence[str] = ATTACKS,
        seed: int = 0,
    ) -> None:
        if every < 1:
            raise ValueError(f"every={every}: must be >= 1")
        super().__init__(grid)
        self._model = model
        self._truth = truth
        self._every = every
        self._attacks = tuple(attacks)
        self._seed = seed
        self.records: list[dict[str, Any]] = []

    def audited(self, server_round: int) -> bool:
        """Whether ``server_round`` is audited (1, 1+every, ...).

        Parameters
        ----------
        server_round : int
            Round number, from 1.
        """
        return server_round >= 1 and (server_round - 1) % self._every == 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send and wait as ``grid`` does; attack the training replies of audited rounds."""
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type.startswith("train")]
        rnd = _round(train[0]) if train else 0
        sent = _sent_arrays(train) if train and self.audited(rnd) else {}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if sent:
            before = len(self.records)
            for reply in replies:
                node = reply.metadata.src_node_id
                if reply.has_error() or node not in sent:
                    continue
                self._audit(rnd, node, sent[node], reply.content)
            _log_round(rnd, self.records[before:])
        return replies

    def _model_items(self) -> int:
        tables = self._model.item_tables()
        return int(self._model.state_dict()[tables[0]].shape[0]) if tables else 0

    def _audit(
        self, rnd: int, node: int, sent: Mapping[str, np.ndarray], content: RecordDict
    ) -> None:
        partition = _metric_int(content, PARTITION_ID_KEY)
        partitions = _metric_int(content, NUM_PARTITIONS_KEY)
        try:
            results = audit_reply(
                sent, _arrays(content), self._model, attacks=self._attacks, seed=self._seed
            )
        except Exception as exc:  # an observer: a reply it cannot read must not stop the run
            log(WARNING, "fedrec-flwr: privacy audit skipped node %s: %s", node, exc)
            return
        counts = _metric_counts(content)
        if counts is not None and len(counts) == self._model_items():
            results.append(reported_counts_attack(counts))
        truth = None
        if self._truth is not None and partition is not None and partitions is not None:
            try:
                truth = self._truth(partition, partitions)
            except Exception as exc:  # e.g. a partition id the data does not have
                log(WARNING, "fedrec-flwr: privacy audit: no truth for node %s: %s", node, exc)
        for result in results:
            self.records.append(
                {
                    "round": rnd,
                    "node": node,
                    PARTITION_ID_KEY: partition,
                    "attack": result.attack,
                    **score_attack(result, truth),
                }
            )


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


def audit_summary(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per round and attack: mean, min and max over nodes of each scored field.

    Parameters
    ----------
    records : sequence of mapping
        :attr:`AuditedGrid.records`.

    Returns
    -------
    list of dict
        ``{"round", "attack", "nodes", "inferred": {"mean", "min", "max"},
        "base-rate": ..., "precision": ..., "recall": ..., "auc": ...,
        "auc-either-sign": ...}``, in
        round then :data:`~fedrec_flwr.privacy.audit.ATTACKS` order; a field is
        None where no node has a value (no truth, or nothing predicted).
    """
    order = {name: i for i, name in enumerate((*ATTACKS, REPORTED_COUNTS))}
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((int(record["round"]), str(record["attack"])), []).append(record)
    out = []
    for (rnd, attack), rows in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1])
    ):
        entry: dict[str, Any] = {"round": rnd, "attack": attack, "nodes": len(rows)}
        for field in _METRICS:
            entry[field] = _stats([float(r[field]) for r in rows if r.get(field) is not None])
        out.append(entry)
    return out


def _best(summary: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    scored = [s for s in summary if s.get("auc")]
    return max(scored, key=lambda s: s["auc"]["mean"]) if scored else None


def _log_round(rnd: int, records: Sequence[Mapping[str, Any]]) -> None:
    """One line: the best attack's mean AUC (or, without truth, what was inferred)."""
    summary = audit_summary(records)
    if not summary:
        return
    best = _best(summary)
    if best is not None:
        log(
            INFO,
            "fedrec-flwr: privacy audit round %d: best attack %s, mean AUC %.3f over %d nodes",
            rnd,
            best["attack"],
            best["auc"]["mean"],
            best["nodes"],
        )
        return
    inferred = ", ".join(
        f"{s['attack']} {s['inferred']['mean']:.1f}" for s in summary if s.get("inferred")
    )
    log(INFO, "fedrec-flwr: privacy audit round %d: mean items inferred: %s", rnd, inferred)


def plot_audit(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Draw AUC, precision and recall per round and attack (mean, min-max band).

    Without truth (a deployment) the single panel is the inferred count.

    Parameters
    ----------
    records : sequence of mapping
        :attr:`AuditedGrid.records`.
    path : pathlib.Path
        The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless; selected here, not at import time
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    summary = audit_summary(records)
    attacks = list(dict.fromkeys(s["attack"] for s in summary))
    fields = (
        ("auc", "precision", "recall")
        if any(s.get("auc") or s.get("recall") for s in summary)
        else ("inferred",)
    )
    fig, axes = plt.subplots(
        1, len(fields), figsize=(4.5 * len(fields), 3.8), constrained_layout=True, squeeze=False
    )
    for ax, field in zip(axes[0], fields, strict=True):
        for attack in attacks:
            rows = [s for s in summary if s["attack"] == attack and s.get(field)]
            if not rows:
                continue
            x = [s["round"] for s in rows]
            mean = [s[field]["mean"] for s in rows]
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=attack)
            ax.fill_between(
                x,
                [s[field]["min"] for s in rows],
                [s[field]["max"] for s in rows],
                color=line.get_color(),
                alpha=0.15,
            )
        if field == "auc":
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(field)
        if field != "inferred":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel with no attack's values has none
            ax.legend(fontsize=8)
    fig.suptitle("server-side item inference (mean over nodes, band: min-max)", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
