"""What checkpoints and the node store cost per round, against the round's time.

Runs the real server code against the real ClientApp through ``InProcessGrid``
(every message serialised as on the wire) on ML-100K with 10 user groups, the
default model and ``local-epochs=1``: once with ``checkpoint-every=1`` (the
default; every node also writes its private store every round, as always),
and prints per round the wall time, the server's checkpoint time and their
ratio. Target: checkpoint < 5% of round time. The node store's own writes are
inside the round time; ``--no-store`` is not offered because the store is part
of every run.

    python benchmarks/checkpoint_cost.py              # 3 rounds
    python benchmarks/checkpoint_cost.py --rounds 2 --nodes 4

Writes ``checkpoint_cost.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import _bench

TARGET = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--data-dir", default=_bench.default_data_dir())
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="checkpoint-cost-"))
    rc = {
        "dataset": "ml-100k",
        "data-dir": args.data_dir,
        "num-server-rounds": args.rounds,
        "local-epochs": 1,
        "min-nodes": min(2, args.nodes),
        "checkpoint-every": 1,
    }
    results = _bench.run_federated_inprocess(rc, args.nodes, out / "run")
    rows = []
    print("| round | wall s | checkpoint s | checkpoint / round |")
    print("|---|---|---|---|")
    for entry in results["rounds"]:
        wall = entry["wall-seconds"]
        ckpt = results["checkpoint-seconds"].get(str(entry["round"]), 0.0)
        rows.append({"round": entry["round"], "wall-seconds": wall, "checkpoint-seconds": ckpt})
        print(f"| {entry['round']} | {wall:.2f} | {ckpt:.4f} | {ckpt / wall:.2%} |")
    ratio = statistics.median(r["checkpoint-seconds"] / r["wall-seconds"] for r in rows)
    met = "met" if ratio < TARGET else "MISSED"
    size = (out / "run" / "checkpoint.npz").stat().st_size
    print(
        f"median checkpoint / round {ratio:.2%} (target < {TARGET:.0%}: {met}); "
        f"checkpoint.npz {size / 1e6:.2f} MB"
    )
    (out / "checkpoint_cost.json").write_text(
        json.dumps({"rounds": rows, "median-ratio": ratio, "checkpoint-bytes": size}, indent=1)
    )
    print(f"wrote {out / 'checkpoint_cost.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
