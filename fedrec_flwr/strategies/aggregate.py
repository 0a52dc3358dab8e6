"""Pure aggregation helpers shared by the strategies.

They take plain Flower records and return new ones; no strategy state involved,
so they are tested against hand-computed values directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeGuard

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from ..protocol import COUNT_KEYS, PARTITION_ID_KEY, SUM_SUFFIX

__all__ = [
    "exact_metric_aggregation",
    "order_replies",
    "restore_dtypes",
    "rowwise_average",
    "weighted_average",
]


def exact_metric_aggregation(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Aggregate client metrics into exact global values.

    - ``K-sum`` keys (sums over a client's users) become ``K`` = total sum /
      total weight: with the number of users as weight this is the global mean
      over users, not a mean of per-client means.
    - Other numeric keys become the weighted mean ``sum_k w_k v_k / sum_k w_k``.
    - The weight key, ``partition-id``, ``num-examples``, ``num-users`` and
      ``num-partitions`` are dropped; list values (e.g. ``item-counts``) are skipped.

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
        if key in (weighting_metric_name, PARTITION_ID_KEY) or key in COUNT_KEYS:
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
    aggregate bit-identical across runs with the same seed. Error replies go
    last.

    The sort is stable and never compares what it cannot: a missing or
    non-finite ``partition-id`` sorts after the others, and a node id that is
    not an integer (Flower's own strategy tests build replies with ``Mock``
    metadata) keeps the reply's arrival position among its ties.

    Parameters
    ----------
    replies : iterable of flwr.app.Message
        Replies, in arrival order.

    Returns
    -------
    list of flwr.app.Message
        The same replies, ordered.
    """

    def key(item: tuple[int, Message]) -> tuple[int, float, int, int]:
        arrival, msg = item
        node = getattr(msg.metadata, "src_node_id", None)
        # (0, id) for real ids, (1, arrival) otherwise: both halves are ints.
        known, tie = (0, int(node)) if _is_int(node) else (1, arrival)
        if msg.has_error():
            return (1, 0.0, known, tie)
        metric_records = msg.content.metric_records
        record = next(iter(metric_records.values())) if len(metric_records) == 1 else {}
        claimed = record.get(PARTITION_ID_KEY)
        order = float(claimed) if _is_number(claimed) else math.inf  # type: ignore[arg-type]
        return (0, order if math.isfinite(order) else math.inf, known, tie)

    return [msg for _, msg in sorted(enumerate(replies), key=key)]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int or float (not bool) that ``float()`` can hold."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:  # an int beyond float range
        return False
    return True


def restore_dtypes(arrays: ArrayRecord, dtypes: Mapping[str, str]) -> tuple[ArrayRecord, list[str]]:
    """Cast each array back to the dtype the model was sent in.

    Flower 1.42's FedAdam returns float64 arrays whatever the clients sent (its
    bias-corrected step size is a NumPy float64 scalar, and NumPy 2 promotes the
    float32 model to it); the next round's replies (float32 from the model)
    would then no longer match. Any other strategy that changes dtypes is
    mended the same way. Arrays whose name is
    not in ``dtypes`` or whose dtype already matches are kept as they are
    (same object).

    Parameters
    ----------
    arrays : flwr.app.ArrayRecord
        An aggregate.
    dtypes : mapping of str to str
        Array name -> dtype name it was sent with.

    Returns
    -------
    tuple of (flwr.app.ArrayRecord, list of str)
        The record (a new one if anything was cast, in the same key order) and
        the names that were cast.
    """
    cast = [n for n, a in arrays.items() if n in dtypes and str(a.dtype) != dtypes[n]]
    if not cast:
        return arrays, []
    out = ArrayRecord()
    for name, array in arrays.items():
        out[name] = Array(array.numpy().astype(dtypes[name])) if name in cast else array
    return out, cast


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
