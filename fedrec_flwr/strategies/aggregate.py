"""Pure aggregation helpers shared by the strategies.

They take plain Flower records and return new ones; no strategy state involved,
so they are tested against hand-computed values directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message, MetricRecord, RecordDict

__all__ = ["ORDER_KEY", "SUM_SUFFIX", "exact_metric_aggregation", "order_replies"]

SUM_SUFFIX = "-sum"
ORDER_KEY = "partition-id"


def exact_metric_aggregation(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Aggregate client metrics into exact global values.

    - ``K-sum`` keys (sums over a client's users) become ``K`` = total sum /
      total weight: with the number of users as weight this is the global mean
      over users, not a mean of per-client means.
    - Other numeric keys become the weighted mean ``sum_k w_k v_k / sum_k w_k``.
    - The weight key and ``partition-id`` are dropped.

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
        if key in (weighting_metric_name, ORDER_KEY):
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
