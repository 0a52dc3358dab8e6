"""Weighted FedAvg with deterministic reply order and exact global metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from .aggregate import exact_metric_aggregation, order_replies

__all__ = ["WeightedFedAvg"]


class WeightedFedAvg(FedAvg):
    """FedAvg, ``w_{t+1} = sum_k n_k / n * w_k``, made reproducible.

    Identical to :class:`flwr.serverapp.strategy.FedAvg` except that

    - replies are put in a fixed order (by ``partition-id``) before summing, so
      the same seed gives the same bits;
    - metrics default to :func:`exact_metric_aggregation` (``*-sum`` keys become
      exact global means over users).

    With :class:`fedrec_flwr.client.NCFClient`, ``n_k`` (``num-examples``) is the
    client's number of training interactions. Only the arrays clients send are
    averaged: private user embeddings never reach the server.

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
    weighted_by_key : str (default: "num-examples")
        MetricRecord key holding each client's weight ``n_k``.
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord in messages.
    configrecord_key : str (default: "config")
        Key of the ConfigRecord in messages.
    train_metrics_aggr_fn : callable, optional (default: exact_metric_aggregation)
        ``(list[RecordDict], str) -> MetricRecord`` for training metrics.
    evaluate_metrics_aggr_fn : callable, optional (default: exact_metric_aggregation)
        ``(list[RecordDict], str) -> MetricRecord`` for evaluation metrics.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
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

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate training replies in a fixed order (see class docstring)."""
        return super().aggregate_train(server_round, order_replies(replies))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation replies in a fixed order."""
        return super().aggregate_evaluate(server_round, order_replies(replies))
