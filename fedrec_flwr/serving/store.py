"""A node's private store: its users' rows, persisted after every round, never sent.

Flower 1.42 keeps ``context.state`` in a SuperNode's memory only, so a restarted
SuperNode would silently re-initialise its users. :class:`NodeStore` keeps one
file per round under ``<state-dir>/<run lineage>/partition-<id>/``, written
atomically (a reader finds the previous round's file or the finished new one,
never half a file). The lineage (:data:`~fedrec_flwr.protocol.STATE_RUN_KEY`)
is chosen by the server per run and kept by a resumed run, so runs never mix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import NPZ_ERRORS, fedrec_home, read_npz, resolve_user_path, write_npz
from ..protocol import STATE_DIR_KEY

__all__ = ["NodeStore", "StoreError", "StoredState", "check_lineage", "node_folder", "state_root"]

_ROUND_FILE = re.compile(r"^round-(\d{6})\.npz$")
_LINEAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Array-name prefixes inside a round file (the user ids ride along as text).
_PRIVATE, _PERSONAL, _USERS = "private/", "personal/", "user-ids"
_OPTIMIZER = "optimizer/"


def _under(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays named ``prefix<name>``, by ``name``."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


class StoreError(ValueError):
    """A store file cannot be read, or a lineage is not a safe folder name."""


def check_lineage(lineage: str) -> str:
    """``lineage`` if it is a safe single folder name, else :class:`StoreError`.

    The server chooses it, and a node must not let a server steer its writes
    outside its own store (``../`` or an absolute path).
    """
    if not _LINEAGE.match(lineage) or ".." in lineage:
        raise StoreError(
            f"state-run={lineage!r}: not a run lineage this node accepts (letters, digits, "
            "'.', '_', '-'; at most 128; no '..')"
        )
    return lineage


def state_root(value: object) -> Path:
    """The node's store root: node-config ``state-dir``, or ``$FEDREC_FLWR_HOME/nodes``."""
    if value is None or value == "":
        return fedrec_home() / "nodes"
    if not isinstance(value, str):
        raise StoreError(f"node-config state-dir={value!r}: expected an absolute folder path")
    return resolve_user_path(value.strip(), key=STATE_DIR_KEY)


def node_folder(root: Path, lineage: str, partition_id: int) -> Path:
    """``root/<lineage>/partition-<id>``: everything one node keeps for one run."""
    return Path(root) / check_lineage(lineage) / f"partition-{int(partition_id)}"


@dataclass(frozen=True)
class StoredState:
    """One round's private state as read back.

    Attributes
    ----------
    server_round : int
        The round whose training wrote it.
    private : dict of str to numpy.ndarray
        The model's private arrays (user rows).
    personal : dict of str to numpy.ndarray
        Personal layers, if any.
    user_ids : numpy.ndarray
        Raw user id (as text) of each private row, for a warm start.
    optimizer : dict of str to numpy.ndarray
        The node's Adam state (``optimizer-state='keep'``), else empty.
    """

    server_round: int
    private: dict[str, np.ndarray]
    personal: dict[str, np.ndarray]
    user_ids: np.ndarray
    optimizer: dict[str, np.ndarray]


class NodeStore:
    """One node's private state for one run lineage, one file per round.

    Parameters
    ----------
    root : pathlib.Path
        The node's store root (:func:`state_root`).
    lineage : str
        The run lineage the server names (:func:`check_lineage`).
    partition_id : int
        The node's partition: two nodes sharing a root never share a folder.
    """

    def __init__(self, root: Path, lineage: str, partition_id: int) -> None:
        self.folder = node_folder(root, lineage, partition_id)

    def _path(self, server_round: int) -> Path:
        return self.folder / f"round-{int(server_round):06d}.npz"

    def rounds(self) -> list[int]:
        """Rounds with a stored state, ascending."""
        if not self.folder.is_dir():
            return []
        found = (_ROUND_FILE.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(
        self,
        server_round: int,
        private: Mapping[str, np.ndarray],
        personal: Mapping[str, np.ndarray],
        user_ids: Iterable[object],
        optimizer: Mapping[str, np.ndarray] | None = None,
    ) -> Path:
        """Write round ``server_round``'s state atomically (flushed to disk first)."""
        arrays = {f"{_PRIVATE}{k}": np.asarray(v) for k, v in private.items()}
        arrays.update({f"{_PERSONAL}{k}": np.asarray(v) for k, v in personal.items()})
        arrays.update({f"{_OPTIMIZER}{k}": np.asarray(v) for k, v in (optimizer or {}).items()})
        arrays[_USERS] = np.asarray([str(u) for u in user_ids], dtype=np.str_)
        target = self._path(server_round)
        return write_npz(target, arrays)

    def load(self, at_most: int) -> StoredState | None:
        """The newest stored state of a round ``<= at_most``, or None.

        Raises
        ------
        StoreError
            If that file cannot be read (names the file: delete it to fall back
            to the previous round, or the whole folder to start the users anew).
        """
        candidates = [r for r in self.rounds() if r <= at_most]
        if not candidates:
            return None
        path = self._path(candidates[-1])
        try:
            arrays = read_npz(path)
        except NPZ_ERRORS as exc:
            raise StoreError(
                f"{path}: the node's stored private state cannot be read ({exc}); delete "
                "the file to fall back to the round before, or the folder to start anew"
            ) from exc
        if _USERS not in arrays:
            raise StoreError(f"{path}: no {_USERS!r} array; not written by this package")
        return StoredState(
            server_round=candidates[-1],
            private=_under(arrays, _PRIVATE),
            personal=_under(arrays, _PERSONAL),
            user_ids=arrays[_USERS],
            optimizer=_under(arrays, _OPTIMIZER),
        )

    def prune(self, keep: Iterable[int], newest: int) -> None:
        """Delete round files a resume or delivery can no longer need.

        Kept: every round after the oldest of ``keep``; for each round in
        ``keep`` the newest file at or before it (a node not sampled in that
        round holds an older one); and ``newest``.
        """
        stored = self.rounds()
        keep = [int(k) for k in keep]
        if not keep:
            keep = [newest]
        needed = {newest} | {r for r in stored if r > min(keep)}
        for k in keep:
            below = [r for r in stored if r <= k]
            if below:
                needed.add(below[-1])
        for r in stored:
            if r not in needed:
                self._path(r).unlink(missing_ok=True)
