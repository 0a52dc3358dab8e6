"""Write ../constraints.txt: the installed version of every package fedrec-flwr[test] needs.

Run in the environment the README's commands produced (``python .ci/constraints.py``);
it walks the dependency closure from the installed metadata, so packages that
happen to be installed but are not needed stay out.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement


def _closure(root: str, extras: set[str]) -> dict[str, str]:
    env = default_environment()
    found: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for req_text in dist.requires or []:
            req = Requirement(req_text)
            if req.marker and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in (wanted or {""})
            ):
                continue
            dep = re.sub(r"[-_.]+", "-", req.name).lower()
            if dep not in found:
                found[dep] = metadata.version(req.name).split("+")[0]
                todo.append((req.name, set(req.extras)))
            elif req.extras:
                todo.append((req.name, set(req.extras)))
    return found


def main() -> None:
    pins = _closure("fedrec-flwr", {"test"})
    lines = [
        "# Pinned versions of every dependency of fedrec-flwr[test] (transitively).",
        "# Used by the README's two commands and .ci/run: pip install -c constraints.txt ...",
        "# Regenerate with: python .ci/constraints.py",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    out = Path(__file__).resolve().parent.parent / "constraints.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(pins)} pins to {out}")


if __name__ == "__main__":
    main()
