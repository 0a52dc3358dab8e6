"""Pure aggregation helpers shared by the strategies.

They take plain Flower records and return new ones; no strategy state involved,
so they are tested against hand-computed values directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

__all__ = [
    "COUNT_KEYS",
    "ORDER_KEY",
    "SUM_SUFFIX",
    "exact_metric_aggregation",
    "order_replies",
    "rowwise_average",
    "weighted_average",
]

SUM_SUFFIX = "-sum"
ORDER_KEY = "partition-id"
# Client sizes, not metrics: never averaged into results.
COUNT_KEYS = frozenset({"num-examples", "num-users"})


def exact_metric_aggregation(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Aggregate client metrics into exact global values.

    - ``K-sum`` keys (sums over a client's users) become ``K`` = total sum /
      total weight: with the number of users as weight this is the global mean
      over users, not a mean of per-client means.
    - Other numeric keys become the weighted mean ``sum_k w_k v_k / sum_k w_k``.
    - The weight key, ``partition-id``, ``num-examples`` and ``num-users`` are
      dropped; list values (e.g. ``item-counts``) are skipped.

    ``math.fsum`` makes the result independent of the order of ``records``.

    Parameters
    ----------
    records : list of flwr.app.RecordDict
        Reply contents, each with exactly one MetricRecord.
    weighting_metric_name : str
        Key holding each client's weight (e.g. ``num-examples``).

    Raises
    ------
    ValueError
        If the weights do not sum to a positive finite number.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = [float(m[weighting_metric_name]) for m in metrics]  # type: ignore[arg-type]
    total = math.fsum(weights)
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"weights {weights!r} do not sum to a positive finite number")
    out = MetricRecord()
    for key in metrics[0]:
        if key in (weighting_metric_name, ORDER_KEY) or key in COUNT_KEYS:
            continue
        values = [m[key] for m in metrics]
        if any(isinstance(v, list) for v in values):
            continue  # lists have no agreed meaning here; Flower's FedAvg averages them
        if key.endswith(SUM_SUFFIX):
            out[key[: -len(SUM_SUFFIX)]] = math.fsum(values) / total  # type: ignore[arg-type]
        else:
            out[key] = math.fsum(w * v for w, v in zip(weights, values, strict=True)) / total  # type: ignore[operator]
    return out


def order_replies(replies: Iterable[Message]) -> list[Message]:
    """Put replies in a fixed order before summing.

    Float addition is not associative, and Flower returns replies in arrival
    order; ordering by the client's ``partition-id`` (then node id) makes the
    aggregate bit-identical across runs with the same seed.
    """

    def key(msg: Message) -> tuple[int, float, int]:
        if msg.has_error():
            return (1, 0.0, msg.metadata.src_node_id)
        metric_records = msg.content.metric_records
        record = next(iter(metric_records.values())) if len(metric_records) == 1 else {}
        order = record.get(ORDER_KEY, math.inf)
        order = float(order) if isinstance(order, (int, float)) else math.inf
        return (0, order, msg.metadata.src_node_id)

    return sorted(replies, key=key)


def weighted_average(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_k w_k / sum(w) * a_k``, summed in the given order.

    The same operations, in the same order, as Flower's FedAvg, so the two agree
    to the bit; works for 0-d arrays.

    Raises
    ------
    ValueError
        If there are no arrays or the weights do not sum to a positive finite number.
    """
    if not arrays:
        raise ValueError("nothing to average")
    total = sum(weights)
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"weights {list(weights)!r} do not sum to a positive finite number")
    out = np.asarray(arrays[0]) * (weights[0] / total)
    for array, weight in zip(arrays[1:], weights[1:], strict=True):
        out = out + np.asarray(array) * (weight / total)
    return np.asarray(out)


def rowwise_average(
    tables: Sequence[np.ndarray], counts: Sequence[np.ndarray], previous: np.ndarray
) -> np.ndarray:
    """Average each row over the clients that trained it, weighted by their counts.

    Row ``r`` becomes ``sum_k c_kr t_kr / sum_k c_kr`` where ``c_kr`` is client
    ``k``'s count for row ``r`` (its training interactions with item ``r``); a
    row no client counted keeps its ``previous`` value instead of being pulled
    towards the clients' unchanged copies.

    Parameters
    ----------
    tables : sequence of numpy.ndarray
        Each client's ``(rows, dim)`` table.
    counts : sequence of numpy.ndarray
        Each client's ``(rows,)`` non-negative counts.
    previous : numpy.ndarray
        The global ``(rows, dim)`` table sent this round.
    """
    if len(tables) != len(counts) or not tables:
        raise ValueError(f"{len(tables)} tables for {len(counts)} count vectors")
    c = np.stack([np.asarray(v, dtype=np.float64) for v in counts])
    if c.shape[1] != previous.shape[0] or (c < 0).any() or not np.isfinite(c).all():
        raise ValueError(f"counts must be finite, >= 0, one per row ({previous.shape[0]})")
    total = c.sum(axis=0)
    summed = np.zeros(previous.shape, dtype=np.float64)
    for table, weight in zip(tables, c, strict=True):
        summed += weight.reshape(-1, *([1] * (previous.ndim - 1))) * table
    out = np.array(previous, copy=True)
    seen = total > 0
    out[seen] = (summed[seen] / total[seen].reshape(-1, *([1] * (previous.ndim - 1)))).astype(
        previous.dtype
    )
    return out
