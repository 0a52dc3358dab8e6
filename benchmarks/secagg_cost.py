"""What SecAgg+ costs per round: time and bytes, SecAgg+ vs plain FedAvg.

Both modes run the real server code (``run_federated`` / ``run_secagg``) against
the real ClientApp the FAB uses, through ``InProcessGrid`` (every message
serialised as on the wire, clients one after another in this process), on
ML-100K with 10 user groups, the default model and ``local-epochs=1``. Round 1
is reported apart (the SecAgg+ run also queries ``num-partitions`` there); the
table's time is the median of the later rounds.

    python benchmarks/secagg_cost.py              # 10 nodes, 3 rounds, in-process
    python benchmarks/secagg_cost.py --engine flwr  # the same under `flwr run` (Ray)
    python benchmarks/secagg_cost.py --rounds 2 --nodes 4

``--engine flwr`` runs each mode as a real ``flwr run . --stream`` simulation
(local SuperLink, Ray, the FAB, one CPU per client), so the SecAgg+ stages pay
the engine's per-message cost too.

Prints a markdown table (ratio column: SecAgg+ / plain) and writes
``secagg_cost.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _bench


def _run(mode: str, rc: dict[str, Any], nodes: int, out: Path, engine: str) -> dict[str, Any]:
    if engine == "flwr":
        run_config = {**rc, "secure-aggregation": mode}
        results, _ = _bench.flwr_simulation(run_config, nodes, out / mode, timeout=600)
        return results
    from fedrec_flwr.app.client_app import app as client_app
    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.privacy.secagg import run_secagg
    from fedrec_flwr.runs.federated import run_federated
    from fedrec_flwr.testing.inprocess import InProcessGrid

    _bench.quiet_flower()
    run_config = {**rc, "secure-aggregation": mode}
    grid = InProcessGrid(
        client_app,
        [{"partition-id": p, "num-partitions": nodes} for p in range(nodes)],
        run_config,
    )
    run = run_secagg if mode == "secaggplus" else run_federated
    path = run(grid, RunConfig.from_mapping(run_config), out / mode)
    return json.loads(path.read_text())


def _summary(results: dict[str, Any]) -> dict[str, float]:
    rounds = results["rounds"]
    later = rounds[1:] or rounds
    return {
        "round-1-seconds": rounds[0]["wall-seconds"],
        "round-seconds": statistics.median(r["wall-seconds"] for r in later),
        "client-train-seconds": statistics.median(r["client-train-seconds"] for r in later),
        "bytes-sent": statistics.median(r["bytes-sent"] for r in later),
        "bytes-received": statistics.median(r["bytes-received"] for r in later),
        "test-hr@10": rounds[-1]["test"].get("hr@10", float("nan")),
    }


def _table(plain: dict[str, float], secure: dict[str, float], bound: float) -> str:
    rows = [
        ("round wall seconds (median, rounds 2+)", "round-seconds", "{:.2f}"),
        ("round 1 wall seconds", "round-1-seconds", "{:.2f}"),
        ("client train seconds per round (sum)", "client-train-seconds", "{:.2f}"),
        ("bytes sent per round", "bytes-sent", "{:,.0f}"),
        ("bytes received per round", "bytes-received", "{:,.0f}"),
        ("final test HR@10", "test-hr@10", "{:.4f}"),
    ]
    lines = ["| per round | plain FedAvg | SecAgg+ | ratio |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        a, b = plain[key], secure[key]
        ratio = f"{b / a:.2f}x" if a else "-"
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    lines.append(f"| SecAgg+ error bound on the mean (per element) | - | {bound:.2e} | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="user groups (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="server rounds (default: 3)")
    parser.add_argument("--data-dir", default=_bench.default_data_dir())
    parser.add_argument(
        "--engine",
        choices=("inprocess", "flwr"),
        default="inprocess",
        help="InProcessGrid, or real `flwr run` simulations (default: inprocess)",
    )
    parser.add_argument("--out", type=Path, default=None, help="where secagg_cost.json goes")
    args = parser.parse_args(argv)
    rc = {
        "data-dir": args.data_dir,
        "num-server-rounds": args.rounds,
        "local-epochs": 1,
        "num-threads": 1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        plain = _run("off", rc, args.nodes, Path(tmp), args.engine)
        secure = _run("secaggplus", rc, args.nodes, Path(tmp), args.engine)
    bound = max(b["per-element-mean"] for b in secure["secure-aggregation"]["bounds"].values())
    summary = {"plain": _summary(plain), "secaggplus": _summary(secure), "bound": bound}
    where = (
        "flwr run simulation, Ray, 1 CPU per client"
        if args.engine == "flwr"
        else "in-process, clients one at a time"
    )
    print(
        f"SecAgg+ cost, ML-100K, {args.nodes} nodes, default model, local-epochs=1, "
        f"{args.rounds} rounds ({where})\n"
    )
    print(_table(summary["plain"], summary["secaggplus"], bound))
    out = args.out or Path(tempfile.gettempdir())
    out.mkdir(parents=True, exist_ok=True)
    (out / "secagg_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
