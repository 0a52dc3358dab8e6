"""Progress of long data steps: a bar on a terminal, a few plain lines otherwise.

A terminal gets a live :mod:`rich.progress` bar; a log file or a pipe (a
Flower SuperNode's stderr, CI) gets a handful of flushed lines instead, since
a bar's control codes would only garble it. Never both. rich is imported only
when a bar is drawn, so importing this module costs nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import IO, TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["progress"]

_T = TypeVar("_T")


def progress(
    iterable: Iterable[_T],
    description: str,
    *,
    total: float | None = None,
    step: Callable[[_T], float] | None = None,
    unit: str = "",
    file: IO[str] | None = None,
    console: Console | None = None,
) -> Iterator[_T]:
    """Yield from ``iterable`` while showing how far it got.

    Work counts as done when the consumer asks for the next item, so the
    time spent on each item is inside the progress shown.

    Parameters
    ----------
    iterable : iterable
        What to iterate over.
    description : str
        What is being done, e.g. ``"reading ratings.csv"``.
    total : float, optional (default: None)
        The amount at the end; ``None`` takes ``len(iterable)`` when ``step``
        is not given and the iterable has a length, else the total is unknown.
    step : callable, optional (default: None)
        The amount one item stands for (rows in a chunk, bytes in a block);
        ``None`` counts items.
    unit : str (default: "")
        Name of the amount in plain lines (``"rows"``, ``"bytes"``).
    file : text stream, optional (default: None)
        Where to write; ``None`` is :data:`sys.stderr` at call time. A bar is
        drawn only if it is a terminal.
    console : rich.console.Console, optional (default: None)
        Draw with this console instead (a bar if ``console.is_terminal``, else
        plain lines to ``console.file``); overrides ``file``.

    Yields
    ------
    object
        The items of ``iterable``, unchanged.

    Notes
    -----
    Plain lines go out at every tenth of a known total (every item for ten
    items or fewer), or after items 1, 2, 4, 8, ... when the total is
    unknown, and once at the end: a few lines for any length.
    """
    if total is None and step is None and isinstance(iterable, Sized):
        total = len(iterable)
    if console is not None:
        terminal, stream = console.is_terminal, console.file
    else:
        stream = file if file is not None else sys.stderr
        terminal = _isatty(stream)
    if terminal:
        return _bar(iterable, description, total, step, console, stream)
    return _lines(iterable, description, total, step, unit, stream)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _lines(
    iterable: Iterable[_T],
    description: str,
    total: float | None,
    step: Callable[[_T], float] | None,
    unit: str,
    stream: IO[str],
) -> Iterator[_T]:
    done: float = 0
    tenths = 0  # known total: tenths of it reported so far
    due_at = 1  # unknown total: the next item count to report (1, 2, 4, ...)
    pending = ""
    shown: float | None = None  # known total: the amount the last line showed
    for count, item in enumerate(iterable, start=1):
        if pending:  # held back until we know it is not the last item
            _write(stream, pending)
            pending = ""
        yield item
        done += step(item) if step is not None else 1
        if total:
            if int(10 * done // total) > tenths:
                tenths = int(10 * done // total)
                _write(stream, _line(description, done, total, unit))
                shown = done
        elif count >= due_at:
            due_at = 2 * count
            pending = _line(description, done, None, unit)
    if not total:
        _write(stream, _line(description, done, None, unit, end=True))
    elif shown != done:  # it ended between two tenths
        _write(stream, _line(description, done, total, unit))


def _line(description: str, done: float, total: float | None, unit: str, end: bool = False) -> str:
    amount = f"{_number(done)}/{_number(total)}" if total else _number(done)
    amount += f" {unit}" if unit else ""
    if total:
        return f"{description}: {amount} ({100 * done / total:.0f}%)"
    return f"{description}: {amount}{', done' if end else ''}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _write(stream: IO[str], line: str) -> None:
    # Flushed per line: a log tail or a parent process sees it at once.
    stream.write(line + "\n")
    stream.flush()


def _bar(
    iterable: Iterable[_T],
    description: str,
    total: float | None,
    step: Callable[[_T], float] | None,
    console: Console | None,
    stream: IO[str],
) -> Iterator[_T]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(file=stream)) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task, step(item) if step is not None else 1)
