"""The federated run: strategy, rounds on a Grid, results to disk."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from ..config import LEAKY_POOL_WARNING, RunConfig
from ..datasets import (
    DataOptions,
    build_partition_cache,
    prepare_data,
    protocol_without_data,
    read_cache_meta,
    read_catalogue,
)
from ..models import shared_arrays
from ..paths import resolve_user_path
from ..privacy.accounting import user_level_report
from ..protocol import (
    GLOBAL_PREFIX,
    ITEM_CATALOGUE_KEY,
    KEEP_ROUNDS_KEY,
    LOSS_KEY,
    NUM_PARTITIONS_KEY,
    NUM_USERS_KEY,
    TEST_PART,
    TRAIN_LOSS_KEY,
    VAL_PART,
    prefixed,
)
from ..serving.rounds import run_rounds
from ..serving.session import ServerSession, ValidatedState
from ..strategies import PartitionSizes
from ..strategies.registry import build_strategy
from ..train.metrics import MAE, RMSE, rating_metrics
from .metering import MeteredGrid

if TYPE_CHECKING:
    from ..privacy.grid import AuditedGrid
from .results import (
    round_entry,
    select_by_validation,
    summary_line,
    with_negative_pool,
    write_run,
)

__all__ = [
    "ServerView",
    "dp_extra",
    "dp_report",
    "initial_arrays",
    "partition_sizes",
    "round_entries",
    "run_federated",
    "server_view",
]


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
    """Shared arrays of a freshly initialised model (no user rows on the server).

    Parameters
    ----------
    cfg : RunConfig
        Its ``model`` group and the ``seed`` are read.
    num_items : int
        Catalogue size.
    """
    arch = cfg.model
    model = arch.build(0, num_items, seed=cfg.data.seed)
    return ArrayRecord({k: Array(v) for k, v in shared_arrays(model).items()})


@dataclass(frozen=True)
class ServerView:
    """What the server knows before any round: catalogue, protocol, size caps.

    Attributes
    ----------
    num_items : int
        Catalogue size.
    stats : dict
        Dataset statistics for ``results.json`` (no user rows).
    protocol : dict
        The evaluation protocol for ``results.json``.
    max_train : float
        No training weight can exceed this (the dataset's size; inf when the
        nodes hold their own logs).
    max_evaluate : float
        No evaluation weight (users) can exceed this.
    partition_sizes : callable or None
        ``num_partitions -> PartitionSizes`` when the server holds the data.
    item_ids : numpy.ndarray or None
        Raw id (text) of each item code: the catalogue.
    """

    num_items: int
    stats: dict[str, Any]
    protocol: dict[str, Any]
    max_train: float
    max_evaluate: float
    partition_sizes: Callable[[int], PartitionSizes] | None
    item_ids: np.ndarray | None = None


def server_view(cfg: RunConfig) -> ServerView:
    """Read what the server may know of the data (catalogue and sizes only).

    Parameters
    ----------
    cfg : RunConfig
        The run's configuration.
    """
    pool = cfg.training.negative_pool
    if cfg.item_catalogue:
        # Nodes hold their own logs (node-config data-file): the server sees only
        # the shared catalogue, so it cannot bound a reply's weight by the data.
        catalogue = read_catalogue(resolve_user_path(cfg.item_catalogue, key=ITEM_CATALOGUE_KEY))
        num_items = len(catalogue)
        stats: dict[str, Any] = {ITEM_CATALOGUE_KEY: cfg.item_catalogue, "num-items": num_items}
        protocol = with_negative_pool(protocol_without_data(cfg.data), pool)
        ids = np.asarray([str(i) for i in catalogue.tolist()], dtype=np.str_)
        return ServerView(num_items, stats, protocol, math.inf, math.inf, None, ids)
    # The server reads only the item catalogue and sizes; user rows stay with clients.
    prepared = prepare_data(cfg.data)
    # A model that reads side tables fails here, in one line, not on every node.
    cfg.model.build(0, prepared.num_items, seed=0).bind(prepared.schema())
    stats = prepared.stats()
    # No partition can hold more than the whole dataset.
    users = cfg.strategy.weight_key == "users"
    return ServerView(
        num_items=prepared.num_items,
        stats=stats,
        protocol=with_negative_pool(prepared.protocol(), pool),
        max_train=stats[NUM_USERS_KEY if users else "num-train-interactions"],
        max_evaluate=prepared.num_users,
        # Exact per-partition caps, once the nodes tell how many partitions there are.
        partition_sizes=functools.partial(partition_sizes, cfg.data),
        item_ids=np.asarray([str(i) for i in prepared.item_ids.tolist()], dtype=np.str_),
    )


def run_federated(grid: Grid, cfg: RunConfig, out_dir: Path, *, run_id: int = 0) -> Path:
    """Run ``num-server-rounds`` rounds on ``grid`` and write the results.

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
    pool = cfg.training.negative_pool
    if pool != "train":
        log(WARNING, "fedrec-flwr: %s", LEAKY_POOL_WARNING)
    metered = MeteredGrid(grid, poll_interval=_reply_poll_interval(grid))
    view = server_view(cfg)
    num_items, stats, protocol = view.num_items, view.stats, view.protocol
    protocol = {**protocol, **cfg.model.build(0, num_items, seed=0).protocol()}
    max_train, max_evaluate, sizes = view.max_train, view.max_evaluate, view.partition_sizes
    strategy = build_strategy(
        cfg,
        max_train_weight=max_train,
        max_evaluate_weight=max_evaluate,
        num_items=num_items,
        partition_sizes=sizes,
    )
    user_dp = dp_report(cfg)
    audited = _audited_grid(cfg, metered, num_items)
    serving = cfg.serving
    session = ServerSession.for_run(
        cfg,
        out_dir,
        ValidatedState(strategy),
        run_id=run_id,
        audit_records=audited.records if audited is not None else None,
    )
    earlier = session.earlier_rounds()
    session.check_rounds_left(cfg.num_server_rounds)
    train_config, evaluate_config = session.train_config(), session.evaluate_config()
    t0 = time.perf_counter()

    def on_round(rnd: int, arrays: ArrayRecord, result: Result) -> None:
        so_far = earlier + round_entries(
            result.train_metrics_clientapp,
            result.evaluate_metrics_clientapp,
            metered,
            time.perf_counter(),
        )
        session.on_round(
            rnd,
            arrays,
            result.train_metrics_clientapp,
            result.evaluate_metrics_clientapp,
            so_far,
            cfg.num_server_rounds,
        )
        train_config[KEEP_ROUNDS_KEY] = session.keep_rounds

    log(INFO, "fedrec-flwr: run lineage %s (the nodes' private store)", session.lineage)
    result = run_rounds(
        strategy,
        audited or metered,
        session.initial_arrays(
            initial_arrays(cfg, num_items), view.item_ids, _item_tables(cfg, num_items)
        ),
        num_rounds=cfg.num_server_rounds,
        first_round=session.first_round,
        train_config=train_config,
        evaluate_config=evaluate_config,
        on_round=on_round,
    )
    t_end = time.perf_counter()
    rounds = earlier + round_entries(
        result.train_metrics_clientapp, result.evaluate_metrics_clientapp, metered, t_end
    )
    if not result.train_metrics_clientapp and not session.earlier_train_rounds():
        raise RuntimeError(
            "no training round succeeded; client errors: "
            + "; ".join(r for rs in metered.failure_reasons.values() for r in rs[:3])
        )
    delivery = (
        session.deliver(
            metered, serving.deliver, result.arrays, cfg.num_server_rounds, view.item_ids
        )
        if serving.deliver != "off"
        else None
    )
    failed = [r["round"] for r in rounds if r["failures"]]
    if failed:
        log(WARNING, "fedrec-flwr: rounds with failed clients: %s", failed)
    dropped_rounds = sorted({r for r, _, _ in strategy.dropped} | {r for r, _ in strategy.rejected})
    dp_section = dp_extra(user_dp, strategy.strategy, rounds)
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
            NUM_PARTITIONS_KEY: strategy.num_partitions,
            "arrays-received": sorted(metered.array_names_received),
            "total-wall-seconds": t_end - t0,
            "lineage": session.lineage,
            "resumed-from": serving.resume_from or None,
            "initialised-from": serving.init_from or None,
            "delivery": delivery,
            # Timing, kept out of the round entries (which repeat bit for bit).
            "checkpoint-seconds": {str(r): s for r, s in session.checkpoint_seconds.items()},
            **dp_section,
            **_audit_extra(audited, out_dir),
        },
    )
    final = rounds[-1][TEST_PART]
    log(
        INFO,
        "fedrec-flwr: final test %s; rounds with dropped replies: %s",
        (
            f"RMSE {final[RMSE]:.4f} MAE {final.get(MAE, float('nan')):.4f}"
            if RMSE in final
            else f"HR@10 {final.get('hr@10', float('nan')):.4f} "
            f"NDCG@10 {final.get('ndcg@10', float('nan')):.4f}"
        ),
        dropped_rounds or "none",
    )
    log(INFO, "fedrec-flwr: wrote %s (results.json, model.pt, metrics.png)", out_dir)
    log(INFO, "%s", summary_line(path, select_by_validation(rounds)))
    return path


