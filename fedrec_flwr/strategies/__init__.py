"""Server strategies (Message API) and their pure aggregation functions."""

from .aggregate import (
    exact_metric_aggregation,
    order_replies,
    restore_dtypes,
    rowwise_average,
    weighted_average,
)
from .fedavg import WeightedFedAvg
from .guard import PartitionMismatchError, ValidatedStrategy
from .validation import (
    PartitionSizes,
    ReplyLimits,
    array_spec,
    check_arrays,
    check_metrics,
    check_partition,
    check_reply,
    check_update_norm,
    check_user_count,
    check_user_sums,
    check_weight,
    clip_bound,
    is_per_user_sum,
    update_norm,
)

__all__ = [
    "PartitionMismatchError",
    "PartitionSizes",
    "ReplyLimits",
    "ValidatedStrategy",
    "WeightedFedAvg",
    "array_spec",
    "check_arrays",
    "check_metrics",
    "check_partition",
    "check_reply",
    "check_update_norm",
    "check_user_count",
    "check_user_sums",
    "check_weight",
    "clip_bound",
    "exact_metric_aggregation",
    "is_per_user_sum",
    "order_replies",
    "restore_dtypes",
    "rowwise_average",
    "update_norm",
    "weighted_average",
]
