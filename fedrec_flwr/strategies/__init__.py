"""Server strategies (Message API) and their pure aggregation functions."""

from .aggregate import (
    exact_metric_aggregation,
    order_replies,
    rowwise_average,
    weighted_average,
)
from .fedavg import WeightedFedAvg
from .guard import ValidatedStrategy
from .validation import (
    ReplyLimits,
    array_spec,
    check_arrays,
    check_metrics,
    check_reply,
    check_weight,
)

__all__ = [
    "ReplyLimits",
    "ValidatedStrategy",
    "WeightedFedAvg",
    "array_spec",
    "check_arrays",
    "check_metrics",
    "check_reply",
    "check_weight",
    "exact_metric_aggregation",
    "order_replies",
    "rowwise_average",
    "weighted_average",
]
