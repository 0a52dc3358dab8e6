"""The privacy audit's control: what a curious server reads from round-1 replies.

For ML-100K round 1 (default config, the global model the server sends in
round 1), every sampled node trains as it would (``NCFClient.fit``: its return
value is exactly the reply content) and the attacks of
:mod:`fedrec_flwr.privacy.audit` read the reply against the arrays sent; the
node's training items are the truth. Two federations: one user per node
(``partitioner=natural``, a sample of nodes) and 10 groups of ~94 users (the
default). Prints one markdown row per (federation, attack): precision, recall
and AUC, mean (min) over nodes, and the attack's seconds per reply; then the
``direction`` and ``signature`` attacks' AUC with Gaussian noise added to the item-table updates
(standard deviation a multiple of the update's RMS over changed rows).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/audit_control.py \\
        --data-dir /work/shared/data/ml-100k --users 60 --noise 0,0.5,1,2,4
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/audit_control.py --model sasrec \\
        --client-mode per-user --noise 0 \\
        --run-config "dp='user' weight-key='users' dp-clip=10.0 dp-target-epsilon=8.0"

``--run-config`` takes further run-config ``key=value`` pairs separated by
spaces (TOML values), e.g. user-level DP as above: the replies are then the
noised ones the server receives.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import default_data_dir, markdown_table, quiet_flower, run_config_pairs, stamp
from flwr.app import RecordDict

from fedrec_flwr.client.numpy_client import NCFClient
from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import load_client_data
from fedrec_flwr.models import shared_arrays
from fedrec_flwr.privacy.audit import ATTACKS, audit_reply, score_attack


def _replies(
    run_config: Mapping[str, Any], num_partitions: int, partitions: Sequence[int]
) -> tuple[Any, dict[str, np.ndarray], list[tuple[dict[str, np.ndarray], np.ndarray]]]:
    """The one-user model, the round-1 arrays sent, and (reply, truth) per partition."""
    cfg = RunConfig.from_mapping(run_config)
    sent = dict(shared_arrays(cfg.model.build(0, 1682, seed=cfg.data.seed)))
    out = []
    for partition in partitions:
        data = load_client_data(cfg.data, partition, num_partitions)
        # A noise seed per node (a node's secret in a deployment), as privacy.py.
        client = NCFClient(data, cfg, RecordDict(), noise_seed=1000 + partition)
        arrays, _, _ = client.fit(list(sent.values()), {"server-round": 1})
        out.append((dict(zip(client.array_names(), arrays, strict=True)), data.train_items))
    probe = cfg.model.build(1, data.num_items, seed=0)
    return probe, sent, out


def _fmt(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} ({np.min(values):.3f})" if values else "-"


def _noisy(
    sent: Mapping[str, np.ndarray],
    reply: Mapping[str, np.ndarray],
    tables: Sequence[str],
    multiple: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    noisy = dict(reply)
    for table in tables:
        delta = reply[table] - sent[table]
        changed = np.any(delta != 0, axis=1)
        rms = float(np.sqrt(np.mean(delta[changed] ** 2))) if changed.any() else 0.0
        noisy[table] = (reply[table] + rng.normal(0, multiple * rms, delta.shape)).astype(
            reply[table].dtype
        )
    return noisy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--users", type=int, default=60, help="one-user nodes sampled")
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--noise", default="0,0.5,1,2,4", help="noise multiples of the RMS")
    parser.add_argument("--model", default="neumf", help="any `model` (its default config)")
    parser.add_argument("--client-mode", default="group", help="group or per-user")
    parser.add_argument("--run-config", default="", help="more key=value pairs (TOML values)")
    parser.add_argument("--quick", action="store_true", help="10 users, 3 groups")
    parser.add_argument("--out", type=Path, default=None, help="folder for audit_control.json")
    args = parser.parse_args()
    quiet_flower()
    torch.set_num_threads(1)
    if args.quick:
        args.users, args.groups = 10, 3
    base = {
        "data-dir": args.data_dir,
        "model": args.model,
        "client-mode": args.client_mode,
        **run_config_pairs(args.run_config),
    }
    rng = np.random.default_rng(0)
    federations = [
        (
            "one user per node",
            {**base, "partitioner": "natural"},
            943,
            sorted(int(p) for p in rng.choice(943, args.users, replace=False)),
        ),
        (f"{args.groups} groups", base, args.groups, list(range(args.groups))),
    ]
    multiples = [float(m) for m in args.noise.split(",") if m]
    rows, noise_rows, summary = [], [], []
    for label, rc, num_partitions, partitions in federations:
        probe, sent, replies = _replies(rc, num_partitions, partitions)
        scored: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        true_items = []
        for reply, train_items in replies:
            audit_reply(sent, reply, probe)  # warm-up: the first torch call pays set-up
            for attack in ATTACKS:
                t0 = time.perf_counter()
                (result,) = audit_reply(sent, reply, probe, attacks=[attack])
                scored[attack]["seconds"].append(time.perf_counter() - t0)
                record = score_attack(result, train_items)
                for key in ("precision", "recall", "auc", "auc-either-sign"):
                    if record[key] is not None:
                        scored[attack][key].append(record[key])
            true_items.append(len(np.unique(train_items)))
        for attack in ATTACKS:
            s = scored[attack]
            rows.append(
                [
                    label,
                    len(replies),
                    f"{np.mean(true_items):.0f}",
                    attack,
                    _fmt(s["precision"]),
                    _fmt(s["recall"]),
                    _fmt(s["auc"]),
                    _fmt(s["auc-either-sign"]),
                    f"{np.mean(s['seconds']):.3f}",
                ]
            )
            summary.append(
                {
                    "federation": label,
                    "attack": attack,
                    **{k: float(np.mean(v)) for k, v in s.items()},
                }
            )
        tables = probe.item_tables()
        noise_rng = np.random.default_rng(1)
        aucs: dict[str, list[str]] = {"direction": [], "signature": []}
        for multiple in multiples:
            values: dict[str, list[float]] = {"direction": [], "signature": []}
            for reply, train_items in replies:
                noisy = _noisy(sent, reply, tables, multiple, noise_rng)
                for result in audit_reply(sent, noisy, probe, attacks=list(values)):
                    values[result.attack].append(score_attack(result, train_items)["auc"])
            for attack, got in values.items():
                aucs[attack].append(_fmt(got))
        noise_rows += [[label, attack, *cells] for attack, cells in aucs.items()]
    print(stamp())
    print()
    print(
        markdown_table(
            [
                "nodes",
                "sampled",
                "training items per node",
                "attack",
                "precision",
                "recall",
                "AUC",
                "AUC, either sign",
                "s/reply",
            ],
            rows,
        )
    )
    print()
    print("AUC with Gaussian noise on the item-table updates (sigma = multiple x RMS):")
    print()
    print(markdown_table(["nodes", "attack", *(f"x{m:g}" for m in multiples)], noise_rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "audit_control.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
