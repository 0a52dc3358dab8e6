"""HR@10 with node-level DP (Flower's wrappers, pre-scaled) against no DP.

Runs the real ServerApp and ClientApp code in one process (``InProcessGrid``)
on one dataset cut into user groups, once without DP and once per noise
multiplier with ``dp='node-client'`` (or ``--level node-server``), and prints
one markdown row per run: final test HR@10 / NDCG@10 and the accountant's
epsilon after the last round. Set ``FEDREC_FLWR_DP_NOISE_SEED`` for
reproducible noise (unset: fresh entropy).

Usage (from the repository root)::

    FEDREC_FLWR_DP_NOISE_SEED=0 PYTHONPATH=. python benchmarks/nodedp_ml100k.py \\
        --data-dir /work/shared/data/ml-100k --groups 10 --rounds 5 --local-epochs 1 \\
        --clip 14 --noise 0.01,0.1 [--level node-server] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.testing.inprocess import InProcessGrid


def _run(rc: dict[str, Any], groups: int) -> tuple[dict[str, Any], float]:
    nodes = [{"partition-id": p, "num-partitions": groups} for p in range(groups)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        path = run_federated(
            InProcessGrid(client_app, nodes, rc), RunConfig.from_mapping(rc), Path(out)
        )
        results = json.loads(path.read_text())
    return results, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--clip", type=float, default=14.0, help="dp-clip")
    parser.add_argument("--noise", default="0.01,0.1", help="noise multipliers")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--level", default="node-client", choices=("node-client", "node-server"))
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without DP")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    base = {
        "data-dir": args.data_dir,
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
    }
    runs: list[tuple[str, dict[str, Any]]] = [] if args.no_baseline else [("off", base)]
    for sigma in (float(s) for s in args.noise.split(",")):
        dp = {"dp": args.level, "dp-clip": args.clip, "dp-noise-multiplier": sigma}
        runs.append(
            (
                f"{args.level} sigma={sigma:g} C={args.clip:g}",
                {**base, **dp, "dp-delta": args.delta},
            )
        )
    print(f"| dp | test HR@10 | test NDCG@10 | epsilon after {args.rounds} rounds | seconds |")
    print("|---|---|---|---|---|")
    for name, rc in runs:
        results, seconds = _run(rc, args.groups)
        test = results["rounds"][-1]["test"]
        eps = results.get("dp", {}).get("epsilon-per-round", ["-"])[-1]
        eps_text = f"{eps:.1f}" if isinstance(eps, float) else eps
        print(
            f"| {name} | {test['hr@10']:.4f} | {test['ndcg@10']:.4f} | {eps_text} "
            f"| {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
