"""Server checkpoints: everything a resumed run needs to continue bit for bit.

One file, ``checkpoint.npz`` in the run folder, replaced atomically after every
``checkpoint-every`` rounds: the shared arrays, the validation-selected round's
arrays (for ``deliver='selected'``), the wrapped strategy's own state (FedAdam
and FedYogi moments, FedAvgM momentum: every array-valued attribute), and a
JSON record (round, run lineage, config, aggregated metrics and round entries
so far, the validation layer's dropped/clipped/rejected lists). The node
sample needs no state: it is a hash of (seed, round, partition)
(:class:`~fedrec_flwr.strategies.ValidatedStrategy`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from ..errors import ConfigError
from ..paths import NPZ_ERRORS, read_npz, write_npz

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "check_resumable",
    "model_keys",
    "read_checkpoint",
    "restore_strategy_state",
    "strategy_state",
    "write_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.npz"
_FORMAT = 1
_META = "meta"
#: Run-config keys outside the data and model groups that a resumed run
#: must share with its checkpoint: they change what the model is (SecAgg+
#: rounds each aggregate; its loop checkpoints other state than the Message-API
#: rounds'), and the nodes' stores hold Adam state only under optimizer-state='keep'.
_MORE_MODEL_KEYS = ("client-mode", "strategy", "optimizer-state", "secure-aggregation")


def model_keys() -> tuple[str, ...]:
    """Keys a resumed run must share with its checkpoint: the data and model
    groups (dataset, seed, partitioner, model, factors ...) and
    ``client-mode``/``strategy``/``optimizer-state``/``secure-aggregation``."""
    from ..config import RunConfig
    from ..settings import key_of

    grouped = tuple(key_of(f.name) for g, f in RunConfig.settings() if g in ("data", "model"))
    return grouped + _MORE_MODEL_KEYS


@dataclass
class Checkpoint:
    """A run's state after ``server_round``.

    Attributes
    ----------
    server_round : int
        The last round it includes.
    lineage : str
        The run lineage the nodes file their private state under.
    config : dict
        The run config (kebab-case) of the run that wrote it.
    arrays : dict of str to numpy.ndarray
        The shared arrays after ``server_round``.
    selected_round : int or None
        The validation-selected round so far.
    selected : dict of str to numpy.ndarray
        Its shared arrays.
    strategy : dict of str to numpy.ndarray
        The strategy's state (:func:`strategy_state`).
    record : dict
        Aggregated metrics per round, round entries and the validation
        layer's lists (JSON).
    """

    server_round: int
    lineage: str
    config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    selected_round: int | None = None
    selected: dict[str, np.ndarray] = field(default_factory=dict)
    strategy: dict[str, np.ndarray] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def write_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (flushed to disk before the rename)."""
    meta = {
        "format": _FORMAT,
        "round": ckpt.server_round,
        "lineage": ckpt.lineage,
        "config": ckpt.config,
        "selected-round": ckpt.selected_round,
        "record": ckpt.record,
    }
    arrays: dict[str, np.ndarray] = {
        _META: np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    }
    for prefix, group in (("arrays", ckpt.arrays), ("selected", ckpt.selected)):
        arrays.update({f"{prefix}/{k}": np.asarray(v) for k, v in group.items()})
    arrays.update({f"strategy/{k}": np.asarray(v) for k, v in ckpt.strategy.items()})
    return write_npz(path, arrays)


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``run_dir/checkpoint.npz``.

    Raises
    ------
    ConfigError
        One line naming the file: missing (no round was checkpointed, or
        ``checkpoint-every=0``), unreadable or corrupted, or of another format.
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(
            f"resume-from: {path} not found; resume-from names the folder of a run that "
            "wrote checkpoints (checkpoint-every > 0)"
        )
    try:
        loaded = read_npz(path)
        meta = json.loads(loaded.pop(_META).tobytes().decode("utf-8"))
    except NPZ_ERRORS as exc:
        raise ConfigError(
            f"resume-from: {path} is corrupted or not a checkpoint ({exc}); resume from "
            "another run folder or start anew"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ConfigError(f"resume-from: {path} is not a checkpoint of format {_FORMAT}")

    def group(prefix: str) -> dict[str, np.ndarray]:
        head = f"{prefix}/"
        return {k[len(head) :]: v for k, v in loaded.items() if k.startswith(head)}

    return Checkpoint(
        server_round=int(meta["round"]),
        lineage=str(meta["lineage"]),
        config=dict(meta["config"]),
        arrays=group("arrays"),
        selected_round=meta.get("selected-round"),
        selected=group("selected"),
        strategy=group("strategy"),
        record=dict(meta.get("record", {})),
    )


def check_resumable(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    what: str,
    keys: tuple[str, ...] | None = None,
) -> None:
    """Refuse ``current`` if it differs from ``saved`` in a key of :func:`model_keys`.

    Parameters
    ----------
    saved, current : mapping
        Kebab-case run configs (the checkpoint's, this run's).
    what : str
        The key that asked (``resume-from`` or ``init-from``), for the message.
    keys : tuple of str, optional (default: :func:`model_keys`)
        The keys compared (a warm start compares the model group only: its
        log may have grown).

    Raises
    ------
    ConfigError
        One line naming every differing key with both values.
    """
    differ = [
        f"{key}={current.get(key)!r} (checkpoint: {saved.get(key)!r})"
        for key in (model_keys() if keys is None else keys)
        if key in saved and saved.get(key) != current.get(key)
    ]
    if differ:
        raise ConfigError(
            f"{what}: this run differs from the checkpoint in keys that change the model: "
            + ", ".join(differ)
            + "; set them as the checkpoint has them"
        )


def _arrays_of(value: object) -> dict[str, np.ndarray] | None:
    """The arrays of a strategy attribute, keyed ``<kind>:<key>``, or None."""
    if isinstance(value, ArrayRecord):
        return {f"record:{k}": v.numpy() for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"array:": value}
    if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
        return {f"dict:{k}": v for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        return {f"list:{i}": v for i, v in enumerate(value)}
    return None


def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """Every array-valued attribute of ``strategy``, flattened to ``attr/kind:key``.

    This is the whole state of Flower's FedAvg family between rounds (FedOpt's
    ``current_arrays``, ``m_t``, ``v_t``; FedAvgM's ``current_arrays`` and
    ``momentum_vector``); attributes still None are None in a fresh strategy too.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in vars(strategy).items():
        arrays = _arrays_of(value)
        if arrays is not None:
            out.update({f"{name}/{k}": v for k, v in arrays.items()})
    return out


def restore_strategy_state(strategy: object, state: Mapping[str, np.ndarray]) -> None:
    """Set the attributes :func:`strategy_state` saved back on ``strategy``."""
    by_attr: dict[str, dict[str, np.ndarray]] = {}
    for flat, value in state.items():
        name, _, key = flat.partition("/")
        by_attr.setdefault(name, {})[key] = value
    for name, items in by_attr.items():
        kind = next(iter(items)).split(":", 1)[0]
        keys = {k.split(":", 1)[1]: v for k, v in items.items()}
        restored: object
        if kind == "record":
            restored = ArrayRecord({k: Array(np.asarray(v)) for k, v in keys.items()})
        elif kind == "array":
            restored = keys[""]
        elif kind == "dict":
            restored = dict(keys)
        elif kind == "list":
            restored = [keys[str(i)] for i in range(len(keys))]
        else:
            raise ConfigError(f"checkpoint: strategy attribute {name!r} of unknown kind {kind!r}")
        setattr(strategy, name, restored)
