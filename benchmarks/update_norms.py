"""Honest update norms ``||w_k - w||_2`` per round: the basis for ``max-update-norm``.

Runs default FedAvg in one process (``InProcessGrid``: the real ServerApp and
ClientApp code, every message serialised) and, for every training reply,
measures the norm of its update against the global arrays its node was sent,
with the same :func:`~fedrec_flwr.strategies.validation.update_norm` the
validation layer applies. Prints one markdown row per number of user groups.

With ``--scaled`` each norm is multiplied by the node-level DP pre-scaling
``s_k = K n_k / n`` (:mod:`fedrec_flwr.privacy.nodedp`): the norms that
``dp-clip`` bounds for ``dp='node-client'`` / ``'node-server'``.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/update_norms.py --data-dir /work/shared/data/ml-100k \\
        --groups 10,3,2 --rounds 3 [--scaled] [--local-epochs 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message, MessageType

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.protocol import NUM_EXAMPLES_KEY
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.strategies.validation import update_norm
from fedrec_flwr.testing.inprocess import InProcessGrid


class _NormGrid(InProcessGrid):
    """An in-process grid that records each training reply's update norm by round."""

    def __init__(self, *args: Any, scaled: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scaled = scaled
        self.norms: dict[int, list[float]] = defaultdict(list)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        sent = {m.metadata.dst_node_id: m for m in messages}
        train = [
            (sent[r.metadata.src_node_id], r)
            for r in replies
            if r.metadata.src_node_id in sent
            and sent[r.metadata.src_node_id].metadata.message_type == MessageType.TRAIN
            and not r.has_error()
        ]
        weights = [float(r.content["metrics"][NUM_EXAMPLES_KEY]) for _, r in train]  # type: ignore[arg-type]
        for (msg, reply), n_k in zip(train, weights, strict=True):
            arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            rnd = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
            # Node-level DP scales node k's update by K n_k / n before clipping.
            s_k = len(train) * n_k / sum(weights) if self.scaled else 1.0
            self.norms[rnd].append(s_k * update_norm(reply.content["arrays"], arrays))
        return replies


def _stats(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--groups", default="10,3,2", help="numbers of user groups")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scaled", action="store_true", help="times s_k = K n_k / n")
    parser.add_argument("--local-epochs", type=int, default=0, help="0 = the default")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    print(f"| user groups | round 1 (min / median / max) | rounds 2-{args.rounds} max | largest |")
    print("|---|---|---|---|")
    for groups in (int(g) for g in args.groups.split(",")):
        rc: dict[str, Any] = {"data-dir": args.data_dir, "num-server-rounds": args.rounds}
        if args.local_epochs:
            rc["local-epochs"] = args.local_epochs
        nodes = [{"partition-id": p, "num-partitions": groups} for p in range(groups)]
        grid = _NormGrid(client_app, nodes, rc, scaled=args.scaled)
        with tempfile.TemporaryDirectory() as out:
            run_federated(grid, RunConfig.from_mapping(rc), Path(out))
        later_norms = [n for r, v in grid.norms.items() if r > 1 for n in v]
        everything = [n for v in grid.norms.values() for n in v]
        later = f"{max(later_norms):.1f}" if later_norms else "-"
        print(
            f"| {groups} | {_stats(grid.norms[1])} | {later} | {max(everything):.1f} |", flush=True
        )


if __name__ == "__main__":
    main()
