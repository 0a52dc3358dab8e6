"""Absolute, predictable locations for data and results.

Flower runs the ServerApp and ClientApps from the unpacked FAB under
``$FLWR_HOME/apps/...``, so a relative path would land somewhere the user never
looks. Everything defaults under one home directory instead.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "HOME_ENV_VAR",
    "check_input_path",
    "check_output_dir",
    "data_home",
    "fedrec_home",
    "resolve_user_path",
    "runs_home",
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
