"""Absolute, predictable locations for data and results.

Flower runs the ServerApp and ClientApps from the unpacked FAB under
``$FLWR_HOME/apps/...``, so a relative path would land somewhere the user never
looks. Everything defaults under one home directory instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "HOME_ENV_VAR",
    "NPZ_ERRORS",
    "check_input_path",
    "check_output_dir",
    "data_home",
    "fedrec_home",
    "read_npz",
    "replace_symlink",
    "resolve_user_path",
    "runs_home",
    "staged",
    "write_npz",
]

HOME_ENV_VAR = "FEDREC_FLWR_HOME"


def fedrec_home() -> Path:
    """Return the root directory for caches and results.

    ``$FEDREC_FLWR_HOME`` if set, else ``~/.cache/fedrec-flwr``.
    """
    env = os.environ.get(HOME_ENV_VAR, "").strip()
    if env:
        return resolve_user_path(env, key=HOME_ENV_VAR)
    return Path.home() / ".cache" / "fedrec-flwr"


def data_home() -> Path:
    """Directory where downloaded datasets are cached."""
    return fedrec_home() / "data"


def runs_home() -> Path:
    """Directory under which each run writes its own results folder."""
    return fedrec_home() / "runs"


def resolve_user_path(value: str, *, key: str) -> Path:
    """Expand ``~`` and require an absolute path.

    Parameters
    ----------
    value : str
        The path as the user wrote it.
    key : str
        The run-config key or variable it came from, named in the error.

    Raises
    ------
    ValueError
        If the path is relative: the app runs from the unpacked FAB, so a
        relative path would not be where the user looks.
    """
    path = Path(os.path.expandvars(value)).expanduser()
    if not path.is_absolute():
        raise ValueError(
            f"{key}={value!r} is a relative path; give an absolute path (or start it "
            "with ~): Flower runs the app from the unpacked FAB, not from your "
            "working directory"
        )
    return path


def check_input_path(value: str, *, key: str, kind: str, what: str) -> Path:
    """Resolve ``value`` (see :func:`resolve_user_path`) and require it to exist.

    Parameters
    ----------
    value : str
        The path as the user wrote it.
    key : str
        Its run-config key, named in the error.
    kind : {"directory", "file", "file or directory"}
        What must be there.
    what : str
        What the path should hold, for the fix in the error (e.g. ``"the
        folder holding u.data or ml-100k.inter"``).

    Returns
    -------
    pathlib.Path
        The absolute path, ``~`` and ``$VARS`` expanded.

    Raises
    ------
    ValueError
        One line naming ``key``, what is wrong and what to give instead.
    """
    path = resolve_user_path(value, key=key)
    fix = f"give the absolute path of {what}"
    if not path.exists():
        if kind == "directory":
            problem = f"not a directory (no such path {path})"
        else:
            problem = f"no such {kind} {path}"
        raise ValueError(f"{key}={value!r}: {problem}; {fix}")
    if kind == "directory" and not path.is_dir():
        raise ValueError(f"{key}={value!r}: not a directory (it is a file); {fix}")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{key}={value!r}: a directory, not a file; {fix}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{key}={value!r}: not readable by this user; {fix}")
    return path


def check_output_dir(path: Path, *, label: str) -> Path:
    """Require ``path`` to be a writable folder, or creatable as one.

    Nothing is created: a run refused later (bad data) leaves no empty folder.

    Parameters
    ----------
    path : pathlib.Path
        Absolute results folder.
    label : str
        How the error names it, e.g. ``"output-dir='/runs/a'"``.

    Raises
    ------
    ValueError
        If ``path`` is a file, lies under a file, or cannot be written: one
        line naming ``label`` and the fix, before any training is spent.
    """
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{label}: an existing file, not a folder; give a folder path "
                "(it is created if missing)"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(
                f"{label}: folder not writable by this user; choose a folder you can write to"
            )
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"{label}: cannot be created, {parent} is a file; give a folder path "
            "that does not pass through a file"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"{label}: cannot be created, {parent} is not writable by this user; "
            "choose a folder you can write to"
        )
    return path


@contextmanager
def staged(
    target: str | Path,
    *,
    directory: bool = False,
    keep_existing: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Write into a temporary path beside ``target``; publish it atomically.

    Readers see the old ``target`` or the finished new one, never a half
    written one: on success the staged path is renamed onto ``target`` (same
    folder, so the rename is atomic); on an exception it is deleted and
    ``target`` is left as it was.

    Parameters
    ----------
    target : str or pathlib.Path
        The file, symlink or folder to publish; its parent is created.
    directory : bool (default: False)
        Stage a folder: the yielded path is an empty folder. Otherwise it is a
        free name the caller creates (a file or a symlink), renamed over
        ``target`` with :func:`os.replace`.
    keep_existing : callable, optional (default: None)
        For a folder only. A folder cannot be renamed over a non-empty one, so
        when another writer published first this is asked about the folder
        found there: ``True`` keeps it (ours is deleted); ``False`` means it
        has been cleared out of the way (or should make the error surface),
        and the rename is tried once more. ``None``: the rename error is
        raised.

    Yields
    ------
    pathlib.Path
        The staging path, a hidden name in ``target``'s folder.

    Raises
    ------
    OSError
        If publishing fails (the staged copy is deleted first).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.staging-{secrets.token_hex(6)}")
    if directory:
        tmp.mkdir()  # the umask's mode, as the published folder should have
    try:
        yield tmp
        if not directory:
            os.replace(tmp, target)
            return
        try:
            os.rename(tmp, target)
        except OSError:
            if keep_existing is None:
                raise
            if keep_existing(target):
                return  # the finally deletes our copy
            os.rename(tmp, target)
    finally:
        _remove(tmp)


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as one ``.npz`` at ``path``, atomically and flushed to disk.

    A reader finds the previous file or the finished new one (:func:`staged`);
    the data reach the disk before the rename, so a crash cannot leave a file
    whose name is new and whose bytes are not.
    """
    target = Path(path)
    with staged(target) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
        fh.flush()
        os.fsync(fh.fileno())
    return target


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` written by :func:`write_npz`, read into memory.

    Raises
    ------
    OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile
        As numpy raises them for a missing, truncated or foreign file; callers
        turn them into one line naming the file (:data:`NPZ_ERRORS`).
    """
    with np.load(Path(path), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


#: What :func:`read_npz` raises for a file that cannot be read.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def _remove(path: Path) -> None:
    """Delete a staged file, symlink or folder if it is still there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_symlink(link: str | Path, points_to: str | Path) -> Path:
    """Point the symlink ``link`` at ``points_to``, atomically (see :func:`staged`).

    Parameters
    ----------
    link : str or pathlib.Path
        The symlink to create or repoint (a reader never finds it missing).
    points_to : str or pathlib.Path
        What it points to, stored as given (a relative name stays relative).

    Returns
    -------
    pathlib.Path
        ``link``.
    """
    link = Path(link)
    with staged(link) as tmp:
        tmp.symlink_to(points_to)
    return link
