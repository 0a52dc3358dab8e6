"""Flower ServerApp: weighted FedAvg over user groups, results to disk."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Flower 1.42 itself needs 3.11)
    import tomli as tomllib  # type: ignore[no-redef]

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Result,
    Strategy,
)

from ..config import LEAKY_POOL_WARNING, ConfigError, RunConfig
from ..datasets import (
    DataOptions,
    build_partition_cache,
    prepare_data,
    protocol_without_data,
    read_cache_meta,
    read_catalogue,
)
from ..models import build_model, shared_arrays
from ..paths import resolve_user_path
from ..runs.metering import MeteredGrid
from ..runs.results import resolve_output_dir, with_negative_pool, write_run
from ..strategies import (
    PartitionSizes,
    ReplyLimits,
    ValidatedStrategy,
    WeightedFedAvg,
    exact_metric_aggregation,
)
from ..strategies.aggregate import NUM_EXAMPLES_KEY, NUM_USERS_KEY
from ..strategies.fedavg import ITEM_COUNTS_KEY

__all__ = [
    "app",
    "build_strategy",
    "initial_arrays",
    "main",
    "partition_sizes",
    "read_node_weight_caps",
    "run_federated",
]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config once, train, and write results."""
    try:
        cfg = RunConfig.from_mapping(context.run_config)
        out_dir = resolve_output_dir(cfg.output_dir, f"run-{context.run_id}")
        run_federated(grid, cfg, out_dir, run_id=context.run_id)
    except (ValueError, OSError, RuntimeError) as exc:
        # One readable line before Flower's traceback (bad config, data, clients).
        log(ERROR, "fedrec-flwr: %s", exc)
        raise


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
        ``strategy``, ``weight-key``, ``item-aggregation``, ``fraction-train``,
        ``seed``, ``max-client-weight``, ``node-weight-caps``,
        ``weight-clip-multiple``, ``max-update-norm`` and the server-optimiser
        knobs are read.
    max_train_weight : float (default: inf)
        Cap on a training reply's weight when ``max-client-weight`` is 0 (the
        server passes the dataset's size: no partition can hold more).
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
    key = NUM_USERS_KEY if cfg.weight_key == "users" else NUM_EXAMPLES_KEY
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes,
        "min_available_nodes": cfg.min_nodes,
        "weighted_by_key": key,
        "train_metrics_aggr_fn": exact_metric_aggregation,
        "evaluate_metrics_aggr_fn": exact_metric_aggregation,
    }
    lr = cfg.server_learning_rate
    inner: Strategy
    if cfg.strategy == "fedavg":
        inner = WeightedFedAvg(**common, rowwise_items=cfg.item_aggregation == "rowwise")
    elif cfg.strategy == "fedadam":
        inner = FedAdam(**common, eta=lr or 0.1)
    elif cfg.strategy == "fedyogi":
        inner = FedYogi(**common, eta=lr or 0.01)
    elif cfg.strategy == "fedavgm":
        inner = FedAvgM(
            **common, server_learning_rate=lr or 1.0, server_momentum=cfg.server_momentum
        )
    elif cfg.strategy == "krum":
        inner = Krum(**common, num_malicious_nodes=cfg.num_malicious_nodes)
    elif cfg.strategy == "fedmedian":
        inner = FedMedian(**common)
    elif cfg.strategy == "fedtrimmedavg":
        inner = FedTrimmedAvg(**common, beta=cfg.trimmed_beta)
    else:
        raise AssertionError(f"unhandled strategy {cfg.strategy!r}")  # RunConfig rejects it
    rowwise = cfg.item_aggregation == "rowwise"
    declared = read_node_weight_caps(cfg.node_weight_caps) if cfg.node_weight_caps else {}
    user_caps = declared.get(NUM_USERS_KEY, {})
    train_limits = ReplyLimits(
        weight_key=key,
        max_weight=cfg.max_client_weight or max_train_weight,
        partition_caps=declared.get(key, {}),
        list_lengths={ITEM_COUNTS_KEY: num_items} if rowwise else {},
        user_caps=user_caps,
        max_users=max_evaluate_weight,
        clip_multiple=cfg.weight_clip_multiple,
        max_update_norm=cfg.max_update_norm or math.inf,
    )
    # An evaluation reply's weight is its number of users.
    evaluate_limits = ReplyLimits(
        weight_key=key,
        max_weight=max_evaluate_weight,
        partition_caps=user_caps,
        user_caps=user_caps,
        max_users=max_evaluate_weight,
        clip_multiple=cfg.weight_clip_multiple,
    )
    return ValidatedStrategy(
        inner,
        train_limits,
        evaluate_limits,
        uniform_weights=cfg.weight_key == "uniform",
        seed=cfg.seed,
        partition_sizes=partition_sizes,
    )


