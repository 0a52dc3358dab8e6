"""The server's side of persistence: lineage, checkpoints, resume, warm start, delivery.

:class:`ServerSession` is built once per run by
:func:`~fedrec_flwr.runs.federated.run_federated` and by the SecAgg+ loop
(:func:`~fedrec_flwr.privacy.secagg.run_secagg`). It picks the run lineage
the nodes file their private state under (a resumed run keeps its
checkpoint's), writes a checkpoint after every ``checkpoint-every`` rounds,
keeps the validation-selected round's arrays, tells the nodes which rounds'
state to keep, and after the last round delivers the model to every node.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import Scalar
from flwr.common.logger import log
from flwr.serverapp import Grid

from ..errors import ConfigError
from ..paths import NPZ_ERRORS, read_npz, resolve_user_path, write_npz
from ..protocol import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    DELIVER_ROUND_KEY,
    KEEP_ROUNDS_KEY,
    NUM_PARTITIONS_KEY,
    STATE_RUN_KEY,
    USERS_SERVED_KEY,
    WARM_ROUND_KEY,
    WARM_RUN_KEY,
    legacy_rounds,
)
from ..strategies import ValidatedStrategy
from .checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    check_resumable,
    read_checkpoint,
    restore_strategy_state,
    strategy_state,
    write_checkpoint,
)
from .mod import DELIVER_MESSAGE_TYPE

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "DELIVERED_FILE",
    "RoundState",
    "ServerSession",
    "ValidatedState",
    "deliver_model",
    "new_lineage",
]

#: The delivered shared arrays, in the run folder (what ``init-from`` reads).
DELIVERED_FILE = "delivered.npz"


def new_lineage(run_id: int) -> str:
    """``run-<id, 16 hex digits>-<8 random hex digits>``.

    Unique even where run ids repeat (in-process runs use 0), and of one length
    for every run, so the bytes a round sends do not depend on the run id.
    """
    return f"run-{int(run_id) % 2**64:016x}-{secrets.token_hex(4)}"


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _plain(metrics: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r): dict(m) for r, m in metrics.items()}


#: checkpoint record keys: the privacy audit's records; a strategy's own JSON state
#: (``checkpoint_state()`` / ``restore_checkpoint_state()``, e.g. node-level DP).
_AUDIT, _STRATEGY = "privacy-audit", "strategy-state"


class RoundState(Protocol):
    """What a run's server loop adds to a checkpoint and takes back on resume.

    :class:`ValidatedState` for the Message-API rounds; the SecAgg+ loop has its own.
    """

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Array-valued state (a server optimiser's moments), flat names."""
        ...

    def state_record(self) -> dict[str, Any]:
        """JSON-able state, merged into the checkpoint's record."""
        ...

    def restore(self, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> None:
        """Put back what :meth:`state_arrays` and :meth:`state_record` saved."""
        ...


class ValidatedState:
    """The validation layer's part of a checkpoint.

    Its wrapped strategy's array attributes (FedAdam/FedYogi moments, FedAvgM
    momentum: :func:`~.checkpoint.strategy_state`), its dropped/clipped/rejected
    lists and partition count, and the wrapped strategy's own JSON state
    (``checkpoint_state()``, e.g. node-level DP's releases).

    Parameters
    ----------
    strategy : ValidatedStrategy
        The run's strategy.
    """

    def __init__(self, strategy: ValidatedStrategy) -> None:
        self.strategy = strategy

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The wrapped strategy's array attributes."""
        return strategy_state(self.strategy.strategy)

    def state_record(self) -> dict[str, Any]:
        """The validation layer's lists and the wrapped strategy's own state."""
        strategy = self.strategy
        own = getattr(strategy.strategy, "checkpoint_state", None)
        return {
            "dropped": [list(d) for d in strategy.dropped],
            "clipped": list(strategy.clipped),
            "rejected": [list(r) for r in strategy.rejected],
            NUM_PARTITIONS_KEY: strategy.num_partitions,
            **({_STRATEGY: own()} if own else {}),
        }

    def restore(self, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> None:
        """Refill the wrapped strategy's attributes and the layer's lists."""
        strategy = self.strategy
        restore_strategy_state(strategy.strategy, arrays)
        strategy.dropped.extend(tuple(d) for d in record.get("dropped", []))
        strategy.clipped.extend(record.get("clipped", []))
        strategy.rejected.extend(tuple(r) for r in record.get("rejected", []))
        restore = getattr(strategy.strategy, "restore_checkpoint_state", None)
        if restore is not None:  # state beyond arrays (node-level DP's releases)
            restore(record.get(_STRATEGY, {}))


class ServerSession:
    """Checkpoints, resume, warm start and delivery of one federated run.

    Parameters
    ----------
    config : dict
        The run config, kebab-case (``RunConfig.to_dict()``).
    out_dir : pathlib.Path
        The run folder (``checkpoint.npz`` and ``delivered.npz`` go here).
    state : RoundState
        The server loop's own state (:class:`ValidatedState` of the run's strategy).
    checkpoint_every : int
        Rounds between checkpoints; 0 = none.
    run_id : int (default: 0)
        Flower's run id (part of a new lineage).
    resume_from, init_from : str (default: "")
        The run-config keys of that name.
    select : callable
        ``rounds -> selected entry`` (:func:`~fedrec_flwr.runs.results.select_by_validation`).
    audit_records : list of dict, optional (default: None)
        The privacy audit's records (``AuditedGrid.records``), checkpointed with
        the results so far and, on resume, refilled with the earlier rounds'.
    """

    def __init__(
        self,
        config: dict[str, Any],
        out_dir: Path,
        state: RoundState,
        *,
        checkpoint_every: int,
        select: Callable[[list[dict[str, Any]]], dict[str, Any] | None],
        run_id: int = 0,
        resume_from: str = "",
        init_from: str = "",
        audit_records: list[dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.audit_records = audit_records
        self.out_dir = out_dir
        self.state = state
        self.checkpoint_every = checkpoint_every
        self.select = select
        self.resumed: Checkpoint | None = None
        self.warm: dict[str, Any] | None = None
        self.checkpoint_seconds: dict[int, float] = {}
        self.checkpointed_round = 0
        self.selected_round: int | None = None
        self.selected: dict[str, np.ndarray] = {}
        if resume_from.strip():
            path = resolve_user_path(resume_from.strip(), key="resume-from")
            ckpt = read_checkpoint(path)
            check_resumable(ckpt.config, config, what="resume-from")
            self.resumed = ckpt
            self.lineage = ckpt.lineage
            self.checkpointed_round = ckpt.server_round
            self.selected_round, self.selected = ckpt.selected_round, dict(ckpt.selected)
            state.restore(ckpt.strategy, ckpt.record)
            if audit_records is not None:
                audit_records.extend(ckpt.record.get(_AUDIT, []))
            log(
                INFO,
                "fedrec-flwr: resuming %s after round %d (lineage %s)",
                path,
                ckpt.server_round,
                self.lineage,
            )
        else:
            self.lineage = new_lineage(run_id)
        if init_from.strip():
            self.warm = _read_delivered(init_from.strip(), config)

    @classmethod
    def for_run(
        cls,
        cfg: RunConfig,
        out_dir: Path,
        state: RoundState,
        *,
        run_id: int = 0,
        audit_records: list[dict[str, Any]] | None = None,
    ) -> ServerSession:
        """The session of a run with ``cfg``'s serving keys (``checkpoint-every``,
        ``resume-from``, ``init-from``), selecting rounds by validation."""
        from ..runs.results import select_by_validation

        serving = cfg.serving
        return cls(
            cfg.to_dict(),
            out_dir,
            state,
            checkpoint_every=serving.checkpoint_every,
            select=select_by_validation,
            run_id=run_id,
            resume_from=serving.resume_from,
            init_from=serving.init_from,
            audit_records=audit_records,
        )

    # --- before the rounds ---------------------------------------------------------

    @property
    def first_round(self) -> int:
        """The first round this run trains."""
        return self.resumed.server_round + 1 if self.resumed else 1

    def check_rounds_left(self, num_rounds: int) -> None:
        """Refuse a resume whose checkpoint already holds round ``num_rounds``.

        Raises
        ------
        ConfigError
            One line naming both numbers and the fix.
        """
        if self.first_round > num_rounds:
            raise ConfigError(
                f"resume-from: the checkpoint already holds round {self.first_round - 1} of "
                f"num-server-rounds={num_rounds}; raise num-server-rounds to train on"
            )

    def initial_arrays(
        self,
        fresh: ArrayRecord,
        item_ids: np.ndarray | None,
        item_tables: tuple[str, ...] = (),
    ) -> ArrayRecord:
        """The arrays before :attr:`first_round`.

        Parameters
        ----------
        fresh : ArrayRecord
            A freshly initialised model's shared arrays.
        item_ids : numpy.ndarray or None
            Raw id (text) of each item row of this run's catalogue, for a
            warm start over a catalogue that changed.
        item_tables : tuple of str (default: ())
            Names of the arrays with one row per item.
        """
        if self.resumed is not None:
            return _record(self.resumed.arrays)
        if self.warm is None:
            return fresh
        return _record(_warm_arrays(_arrays(fresh), self.warm, item_ids, item_tables))

    @property
    def keep_rounds(self) -> list[int]:
        """The rounds whose private state the nodes must keep: the last
        checkpointed one (a resume restarts after it) and the selected one."""
        keep = [self.checkpointed_round]
        if self.selected_round is not None:
            keep.append(self.selected_round)
        return keep

    def train_config(self) -> ConfigRecord:
        """The ConfigRecord every training message carries (its
        :data:`KEEP_ROUNDS_KEY` is :attr:`keep_rounds`, to refresh each round)."""
        config = ConfigRecord({STATE_RUN_KEY: self.lineage, KEEP_ROUNDS_KEY: self.keep_rounds})
        config.update(self._warm())
        return config

    def evaluate_config(self) -> ConfigRecord:
        """The ConfigRecord every evaluation message carries."""
        return ConfigRecord({STATE_RUN_KEY: self.lineage})

    def legacy_config(self) -> dict[str, Scalar]:
        """:meth:`train_config` as a legacy (SecAgg+) config, which holds scalars
        only: the keep-rounds as one string (:func:`~fedrec_flwr.protocol.legacy_rounds`)."""
        config: dict[str, Scalar] = {
            STATE_RUN_KEY: self.lineage,
            KEEP_ROUNDS_KEY: legacy_rounds(self.keep_rounds),
        }
        return {**config, **self._warm()}

    def _warm(self) -> dict[str, Scalar]:
        """A warm start's keys: the earlier run's lineage and delivered round."""
        if self.warm is None:
            return {}
        return {WARM_RUN_KEY: str(self.warm["lineage"]), WARM_ROUND_KEY: int(self.warm["round"])}

    # --- after each round ----------------------------------------------------------

    def on_round(
        self,
        rnd: int,
        arrays: ArrayRecord,
        train_metrics: Mapping[int, Mapping[str, Any]],
        evaluate_metrics: Mapping[int, Mapping[str, Any]],
        entries: list[dict[str, Any]],
        num_rounds: int,
    ) -> None:
        """Keep the selected round's arrays and checkpoint if due.

        :attr:`keep_rounds` may change: the caller sends the new value with
        the next round.

        Parameters
        ----------
        rnd : int
            The round that just ended.
        arrays : ArrayRecord
            The global arrays after it.
        train_metrics, evaluate_metrics : mapping of int to mapping
            This run's aggregated metrics per round so far.
        entries : list of dict
            Every round entry so far (resumed ones included).
        num_rounds : int
            The run's last round (always checkpointed).
        """
        chosen = self.select(entries)
        if chosen is not None and chosen["round"] == rnd:
            self.selected_round, self.selected = rnd, _arrays(arrays)
        every = self.checkpoint_every
        if every and (rnd % every == 0 or rnd == num_rounds):
            started = time.perf_counter()
            write_checkpoint(
                self.out_dir / CHECKPOINT_FILE,
                Checkpoint(
                    server_round=rnd,
                    lineage=self.lineage,
                    config=self.config,
                    arrays=_arrays(arrays),
                    selected_round=self.selected_round,
                    selected=self.selected,
                    strategy=self.state.state_arrays(),
                    record=self._record(train_metrics, evaluate_metrics, entries),
                ),
            )
            self.checkpointed_round = rnd
            self.checkpoint_seconds[rnd] = time.perf_counter() - started

    def _record(
        self,
        train_metrics: Mapping[int, Mapping[str, Any]],
        evaluate_metrics: Mapping[int, Mapping[str, Any]],
        entries: list[dict[str, Any]],
    ) -> dict[str, Any]:
        before = self.resumed.record if self.resumed else {}
        return {
            "rounds": entries,
            "train-metrics": {**before.get("train-metrics", {}), **_plain(train_metrics)},
            "evaluate-metrics": {**before.get("evaluate-metrics", {}), **_plain(evaluate_metrics)},
            **({_AUDIT: list(self.audit_records)} if self.audit_records is not None else {}),
            **self.state.state_record(),
        }

    def earlier_rounds(self) -> list[dict[str, Any]]:
        """The round entries of the run this one resumes ([] for a fresh run)."""
        return list(self.resumed.record.get("rounds", [])) if self.resumed else []

    def earlier_train_rounds(self) -> int:
        """How many earlier rounds produced a training aggregate."""
        return len(self.resumed.record.get("train-metrics", {})) if self.resumed else 0

    # --- after the last round ------------------------------------------------------

    def deliver(
        self,
        grid: Grid,
        mode: str,
        final: ArrayRecord,
        last_round: int,
        item_ids: np.ndarray | None = None,
        timeout: float = 3600,
    ) -> dict[str, Any]:
        """Send every node the delivered model; they write their recommendations.

        Parameters
        ----------
        grid : flwr.serverapp.Grid
            The run's grid.
        mode : {"selected", "final"}
            The validation-selected round's model, or the last round's.
        final : ArrayRecord
            The last round's arrays.
        last_round : int
            The last round.
        item_ids : numpy.ndarray or None (default: None)
            The catalogue's raw ids, recorded for a later warm start.
        timeout : float (default: 3600)
            Seconds to wait for the nodes.

        Returns
        -------
        dict
            The ``delivery`` section of ``results.json``.
        """
        if mode == "selected" and self.selected_round is not None:
            rnd, arrays = self.selected_round, _record(self.selected)
        else:
            rnd, arrays = last_round, final
        return deliver_model(
            grid, self.out_dir, self.config, self.lineage, mode, rnd, arrays, item_ids, timeout
        )


def deliver_model(
    grid: Grid,
    out_dir: Path,
    config: dict[str, Any],
    lineage: str,
    mode: str,
    rnd: int,
    arrays: ArrayRecord,
    item_ids: np.ndarray | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Send every node round ``rnd``'s ``arrays``; they write their recommendations.

    Also writes ``delivered.npz`` and ``delivered.json`` (what ``init-from``
    reads) into ``out_dir`` (:meth:`ServerSession.deliver`).

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The run's grid.
    out_dir : pathlib.Path
        The run folder.
    config : dict
        The run config, kebab-case (recorded in ``delivered.json``).
    lineage : str
        The run lineage the nodes filed their private state under.
    mode : {"selected", "final"}
        The ``deliver`` key (recorded; ``rnd`` is the round it picked).
    rnd : int
        The delivered round (its private rows are what each node pairs with ``arrays``).
    arrays : ArrayRecord
        The shared arrays after round ``rnd``.
    item_ids : numpy.ndarray or None (default: None)
        The catalogue's raw ids, recorded for a later warm start.
    timeout : float (default: 3600)
        Seconds to wait for the nodes.

    Returns
    -------
    dict
        The ``delivery`` section of ``results.json``.
    """
    started = time.perf_counter()
    message_config = ConfigRecord({STATE_RUN_KEY: lineage, DELIVER_ROUND_KEY: rnd})
    messages = [
        Message(
            RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: message_config}),
            dst_node_id=node,
            message_type=DELIVER_MESSAGE_TYPE,
        )
        for node in sorted(grid.get_node_ids())
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    served, failures = 0, []
    for reply in replies:
        if reply.has_error():
            failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            continue
        for record in reply.content.metric_records.values():
            value = record.get(USERS_SERVED_KEY, 0)
            served += int(value) if isinstance(value, int) else 0
    missing = len(messages) - len(replies)
    if missing:
        failures.append(f"{missing} node(s) did not reply before the timeout")
    if failures:
        log(WARNING, "fedrec-flwr: delivery failed on some nodes: %s", failures)
    write_npz(out_dir / DELIVERED_FILE, _arrays(arrays))
    (out_dir / "delivered.json").write_text(
        json.dumps(
            {
                "round": rnd,
                "lineage": lineage,
                "config": config,
                "item-ids": None if item_ids is None else [str(i) for i in item_ids],
            },
            indent=1,
        )
        + "\n"
    )
    return {
        "model": mode,
        "round": rnd,
        "lineage": lineage,
        "nodes": len(messages),
        USERS_SERVED_KEY: served,
        "failures": failures,
        "seconds": time.perf_counter() - started,
    }


def _read_delivered(run_dir: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The delivered model of an earlier run (``init-from``), checked against ``config``."""
    from ..config import RunConfig
    from ..settings import key_of

    folder = resolve_user_path(run_dir, key="init-from")
    meta_path, arrays_path = folder / "delivered.json", folder / DELIVERED_FILE
    if not meta_path.is_file() or not arrays_path.is_file():
        raise ConfigError(
            f"init-from: {arrays_path} or {meta_path.name} not found; init-from names the "
            "folder of a finished run that delivered its model (deliver='selected' or 'final')"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        arrays = read_npz(arrays_path)
    except NPZ_ERRORS as exc:
        raise ConfigError(f"init-from: {arrays_path} cannot be read ({exc})") from exc
    model_group = tuple(key_of(f.name) for g, f in RunConfig.settings() if g == "model")
    check_resumable(meta.get("config", {}), config, what="init-from", keys=model_group)
    item_ids = meta.get("item-ids")
    return {
        "lineage": meta["lineage"],
        "round": int(meta["round"]),
        "arrays": arrays,
        "item-ids": item_ids,
    }


def _warm_arrays(
    fresh: dict[str, np.ndarray],
    warm: Mapping[str, Any],
    item_ids: np.ndarray | None,
    item_tables: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """``fresh`` with the earlier model's arrays; item-table rows matched by raw id
    (an item new to the catalogue keeps its fresh row)."""
    old, old_ids = warm["arrays"], warm.get("item-ids")
    out = {}
    for name, array in fresh.items():
        previous = old.get(name)
        if previous is None:
            out[name] = array
        elif name in item_tables and old_ids is not None and item_ids is not None:
            where = {str(i): r for r, i in enumerate(old_ids)}
            pairs = [(r, where[str(i)]) for r, i in enumerate(item_ids) if str(i) in where]
            merged = array.copy()
            if pairs:
                rows = np.asarray(pairs, dtype=np.int64)
                merged[rows[:, 0]] = previous[rows[:, 1]]
            out[name] = merged
        elif previous.shape == array.shape:
            out[name] = previous.astype(array.dtype)
        else:
            raise ConfigError(
                f"init-from: array {name!r} has shape {previous.shape} there, "
                f"{array.shape} here; the model keys must be equal"
            )
    return out
