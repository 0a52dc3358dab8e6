"""One run setting, declared once: default, help text, accepted values, where it applies.

Every option group (:class:`~fedrec_flwr.datasets.options.DataOptions` and the
groups of :mod:`fedrec_flwr.config`) declares its fields with :func:`option`.
Parsing a run config, checking accepted values, the class docstrings
(:func:`documented`), the command-line flags and the README table all read
that one declaration, so a setting is never written out twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = [
    "MAX_INT",
    "Setting",
    "add_flags",
    "check_choices",
    "check_numbers",
    "coerce",
    "describe",
    "documented",
    "key_of",
    "option",
    "setting",
    "shown",
]

# Flower carries run-config integers as 64-bit; larger ones overflow in torch too.
MAX_INT = 2**63 - 1

_T = TypeVar("_T")
_META = "fedrec_flwr.setting"


@dataclass(frozen=True)
class Setting:
    """What :func:`option` stores in a field's metadata.

    Parameters
    ----------
    help : str
        What the key does, in sentences; Markdown backticks mark literals (the
        README shows them as they are, docstrings as RST literals).
    choices : tuple of str (default: ())
        Accepted values, from the module that owns them; empty = any value of
        the field's type.
    centralized : bool (default: True)
        Whether the key means something to the centralised baseline (one
        model trained on all users, no federation); only those are its flags.
    """

    help: str
    choices: tuple[str, ...] = ()
    centralized: bool = True


def option(default: _T, help: str, *, choices: Iterable[str] = (), centralized: bool = True) -> _T:
    """A dataclass field carrying its :class:`Setting`.

    Parameters
    ----------
    default : object
        The key's default (int, float, str, or a tuple of int for list keys).
    help : str
        See :attr:`Setting.help`.
    choices : iterable of str (default: ())
        See :attr:`Setting.choices`.
    centralized : bool (default: True)
        See :attr:`Setting.centralized`.
    """
    meta = Setting(help=help, choices=tuple(choices), centralized=centralized)
    return field(default=default, metadata={_META: meta})


def setting(f: dataclasses.Field[Any]) -> Setting:
    """The :class:`Setting` of a field declared with :func:`option`.

    Parameters
    ----------
    f : dataclasses.Field
        A field of an option group.

    Raises
    ------
    TypeError
        If the field was not declared with :func:`option`.
    """
    meta = f.metadata.get(_META)
    if not isinstance(meta, Setting):
        raise TypeError(f"field {f.name!r} is not declared with settings.option()")
    return meta


def key_of(name: str) -> str:
    """The run-config key of a field name: ``num_server_rounds`` -> ``num-server-rounds``.

    Parameters
    ----------
    name : str
        A dataclass field name.
    """
    return name.replace("_", "-")


def shown(value: Any) -> Any:
    """A value as the run config writes it: tuples comma-joined, others unchanged.

    Parameters
    ----------
    value : object
        A field's value.
    """
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def describe(f: dataclasses.Field[Any]) -> str:
    """The help text of a field, its accepted values appended unless the text
    already names each of them (as a Markdown literal).

    Parameters
    ----------
    f : dataclasses.Field
        A field declared with :func:`option`.
    """
    meta = setting(f)
    if all(f"`{c}`" in meta.help for c in meta.choices):
        return meta.help
    return f"{meta.help} Accepted: {', '.join(f'`{c}`' for c in meta.choices)}."


def _settings_fields(obj: Any) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(obj) if _META in f.metadata]


def check_numbers(obj: Any) -> None:
    """Bounds no number key may leave: floats finite, integers 64-bit.

    Checked first in every group: otherwise such a value passes the group's
    own checks and fails deep in numpy or torch with a message naming no key.

    Parameters
    ----------
    obj : dataclass instance
        An option group.

    Raises
    ------
    ConfigError
        One line naming the key.
    """
    for f in _settings_fields(obj):
        key, value = key_of(f.name), getattr(obj, f.name)
        if isinstance(f.default, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value}: must be a finite number")
        values = value if isinstance(f.default, tuple) else (value,)
        if isinstance(f.default, (int, tuple)) and max(values) > MAX_INT:
            raise ConfigError(
                f"{key}={shown(value)}: must be at most {MAX_INT} (run-config integers are 64-bit)"
            )


def check_choices(obj: Any) -> None:
    """Refuse a value outside its field's :attr:`Setting.choices`.

    Parameters
    ----------
    obj : dataclass instance
        An option group.

    Raises
    ------
    ConfigError
        ``key='value': unknown; accepted: a, b, c``.
    """
    for f in _settings_fields(obj):
        accepted = setting(f).choices
        value = getattr(obj, f.name)
        if accepted and value not in accepted:
            raise ConfigError(
                f"{key_of(f.name)}={value!r}: unknown; accepted: {', '.join(accepted)}"
            )


def _int_list(key: str, text: Any) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"{key}={text!r}: expected comma-separated positive integers, e.g. '64,32,16'"
        ) from None
    if not values or min(values) < 1:
        raise ConfigError(f"{key}={text!r}: expected comma-separated positive integers")
    return values


def coerce(key: str, value: Any, default: Any) -> Any:
    """A run-config value as the field's type (that of ``default``).

    Integers stay integers (an integral float is accepted), numbers become
    floats, strings are stripped, list keys are parsed from ``"64,32,16"``;
    a boolean key takes ``true``/``false`` (or those words), and a boolean is
    refused everywhere else (TOML ``true`` is no number).

    Parameters
    ----------
    key : str
        The run-config key, for the error message.
    value : object
        The value as given (a Flower run or message config value).
    default : object
        The field's default; its type is the target type.

    Raises
    ------
    ConfigError
        One line naming the key and the expected type.
    """
    if isinstance(default, tuple):
        return _int_list(key, value)
    if isinstance(default, bool):
        # TOML true/false; the command line passes the words.
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected {type(default).__name__}")
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            return float(value)
        except OverflowError:  # an int beyond float range
            raise ConfigError(f"{key}={value}: must be a finite number") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: expected a string")
    return value.strip()


_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", tuple: "tuple of int"}


def documented(cls: type[_T]) -> type[_T]:
    """Class decorator: append a NumPy ``Parameters`` section generated from the
    fields' :class:`Setting` help, so no docstring repeats it.

    Fields declared with :func:`option` are listed as ``name : type (default:
    value) [key]``; other fields (a :class:`~fedrec_flwr.config.RunConfig`
    group) by their type and their own docstring's first line.

    Parameters
    ----------
    cls : type
        A dataclass.
    """
    lines = [inspect.cleandoc(cls.__doc__ or ""), "", "Parameters", "----------"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _META in f.metadata:
            kind = _TYPE_NAMES.get(type(f.default), type(f.default).__name__)
            lines.append(f"{f.name} : {kind} (default: {f.default!r}) [{key_of(f.name)}]")
            text = describe(f)
        else:
            group = f.default_factory
            assert isinstance(group, type), f"{cls.__name__}.{f.name}: an option or a group"
            lines.append(f"{f.name} : {group.__name__} (default: {group.__name__}())")
            text = (group.__doc__ or "").strip().splitlines()[0]
        # Markdown `x` -> RST ``x``.
        text = re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)
        lines.extend(textwrap.wrap(text, 84, initial_indent="    ", subsequent_indent="    "))
    cls.__doc__ = "\n".join(lines) + "\n"
    return cls


def add_flags(
    parser: argparse.ArgumentParser, fields: Sequence[dataclasses.Field[Any]]
) -> argparse.ArgumentParser:
    """Add one ``--key`` flag per field, with its default, help and choices.

    Values are passed on as a run config carries them (list keys as
    ``"64,32,16"`` strings) and checked by the option groups, not by argparse,
    so a bad value gives the same one-line error as in a run config.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser (or subparser) to add the flags to.
    fields : sequence of dataclasses.Field
        Fields declared with :func:`option`.

    Returns
    -------
    argparse.ArgumentParser
        ``parser``.
    """
    for f in fields:
        meta, default = setting(f), shown(f.default)
        kind = str if isinstance(f.default, (tuple, bool)) else type(f.default)
        # argparse %-formats help; backticks are Markdown, not terminal text.
        text = f"{meta.help} (default: {default!r})".replace("%", "%%").replace("`", "")
        metavar = "{" + ",".join(meta.choices) + "}" if meta.choices else None
        parser.add_argument(
            f"--{key_of(f.name)}", type=kind, default=default, help=text, metavar=metavar
        )
    return parser