def dp_report(cfg: RunConfig) -> dict[str, Any] | None:
    """The ``dp`` results section of a user-level DP run (logged up front), else None."""
    privacy = cfg.privacy
    if privacy.dp != "user":
        return None
    report = user_level_report(
        cfg.noise_multiplier(),
        privacy.dp_clip,
        privacy.dp_delta,
        cfg.num_server_rounds,
        node_noise_multiplier=cfg.node_noise_multiplier(),
    )
    eps = report["epsilon-per-round"]
    log(
        INFO,
        "fedrec-flwr: user-level DP, noise multiplier %.4f, clip %g: epsilon %s at delta %g "
        "after rounds 1..%d",
        report["noise-multiplier"],
        privacy.dp_clip,
        ", ".join(f"{e:.3f}" for e in eps),
        privacy.dp_delta,
        len(eps),
    )
    return report


def dp_extra(
    user_report: dict[str, Any] | None, strategy: object, rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    """``{"dp": ...}`` for the results' extra, and ``epsilon`` in each round (in place).

    Parameters
    ----------
    user_report : dict or None
        The user-level DP report (:func:`dp_report`), None for other modes.
    strategy : object
        The strategy inside the validation layer (node-level DP reports its
        accountant's epsilon per aggregated round).
    rounds : list of dict
        The round entries.
    """
    from ..privacy.nodedp import NodeDPStrategy

    if user_report is not None:
        for entry in rounds:
            entry["epsilon"] = user_report["epsilon-per-round"][entry["round"] - 1]
        return {"dp": user_report}
    if not isinstance(strategy, NodeDPStrategy):
        return {}
    for entry in rounds:
        if entry["round"] in strategy.epsilons:
            entry["epsilon"] = strategy.epsilons[entry["round"]]
    return {"dp": strategy.describe()}


def _item_tables(cfg: RunConfig, num_items: int) -> tuple[str, ...]:
    """Names of the model's arrays with one row per item (a warm start maps them)."""
    arch = cfg.model
    model = arch.build(0, num_items, seed=0)
    return tuple(model.item_tables())


def _audited_grid(cfg: RunConfig, grid: Grid, num_items: int) -> AuditedGrid | None:
    """The privacy-audit wrapper of ``grid`` when ``privacy-audit`` is on, else None.

    The truth (each partition's training items) is known only when the server
    holds the data: with ``item-catalogue`` set the nodes hold their own logs,
    and the audit reports only what it infers.
    """
    if not cfg.privacy.privacy_audit:
        return None
    from ..privacy.grid import AuditedGrid, training_items_truth

    arch = cfg.model
    model = arch.build(1, num_items, seed=0)
    truth = None if cfg.item_catalogue else training_items_truth(cfg.data)
    return AuditedGrid(
        grid, model, truth=truth, every=cfg.privacy.privacy_audit_every, seed=cfg.data.seed
    )


def _audit_extra(audited: AuditedGrid | None, out_dir: Path) -> dict[str, Any]:
    """``{"privacy-audit": {"records", "summary"}}`` and ``privacy-audit.png``; {} if off."""
    if audited is None:
        return {}
    from ..privacy.grid import audit_summary, plot_audit

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_audit(audited.records, out_dir / "privacy-audit.png")
    return {
        "privacy-audit": {"records": audited.records, "summary": audit_summary(audited.records)}
    }


def _reply_poll_interval(grid: Grid) -> float | None:
    """0.1 s on a deployment's grid (Flower's own loop waits 3 s between pulls)."""
    from flwr.superlink.grid.http_grid import HttpGrid

    return 0.1 if isinstance(grid, HttpGrid) else None


def _number(value: object) -> float | None:
    """A scalar metric as float, None when absent (no reply that round)."""
    return float(value) if isinstance(value, (int, float)) else None


def round_entries(
    train_metrics: Mapping[int, Mapping[str, Any]],
    evaluate_metrics: Mapping[int, Mapping[str, Any]],
    metered: MeteredGrid,
    t_end: float,
) -> list[dict[str, Any]]:
    """One ``results.json`` entry per round the grid metered.

    Parameters
    ----------
    train_metrics, evaluate_metrics : mapping of int to mapping
        Aggregated client metrics per round (Flower's ``Result`` fields, or the
        SecAgg+ strategy's own record).
    metered : MeteredGrid
        The grid the rounds ran on (time, bytes, failures per round).
    t_end : float
        ``time.perf_counter()`` when the last round ended.
    """
    starts = sorted(metered.rounds)
    entries = []
    for i, rnd in enumerate(starts):
        traffic = metered.rounds[rnd]
        nxt = metered.rounds[starts[i + 1]].started if i + 1 < len(starts) else t_end
        train = dict(train_metrics.get(rnd, {}))
        evaluate = dict(evaluate_metrics.get(rnd, {}))
        val = rating_metrics(prefixed(evaluate, VAL_PART))
        val_loss = _number(evaluate.get(LOSS_KEY))
        if RMSE in val:
            # The exact global MSE, not the user-weighted mean of the nodes' MSEs.
            val_loss = val[RMSE] ** 2
        entry = round_entry(
            rnd,
            train_loss=_number(train.get(TRAIN_LOSS_KEY)),
            val=val,
            test=rating_metrics(prefixed(evaluate, TEST_PART)),
            val_loss=val_loss,
            wall_seconds=nxt - traffic.started,
            bytes_sent=traffic.bytes_sent,
            bytes_received=traffic.bytes_received,
            # Summed compute time the clients reported: with clients run one at a
            # time, wall-seconds minus these is the engine's own cost.
            client_train_seconds=traffic.client_seconds.get("train", 0.0),
            client_eval_seconds=traffic.client_seconds.get("evaluate", 0.0),
            replies=traffic.replies,
            failures=traffic.failures,
            failure_reasons=metered.failure_reasons.get(rnd, []),
        )
        if any(k.startswith(f"{GLOBAL_PREFIX}{VAL_PART}-") for k in evaluate):
            # Personalised evaluation: val/test are personalised, these the global model's.
            for part in (VAL_PART, TEST_PART):
                entry[f"{GLOBAL_PREFIX}{part}"] = rating_metrics(
                    prefixed(evaluate, part, GLOBAL_PREFIX)
                )
        entries.append(entry)
    return entries
