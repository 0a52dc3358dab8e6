"""Measure strategies on ML-100K in one process (no Ray): the numbers of strategies/README.md.

``InProcessGrid`` runs the real ServerApp code (``run_federated``) against the
real ClientApp, serialising every message, and gives the same per-round metrics
and bits as ``flwr run`` (``tests/test_flower_e2e.py``), on one core.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/strategies_ml100k.py --data-dir /work/shared/data/ml-100k \\
        --out /tmp/bench --run-config "finetune-epochs=1" --partitions 10

``--run-config`` takes ``key=value`` pairs separated by spaces (TOML values).
It prints the validation-selected and last round's test HR@10/NDCG@10, the
global-model numbers when personalisation is on, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from _bench import run_config_pairs

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.runs.results import select_by_validation
from fedrec_flwr.testing.inprocess import InProcessGrid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    overrides = run_config_pairs(args.run_config)
    rc = {"data-dir": args.data_dir, **overrides}
    nodes = [{"partition-id": p, "num-partitions": args.partitions} for p in range(args.partitions)]
    grid = InProcessGrid(client_app, nodes, rc)
    t0 = time.perf_counter()
    path = run_federated(grid, RunConfig.from_mapping(rc), Path(args.out))
    wall = time.perf_counter() - t0
    results = json.loads(path.read_text())
    rounds = results["rounds"]
    sel = results["selected"]
    last = rounds[-1]
    line = {
        "run-config": args.run_config,
        "partitions": args.partitions,
        "selected-round": sel["round"],
        "selected-test": [round(sel["test"]["hr@10"], 4), round(sel["test"]["ndcg@10"], 4)],
        "last-test": [round(last["test"]["hr@10"], 4), round(last["test"]["ndcg@10"], 4)],
        "wall-seconds": round(wall, 1),
    }
    if rounds[0].get("global-val"):
        glob = select_by_validation(
            [
                {"round": r["round"], "val": r["global-val"], "test": r["global-test"]}
                for r in rounds
            ]
        )
        assert glob is not None
        line["global-selected-round"] = glob["round"]
        line["global-selected-test"] = [
            round(glob["test"]["hr@10"], 4),
            round(glob["test"]["ndcg@10"], 4),
        ]
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
