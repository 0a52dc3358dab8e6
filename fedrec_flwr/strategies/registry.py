"""Strategies by name: ``strategy`` -> factory, and the validated build.

Every entry builds a Message-API strategy from the run config's ``strategy``
group (:class:`~fedrec_flwr.config.StrategyOptions`) and the keyword arguments
all strategies share (sampling, weights, metric aggregation);
:func:`build_strategy` wraps it in the reply-validation layer.
A new strategy is one factory and one registry line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from ..privacy.nodedp import NODE_DP_MODES, node_dp_strategy
from ..protocol import ITEM_COUNTS_KEY, NUM_EXAMPLES_KEY, NUM_USERS_KEY
from .aggregate import exact_metric_aggregation
from .caps import read_node_weight_caps
from .fedavg import WeightedFedAvg
from .guard import ValidatedStrategy
from .validation import PartitionSizes, ReplyLimits

if TYPE_CHECKING:
    from ..config import RunConfig, StrategyOptions

__all__ = [
    "ITEM_AGGREGATIONS",
    "STRATEGIES",
    "WEIGHT_KEYS",
    "build_bare_strategy",
    "build_strategy",
]

#: ``weight-key``: FedAvg weight ``n_k`` (training interactions, users, 1 per client).
WEIGHT_KEYS = ("interactions", "users", "uniform")
#: ``item-aggregation``: whole arrays, or item rows over the clients that trained them.
ITEM_AGGREGATIONS = ("dense", "rowwise")

Factory = Callable[["StrategyOptions", dict[str, Any]], Strategy]


def _fedavg(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return WeightedFedAvg(**common, rowwise_items=options.item_aggregation == "rowwise")


def _fedadam(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return FedAdam(**common, eta=options.server_learning_rate or 0.1)


def _fedyogi(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return FedYogi(**common, eta=options.server_learning_rate or 0.01)


def _fedavgm(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return FedAvgM(
        **common,
        server_learning_rate=options.server_learning_rate or 1.0,
        server_momentum=options.server_momentum,
    )


def _krum(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return Krum(**common, num_malicious_nodes=options.num_malicious_nodes)


def _fedmedian(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return FedMedian(**common)


def _fedtrimmedavg(options: StrategyOptions, common: dict[str, Any]) -> Strategy:
    return FedTrimmedAvg(**common, beta=options.trimmed_beta)


#: ``strategy`` run-config value -> factory ``(StrategyOptions, common kwargs) -> Strategy``;
#: ``server-learning-rate`` 0 means Flower's default step for that strategy.
STRATEGIES: Mapping[str, Factory] = {
    "fedavg": _fedavg,
    "fedadam": _fedadam,
    "fedyogi": _fedyogi,
    "fedavgm": _fedavgm,
    "krum": _krum,
    "fedmedian": _fedmedian,
    "fedtrimmedavg": _fedtrimmedavg,
}


def _common(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments every strategy of the registry gets."""
    options = cfg.strategy
    return {
        "fraction_train": options.fraction_train,
        "min_train_nodes": options.min_nodes,
        "min_evaluate_nodes": options.min_nodes,
        "min_available_nodes": options.min_nodes,
        "weighted_by_key": NUM_USERS_KEY if options.weight_key == "users" else NUM_EXAMPLES_KEY,
        "train_metrics_aggr_fn": exact_metric_aggregation,
        "evaluate_metrics_aggr_fn": exact_metric_aggregation,
    }


def build_bare_strategy(cfg: RunConfig) -> Strategy:
    """The strategy named by ``strategy``, without the validation layer.

    For a loop that sees no individual reply (SecAgg+: only the masked sum
    reaches the server), where a server optimiser's step is all it can run.
    """
    return STRATEGIES[cfg.strategy.strategy](cfg.strategy, _common(cfg))


def build_strategy(
    cfg: RunConfig,
    *,
    max_train_weight: float = math.inf,
    max_evaluate_weight: float = math.inf,
    num_items: int = 0,
    partition_sizes: Callable[[int], PartitionSizes] | None = None,
) -> ValidatedStrategy:
    """The strategy named by ``strategy``, inside the reply-validation layer.

    Parameters
    ----------
    cfg : RunConfig
        Its ``strategy`` group and the ``seed`` (client sampling) are read.
    max_train_weight : float (default: inf)
        Cap on a training reply's weight when ``max-client-weight`` is 0 (the
        server passes the dataset's size: no partition can hold more); with
        node-level DP also ``n`` of the pre-scaling (:mod:`fedrec_flwr.privacy.nodedp`).
    max_evaluate_weight : float (default: inf)
        Cap on an evaluation reply's weight (number of users), and on any
        reply's ``num-users``.
    num_items : int (default: 0)
        Catalogue size: length of the ``item-counts`` list with row-wise items.
    partition_sizes : callable, optional (default: None)
        ``num_partitions -> PartitionSizes`` when the server holds the data:
        each partition's true size becomes its exact cap (no clipping then).

    Raises
    ------
    ConfigError
        If the ``node-weight-caps`` file is missing or malformed.
    """
    options = cfg.strategy
    key = NUM_USERS_KEY if options.weight_key == "users" else NUM_EXAMPLES_KEY
    common = _common(cfg)
    if cfg.privacy.dp in NODE_DP_MODES:  # Flower's DP wrappers over FedAvg, pre-scaled
        inner: Strategy = node_dp_strategy(cfg, common, total_examples=max_train_weight)
    else:
        inner = STRATEGIES[options.strategy](options, common)
    rowwise = options.item_aggregation == "rowwise"
    declared = read_node_weight_caps(options.node_weight_caps) if options.node_weight_caps else {}
    user_caps = declared.get(NUM_USERS_KEY, {})
    train_limits = ReplyLimits(
        weight_key=key,
        max_weight=options.max_client_weight or max_train_weight,
        partition_caps=declared.get(key, {}),
        list_lengths={ITEM_COUNTS_KEY: num_items} if rowwise else {},
        user_caps=user_caps,
        max_users=max_evaluate_weight,
        clip_multiple=options.weight_clip_multiple,
        max_update_norm=options.max_update_norm or math.inf,
    )
    # An evaluation reply's weight is its number of users.
    evaluate_limits = ReplyLimits(
        weight_key=key,
        max_weight=max_evaluate_weight,
        partition_caps=user_caps,
        user_caps=user_caps,
        max_users=max_evaluate_weight,
        clip_multiple=options.weight_clip_multiple,
    )
    return ValidatedStrategy(
        inner,
        train_limits,
        evaluate_limits,
        uniform_weights=options.weight_key == "uniform",
        seed=cfg.data.seed,
        partition_sizes=partition_sizes,
    )
