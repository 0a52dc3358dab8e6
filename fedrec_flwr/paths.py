"""Absolute, predictable locations for data and results.

Flower runs the ServerApp and ClientApps from the unpacked FAB under
``$FLWR_HOME/apps/...``, so a relative path would land somewhere the user never
looks. Everything defaults under one home directory instead.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV_VAR", "data_home", "fedrec_home", "resolve_user_path", "runs_home"]

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
