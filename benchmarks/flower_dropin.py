"""Run Flower's own Message-API strategy tests with our strategies dropped in.

"Drop-in" (issue 12) means that Flower's tests for ``flwr.serverapp.strategy``
pass unchanged when our strategies stand in for Flower's. This script takes
those test files from a clone of Flower's repository at one revision, writes
them into a temporary folder (never into this repository), and runs them with
pytest once per variant:

``control``
    As they are, against Flower's classes (the installed ``flwr``).
``wrapped``
    Every strategy class a test imports (``FedMedian``, ``FedAdam``, ...) is
    replaced by a factory, so that ``FedMedian(...)`` builds
    ``ValidatedStrategy(FedMedian(...))``; ``FedAvg(...)`` builds
    ``ValidatedStrategy(WeightedFedAvg(...))``.
``weighted-base``
    No wrapper; ``FedAvg`` becomes ``WeightedFedAvg`` and every FedAvg subclass
    (FedAvgM, FedMedian, Krum, FedAdam, ...) is rebuilt with ``WeightedFedAvg``
    as its base, so its ``super().aggregate_train`` goes through our ordering
    and metric aggregation. Flower has no Message-API FedAvg test, so this is
    how Flower's tests reach ``WeightedFedAvg`` at all.
``wrapped+weighted-base``
    Both.

The substitution is done by a pytest plugin (a ``conftest.py`` written into the
temporary folder that loads the hooks defined below): Flower's test modules use
relative imports (``from .fedmedian import FedMedian``), so the plugin imports
each file as ``flwr.serverapp.strategy.<name>`` (the temporary folder is
appended to that package's ``__path__``) and, while the test module is being
imported, swaps the classes in the defining modules for the factories; the
swap is undone right after, so Flower's own code keeps its classes.

Flower's tests need ``parameterized`` (a Flower development dependency, not a
dependency of ``flwr``); pass ``--python`` to run them with an interpreter that
has it and ``flwr`` and ``fedrec_flwr`` installed.

Usage::

    python benchmarks/flower_dropin.py --flower-repo /path/to/flower/.git [--rev REV]

It prints a markdown table (per test file: passed/failed per variant) and, for
every test that passes in the control but not in a variant, its id and the
first line of its error.

Exit status: 0 if every test that passes in the control passes in every
variant; 1 if some does not; 2 if the comparison is incomplete (no test files
at that revision, a test file that does not import in the control, e.g.
without ``parameterized``, or no test passing in the control).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "flwr.serverapp.strategy"
DEFAULT_STRATEGY_DIR = "framework/py/flwr/serverapp/strategy"
VARIANTS = ("control", "wrapped", "weighted-base", "wrapped+weighted-base")
ENV_VARIANT = "FEDREC_DROPIN_VARIANT"
ENV_REPORT = "FEDREC_DROPIN_REPORT"
TEST_SUBDIR = "strategy_tests"

CONFTEST = '''\
"""Written by fedrec-flwr's benchmarks/flower_dropin.py: loads its pytest hooks."""

import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("fedrec_flower_dropin", {script!r})
_plugin = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _plugin
_spec.loader.exec_module(_plugin)

