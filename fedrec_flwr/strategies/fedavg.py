"""Weighted FedAvg with deterministic reply order and exact global metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..protocol import ARRAYS_RECORD, CONFIG_RECORD, ITEM_COUNTS_KEY, NUM_EXAMPLES_KEY
from .aggregate import exact_metric_aggregation, order_replies, rowwise_average, weighted_average

__all__ = ["WeightedFedAvg"]


class WeightedFedAvg(FedAvg):
    """FedAvg, ``w_{t+1} = sum_k n_k / n * w_k``, made reproducible.

    Identical to :class:`flwr.serverapp.strategy.FedAvg` except that

    - replies are put in a fixed order (by ``partition-id``) before summing, so
      the same seed gives the same bits;
    - metrics default to :func:`exact_metric_aggregation` (``*-sum`` keys become
      exact global means over users).

    With :class:`fedrec_flwr.client.numpy_client.NCFClient`, ``n_k`` (``num-examples``) is the
    client's number of training interactions (``weighted_by_key=NUM_USERS_KEY``:
    its number of users). Only the arrays clients send are averaged: private
    user embeddings never reach the server.

    Row-wise item aggregation (``rowwise_items=True``, opt-in): the train config
    asks clients for ``item-counts`` (their training interactions per item) and
    each row of an item table (``item_*``) becomes
    ``sum_k c_kr w_kr / sum_k c_kr`` over the clients that trained item ``r``
    (:func:`~fedrec_flwr.strategies.aggregate.rowwise_average`); an item nobody
    trained keeps its value. Other arrays are averaged as in FedAvg. Privacy
    cost: the counts tell the server which items each group interacted with,
    and how often, which plain FedAvg hides (it only sees dense updated tables).

    Parameters
    ----------
    fraction_train : float (default: 1.0)
        Fraction of nodes used for training each round.
    fraction_evaluate : float (default: 1.0)
        Fraction of nodes used for evaluation each round.
    min_train_nodes : int (default: 2)
        Minimum number of nodes used for training.
    min_evaluate_nodes : int (default: 2)
        Minimum number of nodes used for evaluation.
    min_available_nodes : int (default: 2)
        Minimum number of connected nodes before a round starts.
    weighted_by_key : str (default: NUM_EXAMPLES_KEY)
        MetricRecord key holding each client's weight ``n_k``.
    arrayrecord_key : str (default: ARRAYS_RECORD)
        Key of the ArrayRecord in messages.
    configrecord_key : str (default: CONFIG_RECORD)
        Key of the ConfigRecord in messages.
    train_metrics_aggr_fn : callable, optional (default: exact_metric_aggregation)
        ``(list[RecordDict], str) -> MetricRecord`` for training metrics.
    evaluate_metrics_aggr_fn : callable, optional (default: exact_metric_aggregation)
        ``(list[RecordDict], str) -> MetricRecord`` for evaluation metrics.
    rowwise_items : bool (default: False)
        Aggregate item-embedding rows over the clients that trained them.
    item_prefix : str (default: "item_")
        Names of the arrays aggregated row-wise start with this.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = NUM_EXAMPLES_KEY,
        arrayrecord_key: str = ARRAYS_RECORD,
        configrecord_key: str = CONFIG_RECORD,
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        rowwise_items: bool = False,
        item_prefix: str = "item_",
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn or exact_metric_aggregation,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn or exact_metric_aggregation,
        )
        self.rowwise_items = rowwise_items
        self.item_prefix = item_prefix
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As FedAvg; with row-wise items, keep the global arrays and ask for counts."""
        if self.rowwise_items:
            self.current_arrays = arrays
            config[ITEM_COUNTS_KEY] = True
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate training replies in a fixed order (see class docstring)."""
        if not self.rowwise_items:
            return super().aggregate_train(server_round, order_replies(replies))
        valid, _ = self._check_and_log_replies(order_replies(replies), is_train=True)
        if not valid:
            return None, None
        if self.current_arrays is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        contents = [msg.content for msg in valid]
        metrics = [next(iter(c.metric_records.values())) for c in contents]
        arrays = [next(iter(c.array_records.values())) for c in contents]
        weights = [float(m[self.weighted_by_key]) for m in metrics]  # type: ignore[arg-type]
        counts = [np.asarray(m[ITEM_COUNTS_KEY], dtype=np.float64) for m in metrics]
        out = ArrayRecord()
        for name in arrays[0]:
            tables = [a[name].numpy() for a in arrays]
            if name.startswith(self.item_prefix):
                value = rowwise_average(tables, counts, self.current_arrays[name].numpy())
            else:
                value = weighted_average(tables, weights)
            out[name] = Array(np.asarray(value))
        return out, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation replies in a fixed order."""
        return super().aggregate_evaluate(server_round, order_replies(replies))