_CAP_TABLES = (NUM_EXAMPLES_KEY, NUM_USERS_KEY)
_CAPS_EXAMPLE = "e.g. [num-examples] 0 = 9800 (partition-id = largest weight)"


def read_node_weight_caps(value: str) -> dict[str, dict[int, float]]:
    """Read a ``node-weight-caps`` TOML file: table -> partition-id -> largest weight.

    The file has tables ``[num-examples]`` (training interactions) and/or
    ``[num-users]``, whose keys are partition ids and values the largest weight
    that partition's node may claim, e.g. ``0 = 9800``.

    Parameters
    ----------
    value : str
        The run-config value: an absolute path on the server.

    Raises
    ------
    ConfigError
        One line naming the file, the offending key and the fix.
    """
    where = f"node-weight-caps={value!r}"
    try:
        path = resolve_user_path(value, key="node-weight-caps")
    except ValueError as exc:  # names the key and the fix already
        raise ConfigError(str(exc)) from None
    try:
        data = tomllib.loads(path.read_text())
    except ValueError as exc:  # TOML syntax (TOMLDecodeError)
        raise ConfigError(f"{where}: not valid TOML ({exc}); {_CAPS_EXAMPLE}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror}); {_CAPS_EXAMPLE}") from None
    caps: dict[str, dict[int, float]] = {}
    for table, entries in data.items():
        if table not in _CAP_TABLES or not isinstance(entries, dict):
            raise ConfigError(
                f"{where}: unexpected {table!r}; only the tables [num-examples] and "
                f"[num-users] are read, {_CAPS_EXAMPLE}"
            )
        caps[table] = {}
        for pid, cap in entries.items():
            if not (pid.isdigit() and pid.isascii()):
                raise ConfigError(
                    f"{where}: [{table}] key {pid!r} is not a partition-id (an integer >= 0); "
                    f"{_CAPS_EXAMPLE}"
                )
            number = isinstance(cap, (int, float)) and not isinstance(cap, bool)
            if not (number and math.isfinite(cap) and cap > 0):
                raise ConfigError(
                    f"{where}: [{table}] {pid} = {cap!r} is not a positive finite number; "
                    f"{_CAPS_EXAMPLE}"
                )
            caps[table][int(pid)] = float(cap)
    return caps


def partition_sizes(options: DataOptions, num_partitions: int) -> PartitionSizes:
    """Each partition's training interactions and users, cut as the clients cut them.

    Reads (building it first if needed) the same partition cache the clients
    read (:func:`~fedrec_flwr.datasets.build_partition_cache`), so the sizes
    are exactly what an honest node of each partition reports.

    Parameters
    ----------
    options : DataOptions
        The run's data options.
    num_partitions : int
        The nodes' agreed ``num-partitions``.
    """
    meta = read_cache_meta(build_partition_cache(options, num_partitions))
    parts = meta["partition-stats"]["partitions"]
    return PartitionSizes(
        examples={int(p["id"]): int(p["interactions"]) for p in parts},
        users={int(p["id"]): int(p["users"]) for p in parts},
    )


def initial_arrays(cfg: RunConfig, num_items: int) -> ArrayRecord:
    """Shared arrays of a freshly initialised model (no user rows on the server)."""
    model = build_model(
        cfg.model, 0, num_items, factors=cfg.factors, mlp_layers=cfg.mlp_layers, seed=cfg.seed
    )
    return ArrayRecord({k: Array(v) for k, v in shared_arrays(model).items()})


