"""``progress``: a bar on a terminal, a few plain flushed lines otherwise, never both."""

import io
import subprocess
import sys

import pytest
from rich.console import Console

from fedrec_flwr.progress import progress


class _Recording(io.StringIO):
    """A non-terminal stream that counts flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _plain(iterable, description="step", **kwargs):
    out = _Recording()
    items = list(progress(iterable, description, file=out, **kwargs))
    return items, out.getvalue().splitlines(), out


def test_short_loops_get_a_line_per_step():
    items, lines, out = _plain(range(3), "partition cache")
    assert items == [0, 1, 2]
    assert lines == [
        "partition cache: 1/3 (33%)",
        "partition cache: 2/3 (67%)",
        "partition cache: 3/3 (100%)",
    ]
    assert out.flushes == 3  # each line flushed as written


def test_long_loops_get_a_line_every_tenth():
    _, lines, _ = _plain(range(1000))
    assert lines == [f"step: {100 * k:,}/1,000 ({10 * k}%)" for k in range(1, 11)]


def test_amounts_and_an_unknown_total():
    # Rows per chunk, total unknown: lines after chunks 1, 2, 4, then the end.
    chunks = [[0] * 5] * 5
    _, lines, _ = _plain(iter(chunks), "reading log.csv", step=len, unit="rows")
    assert lines == [
        "reading log.csv: 5 rows",
        "reading log.csv: 10 rows",
        "reading log.csv: 20 rows",
        "reading log.csv: 25 rows, done",
    ]
    # A known total in bytes; the loop stops short of it: the last line says where.
    blocks = [b"x" * 30] * 3
    _, lines, _ = _plain(blocks, "downloading a.zip", total=200, step=len, unit="bytes")
    assert lines == [
        "downloading a.zip: 30/200 bytes (15%)",
        "downloading a.zip: 60/200 bytes (30%)",
        "downloading a.zip: 90/200 bytes (45%)",
    ]


def test_work_counts_once_the_consumer_is_done_with_an_item():
    out = io.StringIO()
    seen = []
    for _ in progress(range(2), "step", file=out):
        seen.append(out.getvalue())
    assert seen == ["", "step: 1/2 (50%)\n"]
    assert out.getvalue().splitlines()[-1] == "step: 2/2 (100%)"


def test_a_terminal_console_gets_a_bar_and_no_plain_lines():
    file = io.StringIO()
    console = Console(force_terminal=True, file=file, width=80)
    assert list(progress(range(3), "partition cache", console=console)) == [0, 1, 2]
    drawn = file.getvalue()
    assert "━" in drawn and "3/3" in drawn and "\x1b[" in drawn  # a rich bar
    assert "(100%)" not in drawn  # not the plain lines as well
    # Negative control: the same console, not a terminal, gets plain lines only.
    file = io.StringIO()
    console = Console(force_terminal=False, file=file, width=80)
    list(progress(range(3), "partition cache", console=console))
    assert file.getvalue().splitlines()[-1] == "partition cache: 3/3 (100%)"
    assert "━" not in file.getvalue()


def test_a_real_tty_gets_the_bar(monkeypatch):
    file = io.StringIO()
    monkeypatch.setattr(file, "isatty", lambda: True)
    list(progress(range(2), "step", file=file))
    assert "━" in file.getvalue() and "(100%)" not in file.getvalue()


def test_stderr_is_looked_up_at_call_time(capsys):
    list(progress(range(1), "step"))
    captured = capsys.readouterr()
    assert captured.err == "step: 1/1 (100%)\n" and captured.out == ""


@pytest.mark.parametrize("module", ["fedrec_flwr.progress", "fedrec_flwr.datasets"])
def test_import_draws_nothing_and_loads_no_rich(module):
    code = f"import sys, {module}; print('rich' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False" and proc.stderr == ""
