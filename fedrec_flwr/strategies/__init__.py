"""Server strategies (Message API) and their pure aggregation functions."""

from .aggregate import exact_metric_aggregation, order_replies
from .fedavg import WeightedFedAvg

__all__ = ["WeightedFedAvg", "exact_metric_aggregation", "order_replies"]