def run_federated(grid: Grid, cfg: RunConfig, out_dir: Path, *, run_id: int = 0) -> Path:
    """Run ``cfg.num_server_rounds`` rounds on ``grid`` and write the results.

    Returns
    -------
    pathlib.Path
        Path of ``results.json``.

    Raises
    ------
    RuntimeError
        If no round produced an aggregate (every client failed), or the nodes
        disagree on ``num-partitions``
        (:class:`~fedrec_flwr.strategies.PartitionMismatchError`).
    ConfigError
        If the ``node-weight-caps`` file is malformed (before any round).
    """
    log(INFO, "fedrec-flwr: results will be written to %s", out_dir)
    if cfg.negative_pool != "train":
        log(WARNING, "fedrec-flwr: %s", LEAKY_POOL_WARNING)
    metered = MeteredGrid(grid, poll_interval=_reply_poll_interval(grid))
    if cfg.item_catalogue:
        # Nodes hold their own logs (node-config data-file): the server sees only
        # the shared catalogue, so it cannot bound a reply's weight by the data.
        num_items = len(read_catalogue(resolve_user_path(cfg.item_catalogue, key="item-catalogue")))
        stats: dict[str, Any] = {"item-catalogue": cfg.item_catalogue, "num-items": num_items}
        protocol = with_negative_pool(protocol_without_data(cfg.data_options()), cfg.negative_pool)
        max_train, max_evaluate = math.inf, math.inf
        sizes = None
    else:
        # The server reads only the item catalogue and sizes; user rows stay with clients.
        prepared = prepare_data(cfg.data_options())
        num_items = prepared.num_items
        stats = prepared.stats()
        protocol = with_negative_pool(prepared.protocol(), cfg.negative_pool)
        # No partition can hold more than the whole dataset.
        max_train = stats["num-users" if cfg.weight_key == "users" else "num-train-interactions"]
        max_evaluate = prepared.num_users
        # Exact per-partition caps, once the nodes tell how many partitions there are.
        sizes = functools.partial(partition_sizes, cfg.data_options())
    strategy = build_strategy(
        cfg,
        max_train_weight=max_train,
        max_evaluate_weight=max_evaluate,
        num_items=num_items,
        partition_sizes=sizes,
    )
    t0 = time.perf_counter()
    result = strategy.start(
        grid=metered,
        initial_arrays=initial_arrays(cfg, num_items),
        num_rounds=cfg.num_server_rounds,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    t_end = time.perf_counter()
    rounds = _round_entries(result, metered, t_end)
    if not result.train_metrics_clientapp:
        raise RuntimeError(
            "no training round succeeded; client errors: "
            + "; ".join(r for rs in metered.failure_reasons.values() for r in rs[:3])
        )
    failed = [r["round"] for r in rounds if r["failures"]]
    if failed:
        log(WARNING, "fedrec-flwr: rounds with failed clients: %s", failed)
    dropped_rounds = sorted({r for r, _, _ in strategy.dropped} | {r for r, _ in strategy.rejected})
    path = write_run(
        out_dir,
        mode="federated",
        config=cfg.to_dict(),
        protocol=protocol,
        dataset=stats,
        rounds=rounds,
        model_state={k: v.numpy() for k, v in result.arrays.items()},
        extra={
            "run-id": run_id,
            "strategy": type(strategy.strategy).__name__,
            "dropped-replies": [
                {"round": r, "node": n, "reason": why} for r, n, why in strategy.dropped
            ],
            "num-clients": len(list(grid.get_node_ids())),
            "rounds-with-failures": failed,
            "rounds-with-dropped-replies": dropped_rounds,
            "clipped-weights": strategy.clipped,
            "rejected-aggregates": [{"round": r, "reason": why} for r, why in strategy.rejected],
            "num-partitions": strategy.num_partitions,
            "arrays-received": sorted(metered.array_names_received),
            "total-wall-seconds": t_end - t0,
        },
    )
    final = rounds[-1]["test"]
    log(
        INFO,
        "fedrec-flwr: final test HR@10 %.4f NDCG@10 %.4f; rounds with dropped replies: %s",
        final.get("hr@10", float("nan")),
        final.get("ndcg@10", float("nan")),
        dropped_rounds or "none",
    )
    log(INFO, "fedrec-flwr: wrote %s (results.json, model.pt, metrics.png)", out_dir)
    return path


def _reply_poll_interval(grid: Grid) -> float | None:
    """0.1 s on a deployment's grid (Flower's own loop waits 3 s between pulls)."""
    from flwr.superlink.grid.http_grid import HttpGrid

    return 0.1 if isinstance(grid, HttpGrid) else None


def _split(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _round_entries(result: Result, metered: MeteredGrid, t_end: float) -> list[dict[str, Any]]:
    starts = sorted(metered.rounds)
    entries = []
    for i, rnd in enumerate(starts):
        traffic = metered.rounds[rnd]
        nxt = metered.rounds[starts[i + 1]].started if i + 1 < len(starts) else t_end
        train = dict(result.train_metrics_clientapp.get(rnd, {}))
        evaluate = dict(result.evaluate_metrics_clientapp.get(rnd, {}))
        entry = {
            "round": rnd,
            "train-loss": train.get("train-loss"),
            "val": _split(evaluate, "val-"),
            "test": _split(evaluate, "test-"),
            "val-loss": evaluate.get("loss"),
            "wall-seconds": nxt - traffic.started,
            # Summed compute time the clients reported: with clients run one at a
            # time, wall-seconds minus these is the engine's own cost.
            "client-train-seconds": traffic.client_seconds.get("train", 0.0),
            "client-eval-seconds": traffic.client_seconds.get("evaluate", 0.0),
            "bytes-sent": traffic.bytes_sent,
            "bytes-received": traffic.bytes_received,
            "replies": traffic.replies,
            "failures": traffic.failures,
            "failure-reasons": metered.failure_reasons.get(rnd, []),
        }
        if any(k.startswith("global-val-") for k in evaluate):
            # Personalised evaluation: val/test are personalised, these the global model's.
            entry["global-val"] = _split(evaluate, "global-val-")
            entry["global-test"] = _split(evaluate, "global-test-")
        entries.append(entry)
    return entries