pytest_configure = _plugin.plugin_configure
pytest_pycollect_makemodule = _plugin.plugin_makemodule
pytest_runtest_logreport = _plugin.plugin_runtest_logreport
pytest_collectreport = _plugin.plugin_collectreport
'''

PYTEST_INI = """\
[pytest]
python_files = *_test.py
addopts =
"""


# --- plugin side: runs inside the pytest subprocess ------------------------------


def _factory(target: type, name: str, wrap: bool) -> Callable[..., Any]:
    """A stand-in for the strategy class ``name``: builds ``target``, wrapped or not."""
    from fedrec_flwr.strategies import ValidatedStrategy

    def build(*args: Any, **kwargs: Any) -> Any:
        strategy = target(*args, **kwargs)
        return ValidatedStrategy(strategy) if wrap else strategy

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Drop-in stand-in for {name}: builds {target.__name__}" + (
        ", wrapped in ValidatedStrategy." if wrap else "."
    )
    return build


def substitutes(variant: str) -> dict[str, Any]:
    """Name in ``flwr.serverapp.strategy`` -> its stand-in under ``variant``.

    Parameters
    ----------
    variant : str
        One of :data:`VARIANTS`; ``control`` substitutes nothing.
    """
    if variant == "control":
        return {}
    from flwr.serverapp.strategy import FedAvg

    from fedrec_flwr.strategies import WeightedFedAvg

    wrap = variant.startswith("wrapped")
    rebase = variant.endswith("weighted-base")
    out: dict[str, Any] = {}
    for name, cls in sorted(strategy_classes().items()):
        target: type = cls
        if cls is FedAvg:
            target = WeightedFedAvg
        elif rebase and issubclass(cls, FedAvg):
            # MRO: cls, ..., WeightedFedAvg, FedAvg: cls's super() calls reach ours.
            target = type(name, (cls, WeightedFedAvg), {"__module__": cls.__module__})
        if target is cls and not wrap:
            continue
        out[name] = _factory(target, name, wrap)
    return out


def strategy_classes() -> dict[str, type]:
    """Every Strategy subclass defined in ``flwr.serverapp.strategy``'s modules.

    Not only the exported ones: Flower's tests also build ``FedOpt``, which the
    package does not export.
    """
    from flwr.serverapp.strategy import Strategy

    out: dict[str, type] = {}
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(PACKAGE + ".") or module is None:
            continue
        for name, cls in vars(module).items():
            if (
                isinstance(cls, type)
                and issubclass(cls, Strategy)
                and cls is not Strategy
                and cls.__module__ == module_name
            ):
                out[name] = cls
    return out


_SUBSTITUTES: dict[str, Any] | None = None


@contextmanager
def _substituted(variant: str) -> Iterator[None]:
    """Swap the strategy classes for their stand-ins while a test module imports."""
    global _SUBSTITUTES
    if _SUBSTITUTES is None:
        _SUBSTITUTES = substitutes(variant)
    package = importlib.import_module(PACKAGE)
    saved: list[tuple[ModuleType, str, Any]] = []
    originals = strategy_classes()
    for name, stand_in in _SUBSTITUTES.items():
        defining = sys.modules[originals[name].__module__]
        for module in (package, defining) if hasattr(package, name) else (defining,):
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, stand_in)
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def plugin_configure(config: Any) -> None:
    """Make the temporary test folder part of ``flwr.serverapp.strategy``."""
    package = importlib.import_module(PACKAGE)
    folder = str(Path(config.rootpath) / TEST_SUBDIR)
    if folder not in package.__path__:
        package.__path__.append(folder)


def plugin_makemodule(module_path: Path, parent: Any) -> Any:
    """Collect each Flower test file as a submodule of ``flwr.serverapp.strategy``."""
    import pytest

    class FlowerTestModule(pytest.Module):
        """Imports ``<stem>`` as ``flwr.serverapp.strategy.<stem>``, stand-ins in place."""

        def _getobj(self) -> ModuleType:
            with _substituted(os.environ.get(ENV_VARIANT, "control")):
                return importlib.import_module(f"{PACKAGE}.{Path(self.path).stem}")

    return FlowerTestModule.from_parent(parent, path=module_path)


def _first_error_line(longrepr: Any) -> str:
    crash: Any = getattr(longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        text = str(crash.message)
    else:
        text = str(longrepr)
        errors = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
        if errors:
            return errors[0]
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _write_report(entry: Mapping[str, str]) -> None:
    path = os.environ.get(ENV_REPORT)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(entry)) + "\n")


def plugin_runtest_logreport(report: Any) -> None:
    """Record each phase's outcome (and the first error line) of every test."""
    if report.when != "call" and report.outcome == "passed":
        return
    _write_report(
        {
            "kind": "test",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "error": _first_error_line(report.longrepr) if report.failed else "",
        }
    )


def plugin_collectreport(report: Any) -> None:
    """Record test files that fail to import."""
    if report.failed:
        _write_report(
            {
                "kind": "collect",
                "nodeid": report.nodeid,
                "when": "collect",
                "outcome": "failed",
                "error": _first_error_line(report.longrepr),
            }
        )


# --- driver side ------------------------------------------------------------------


@dataclass
class Outcome:
    """Final outcome of one test (or of one file that failed to import)."""

    file: str
    outcome: str  # passed, failed, skipped
    error: str = ""


@dataclass
class Run:
    """One pytest run over all test files under one variant."""

    variant: str
    tests: dict[str, Outcome] = field(default_factory=dict)
    collect_errors: dict[str, str] = field(default_factory=dict)  # file -> error
    returncode: int = 0
    output_tail: str = ""

    def passed(self) -> set[str]:
        """Ids of the tests that passed."""
        return {k for k, v in self.tests.items() if v.outcome == "passed"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def extract_tests(repo: Path, rev: str, strategy_dir: str, dest: Path) -> list[str]:
    """Write ``strategy_dir/*_test.py`` at ``rev`` into ``dest``; return their names."""
    listing = _git(repo, "ls-tree", "--name-only", f"{rev}:{strategy_dir}").split()
    names = sorted(n for n in listing if n.endswith("_test.py"))
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dest / name).write_text(_git(repo, "show", f"{rev}:{strategy_dir}/{name}"))
    return names


def _file_of(nodeid: str) -> str:
    return Path(nodeid.split("::")[0]).name


def run_variant(variant: str, root: Path, python: str, timeout: float) -> Run:
    """Run pytest on ``root``'s Flower tests under ``variant`` and read the report."""
    report = root / f"report-{variant.replace('+', '-')}.jsonl"
    env = {**os.environ, ENV_VARIANT: variant, ENV_REPORT: str(report)}
    cmd = [
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        str(root / "pytest.ini"),
        "--rootdir",
        str(root),
        "--continue-on-collection-errors",
        str(root / TEST_SUBDIR),
    ]
    proc = subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    run = Run(variant, returncode=proc.returncode, output_tail=(proc.stdout + proc.stderr)[-3000:])
    if not report.exists():
        return run
    for line in report.read_text().splitlines():
        entry = json.loads(line)
        nodeid = entry["nodeid"]
        if entry["kind"] == "collect":
            run.collect_errors[_file_of(nodeid)] = entry["error"]
            continue
        previous = run.tests.get(nodeid)
        if previous is not None and previous.outcome == "failed":
            continue  # the first failing phase has the error worth reporting
        if entry["outcome"] == "passed" and previous is not None:
            continue  # a skipped/failed setup already decided it
        run.tests[nodeid] = Outcome(_file_of(nodeid), entry["outcome"], entry["error"])
    return run


def _cell(run: Run, file: str) -> str:
    counts: dict[str, int] = defaultdict(int)
    for outcome in run.tests.values():
        if outcome.file == file:
            counts[outcome.outcome] += 1
    text = f"{counts['passed']} passed / {counts['failed']} failed"
    if counts["skipped"]:
        text += f" / {counts['skipped']} skipped"
    if file in run.collect_errors:
        text += " / import error"
    return text


def regressions(control: Run, other: Run) -> list[tuple[str, str]]:
    """Tests passing in ``control`` but not in ``other``, with the first error line."""
    out = []
    for nodeid in sorted(control.passed() - other.passed()):
        got = other.tests.get(nodeid)
        if got is not None:
            error = got.error or got.outcome
        else:
            error = "not run: " + other.collect_errors.get(_file_of(nodeid), "not collected")
        out.append((nodeid, error))
    return out


def render(runs: list[Run], files: list[str]) -> str:
    """The markdown table plus the failing test ids per variant."""
    lines = [
        "| test file | " + " | ".join(r.variant for r in runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    lines += [f"| {f} | " + " | ".join(_cell(r, f) for r in runs) + " |" for f in files]
    control = runs[0]
    failing = [(n, o.error) for n, o in sorted(control.tests.items()) if o.outcome == "failed"]
    failing += [(f"{f} (import)", e) for f, e in sorted(control.collect_errors.items())]
    if failing:
        lines += ["", "Failing in the control (not counted against ours):"]
        lines += [f"- `{n}`: {e}" for n, e in failing]
    for run in runs[1:]:
        lost = regressions(control, run)
        lines += ["", f"Passing in the control, not in `{run.variant}`: {len(lost)}"]
        lines += [f"- `{n}`: {e}" for n, e in lost]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flower-repo", type=Path, required=True, help="Flower git dir")
    parser.add_argument("--rev", default="HEAD", help="Flower revision (default: HEAD)")
    parser.add_argument("--strategy-dir", default=DEFAULT_STRATEGY_DIR)
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter with flwr, fedrec_flwr, pytest"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS[1:]),
        help=f"comma-separated, from {', '.join(VARIANTS[1:])} (control always runs)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    parser.add_argument("--keep", action="store_true", help="keep (and print) the temp folder")
    args = parser.parse_args(argv)
    variants = ["control", *(v for v in args.variants.split(",") if v and v != "control")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}")

    commit = _git(args.flower_repo, "rev-parse", "--verify", f"{args.rev}^{{commit}}").strip()
    subject = _git(args.flower_repo, "log", "-1", "--format=%ad %s", "--date=short", commit)
    probe = subprocess.run(
        [args.python, "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    root = Path(tempfile.mkdtemp(prefix="flower-dropin-"))
    try:
        files = extract_tests(args.flower_repo, commit, args.strategy_dir, root / TEST_SUBDIR)
        if not files:
            print(f"no *_test.py under {args.strategy_dir} at {commit}", file=sys.stderr)
            return 2
        (root / "pytest.ini").write_text(PYTEST_INI)
        (root / TEST_SUBDIR / "conftest.py").write_text(
            CONFTEST.format(script=str(Path(__file__).resolve()))
        )
        runs = [run_variant(v, root, args.python, args.timeout) for v in variants]
    finally:
        if args.keep:
            print(f"(kept {root})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"Flower tests from {commit[:12]} ({subject.strip()}), {args.strategy_dir}")
    print(f"flwr {probe.stdout.strip() or '?'} under {args.python}\n")
    print(render(runs, files))
    control = runs[0]
    if not control.passed() or control.collect_errors:
        print(
            "\nThe control is incomplete (a test file does not import, or nothing passes):"
            " those tests were not compared.",
            file=sys.stderr,
        )
        print(textwrap.indent(control.output_tail, "  "), file=sys.stderr)
        if any("parameterized" in e for e in control.collect_errors.values()):
            print("Flower's tests need `pip install parameterized`.", file=sys.stderr)
        return 2
    return 1 if any(regressions(control, run) for run in runs[1:]) else 0


if __name__ == "__main__":
    sys.exit(main())
