"""Declared per-node weight caps: the ``node-weight-caps`` TOML file."""

from __future__ import annotations

import math
import tomllib

from ..errors import ConfigError
from ..paths import resolve_user_path
from ..protocol import NUM_EXAMPLES_KEY, NUM_USERS_KEY

__all__ = ["read_node_weight_caps"]

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
