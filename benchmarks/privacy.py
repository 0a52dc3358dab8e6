"""Privacy against utility on ML-100K: DP at user and node level, local DP, the audit.

Every number comes from the real code: federated runs through ``InProcessGrid``
(the ServerApp's ``run_federated`` against the real ClientApp, every message
serialised), and the audit's attacks (:mod:`fedrec_flwr.privacy.audit`) on
round-1 replies exactly as ``NCFClient.fit`` returns them to the server.
Sections (``--sections``):

- ``user``: user-level DP (``dp='user'``, per-user mode) against epsilon after
  ``--rounds`` rounds at ``dp-delta`` 1e-5. Utility with two noise placements:
  *one node holding all users* (the noise of one release over all 943 users:
  what 10 groups under SecAgg+ with ``min-nodes=10`` add up to, each adding
  its share ``sigma / sqrt(10)``)
  and *10 groups, each adding the whole noise* (no secure aggregation). The
  audit attacks one-user nodes (``partitioner=natural``), each adding the whole
  noise to its own reply. epsilon = inf is the same setting without DP.
- ``node``: node-level DP (``dp='node-client'``, Flower's wrappers) on 10
  groups against epsilon, and the audit of the replies the server receives
  (the server adds the noise, so it still reads the replies).
- ``ldp``: FedPerGNN-style local DP and pseudo items: the audit on one-user
  nodes and utility on 10 groups.
- ``secagg``: SecAgg+ round time and bytes against plain FedAvg on 10 groups
  (``benchmarks/secagg_cost.py``, in-process, ``local-epochs=1``, 3 rounds).

Prints markdown tables; writes ``privacy.json`` and ``privacy.png`` to ``--out``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/privacy.py --out docs/privacy-bench
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/privacy.py --quick --out /tmp/privacy
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _bench import (
    default_data_dir,
    fmt,
    markdown_table,
    mean_std,
    quiet_flower,
    run_federated_inprocess,
    stamp,
)

#: user-level DP: GMF, per-user training at learning rate 0.3 with dp-clip 10,
#: picked on seed 42's validation HR@10 at epsilon 8 (one node) among clip
#: 3/5/10/30, learning rate 0.1/0.3/1.0, NeuMF/GMF, server momentum 0/0.5/0.9.
USER_DP = {
    "model": "gmf",
    "learning-rate": 0.3,
    "client-mode": "per-user",
    "weight-key": "users",
    "dp": "user",
    "dp-clip": 10.0,
}
#: node-level DP: the default model and training, clip 14 (the largest scaled
#: node update norm of round 1 on 10 groups: benchmarks/update_norms.py --scaled).
NODE_DP = {"dp": "node-client", "dp-clip": 14.0}
#: local DP settings: (label, run-config keys).
LDP_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("pseudo-items 100", {"pseudo-items": 100}),
    ("ldp clip 0.01 noise 0.01", {"ldp-clip": 0.01, "ldp-noise": 0.01}),
    (
        "pseudo-items 100 + ldp clip 0.01 noise 0.01",
        {"pseudo-items": 100, "ldp-clip": 0.01, "ldp-noise": 0.01},
    ),
]
NUM_USERS = 943


def _dp_keys(base: Mapping[str, Any], epsilon: float) -> dict[str, Any]:
    """``base`` at a target epsilon; at infinity the same training without DP."""
    if math.isinf(epsilon):
        off = {k: v for k, v in base.items() if not k.startswith("dp")}
        if off.get("weight-key") == "users":
            off["weight-key"] = "interactions"  # per-user FedAvg without DP
        return off
    return {**base, "dp-target-epsilon": epsilon}


def _selected(results: Mapping[str, Any]) -> dict[str, float]:
    from fedrec_flwr.runs.results import select_by_validation

    best = select_by_validation(results["rounds"])
    eps = results["rounds"][-1].get("epsilon", math.inf)
    return {
        "hr": best["test"]["hr@10"],
        "ndcg": best["test"]["ndcg@10"],
        "round": best["round"],
        "epsilon": eps,
    }


def _utility(rc: Mapping[str, Any], num_partitions: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        results = run_federated_inprocess(rc, num_partitions, Path(out))
    return _selected(results)


def _audit(
    rc: Mapping[str, Any], num_partitions: int, partitions: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Mean precision, recall, AUC and base rate per attack over round-1 replies."""
    import torch
    from flwr.app import RecordDict

    from fedrec_flwr.client.numpy_client import NCFClient
    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.datasets import load_client_data
    from fedrec_flwr.models import build_model, shared_arrays
    from fedrec_flwr.privacy.audit import audit_reply, score_attack

    torch.set_num_threads(1)
    cfg = RunConfig.from_mapping(rc)
    arch = cfg.model
    scored: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sent: dict[str, np.ndarray] | None = None
    for partition in partitions:
        data = load_client_data(cfg.data, partition, num_partitions)
        if sent is None:
            # Round 1: the server sends the initial model (no user rows).
            init = build_model(
                arch.model,
                0,
                data.num_items,
                factors=arch.factors,
                mlp_layers=arch.mlp_layers,
                seed=cfg.data.seed,
            )
            sent = dict(shared_arrays(init))
            probe = build_model(
                arch.model, 1, data.num_items, factors=arch.factors, mlp_layers=arch.mlp_layers
            )
        client = NCFClient(data, cfg, RecordDict(), noise_seed=1000 + partition)
        # With dp='node-client' the ClientApp's mod then scales and clips the
        # whole update by one factor: no attack here depends on the scale.
        config: dict[str, Any] = {"server-round": 1}
        arrays, _, _ = client.fit(list(sent.values()), config)
        reply = dict(zip(client.array_names(), arrays, strict=True))
        for result in audit_reply(sent, reply, probe):
            record = score_attack(result, data.train_items)
            for key in ("precision", "recall", "auc", "base-rate"):
                if record[key] is not None:
                    scored[result.attack][key].append(float(record[key]))
    return {a: {k: float(np.mean(v)) for k, v in s.items()} for a, s in scored.items()}


def _best(audit: Mapping[str, Mapping[str, float]]) -> tuple[str, Mapping[str, float]]:
    name = max(audit, key=lambda a: audit[a].get("auc", 0.0))
    return name, audit[name]


def _audit_cells(audit: Mapping[str, Mapping[str, float]]) -> list[str]:
    name, best = _best(audit)
    return [
        name,
        f"{best.get('precision', float('nan')):.3f}",
        f"{best.get('base-rate', float('nan')):.3f}",
        f"{best.get('recall', float('nan')):.3f}",
        f"{best.get('auc', float('nan')):.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--epsilons", default="1,2,4,8,16,inf")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--audit-users", type=int, default=100, help="one-user nodes attacked")
    parser.add_argument("--sections", default="user,node,ldp,secagg")
    parser.add_argument("--node-seeds", default="42", help="seeds of the node section")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 seed, epsilon 8 and inf")
    parser.add_argument("--out", type=Path, default=Path("privacy-bench"))
    parser.add_argument(
        "--merge",
        default="",
        help="comma-separated privacy.json files of earlier runs: their sections written "
        "together to --out (privacy.json, privacy.png, the tables) without running anything; "
        "the same section in two files (e.g. other seeds) has its runs concatenated",
    )
    args = parser.parse_args()
    if args.merge:
        _write(_merge([json.loads(Path(f).read_text()) for f in args.merge.split(",")]), args.out)
        return
    from fedrec_flwr.progress import progress

    quiet_flower()
    if args.quick:
        args.seeds, args.node_seeds, args.epsilons = "42", "42", "8,inf"
        args.rounds, args.groups, args.audit_users = 2, 3, 5
    seeds = [int(s) for s in args.seeds.split(",")]
    node_seeds = [int(s) for s in args.node_seeds.split(",")]
    epsilons = [float(e) for e in args.epsilons.split(",")]
    sections = set(args.sections.split(","))
    base = {"data-dir": args.data_dir, "num-server-rounds": args.rounds}
    one_user = {"partitioner": "natural"}
    audited = sorted(
        int(p) for p in np.random.default_rng(0).choice(NUM_USERS, args.audit_users, replace=False)
    )
    out: dict[str, Any] = {
        "stamp": stamp(),
        "rounds": args.rounds,
        "seeds": seeds,
        "groups": args.groups,
        "audit-users": len(audited),
    }

    if "user" in sections:
        records = []
        for eps in progress(epsilons, "user-level DP", unit="epsilons"):
            rc = {**base, **_dp_keys(USER_DP, eps)}
            central = [_utility({**rc, "seed": s, "min-nodes": 1}, 1) for s in seeds]
            spread = [_utility({**rc, "seed": s}, args.groups) for s in seeds]
            audit = _audit({**rc, **one_user}, NUM_USERS, audited)
            records.append({"epsilon": eps, "one-node": central, "groups": spread, "audit": audit})
        out["user"] = records

    if "node" in sections:
        records = []
        for eps in progress(epsilons, "node-level DP", unit="epsilons"):
            rc = {**base, **_dp_keys(NODE_DP, eps)}
            runs = [_utility({**rc, "seed": s}, args.groups) for s in node_seeds]
            audit = _audit(rc, args.groups, list(range(args.groups)))
            records.append({"epsilon": eps, "groups": runs, "audit": audit})
        out["node"] = records
        out["node-seeds"] = node_seeds

    if "ldp" in sections:
        records = []
        for label, keys in progress(LDP_SETTINGS, "local DP", unit="settings"):
            rc = {**base, **keys}
            runs = [_utility({**rc, "seed": s}, args.groups) for s in node_seeds]
            audit = _audit({**rc, **one_user}, NUM_USERS, audited)
            records.append({"setting": label, "groups": runs, "audit": audit})
        out["ldp"] = records
        out["node-seeds"] = node_seeds

    if "secagg" in sections:
        import secagg_cost

        rc = {
            "data-dir": args.data_dir,
            "num-server-rounds": 2 if args.quick else 3,
            "local-epochs": 1,
            "num-threads": 1,
        }
        with tempfile.TemporaryDirectory() as tmp:
            plain = secagg_cost._run("off", rc, args.groups, Path(tmp), "inprocess")
            secure = secagg_cost._run("secaggplus", rc, args.groups, Path(tmp), "inprocess")
        bound = max(b["per-element-mean"] for b in secure["secure-aggregation"]["bounds"].values())
        summary = {
            "plain": secagg_cost._summary(plain),
            "secaggplus": secagg_cost._summary(secure),
            "bound": bound,
        }
        out["secagg"] = summary

    _write(out, args.out)


def _write(out: Mapping[str, Any], folder: Path) -> None:
    """Print the tables of ``out``; write ``privacy.json`` and ``privacy.png``."""
    print(out["stamp"])
    for table in _tables(out):
        print()
        print(table)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "privacy.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    _plot(out, folder / "privacy.png")


def _seeds(runs: Sequence[Mapping[str, Any]]) -> str:
    return f"{len(runs)} seed(s)"


def _tables(out: Mapping[str, Any]) -> list[str]:
    """One markdown table per section in ``out``."""
    groups, audited = out.get("groups", 10), out.get("audit-users", 100)
    tables = []
    if out.get("user"):
        rows = [
            [
                _eps(r["epsilon"]),
                fmt(*mean_std(x["hr"] for x in r["one-node"])),
                fmt(*mean_std(x["ndcg"] for x in r["one-node"])),
                fmt(*mean_std(x["hr"] for x in r["groups"])),
                *_audit_cells(r["audit"]),
            ]
            for r in out["user"]
        ]
        tables.append(
            "User-level DP (per-user mode, GMF), test HR@10 / NDCG@10 at the round chosen by "
            f"validation, {_seeds(out['user'][0]['one-node'])}, delta 1e-5; audit: round-1 "
            f"replies of {audited} one-user nodes, best attack by AUC:\n\n"
            + markdown_table(
                [
                    "epsilon",
                    "HR@10, one node (= 10 groups, SecAgg+, min-nodes 10)",
                    "NDCG@10, one node",
                    f"HR@10, {groups} groups each adding all noise",
                    "best attack",
                    "precision",
                    "base rate",
                    "recall",
                    "AUC",
                ],
                rows,
            )
        )
    if out.get("node"):
        rows = [
            [
                _eps(r["epsilon"]),
                fmt(*mean_std(x["hr"] for x in r["groups"])),
                fmt(*mean_std(x["ndcg"] for x in r["groups"])),
                *_audit_cells(r["audit"]),
            ]
            for r in out["node"]
        ]
        tables.append(
            f"Node-level DP (dp='node-client', {groups} groups, NeuMF), "
            f"{_seeds(out['node'][0]['groups'])}; audit of the {groups} round-1 replies the "
            "server receives (seed 42):\n\n"
            + markdown_table(
                [
                    "epsilon",
                    "HR@10",
                    "NDCG@10",
                    "best attack",
                    "precision",
                    "base rate",
                    "recall",
                    "AUC",
                ],
                rows,
            )
        )
    if out.get("ldp"):
        rows = [
            [r["setting"], fmt(*mean_std(x["hr"] for x in r["groups"])), *_audit_cells(r["audit"])]
            for r in out["ldp"]
        ]
        tables.append(
            f"Local DP and pseudo items (FedPerGNN-style): HR@10 on {groups} groups, "
            f"{_seeds(out['ldp'][0]['groups'])}, audit on {audited} one-user nodes:\n\n"
            + markdown_table(
                ["setting", "HR@10", "best attack", "precision", "base rate", "recall", "AUC"],
                rows,
            )
        )
    if out.get("secagg"):
        import secagg_cost

        summary = out["secagg"]
        tables.append(
            f"SecAgg+ against plain FedAvg, {groups} groups, in-process, local-epochs=1:"
            "\n\n" + secagg_cost._table(summary["plain"], summary["secaggplus"], summary["bound"])
        )
    return tables


def _eps(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


#: per section: the key that names a record, and the lists of per-seed runs in it.
_RUNS = {
    "user": ("epsilon", ("one-node", "groups")),
    "node": ("epsilon", ("groups",)),
    "ldp": ("setting", ("groups",)),
}


def _merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sections of several runs together; the same section's per-seed runs are
    concatenated (record by record: same epsilon or setting), so seeds measured
    in separate runs make one table. The audit is the first run's: it does not
    depend on the seeds (it attacks the default seed's round 1)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in _RUNS or key not in merged:
                if key == "node-seeds" and key in merged:
                    merged[key] = [*merged[key], *(s for s in value if s not in merged[key])]
                elif key == "stamp" and key in merged and value not in merged[key]:
                    merged[key] = f"{merged[key]}; {value}"  # every run's machine and time
                else:
                    merged[key] = json.loads(json.dumps(value, default=str))
                continue
            name, lists = _RUNS[key]
            mine = {r[name]: r for r in merged[key]}
            if set(mine) != {r[name] for r in value}:
                raise SystemExit(
                    f"privacy.py --merge: section {key!r} has different {name}s in two files: "
                    f"{sorted(mine, key=str)} and {sorted((r[name] for r in value), key=str)}"
                )
            for record in value:
                for runs in lists:
                    mine[record[name]][runs] = [*mine[record[name]][runs], *record[runs]]
    return merged


def _plot(out: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_hr, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("user", "user-level DP"), ("node", "node-level DP")):
        records = out.get(key, [])
        if not records:
            continue
        finite = [r for r in records if not math.isinf(r["epsilon"])]
        xs = [r["epsilon"] for r in finite]
        runs = "one-node" if key == "user" else "groups"
        ax_hr.plot(xs, [np.mean([x["hr"] for x in r[runs]]) for r in finite], "o-", label=label)
        ax_auc.plot(
            xs, [_best(r["audit"])[1].get("auc", np.nan) for r in finite], "o-", label=label
        )
        for r in records:
            if math.isinf(r["epsilon"]):
                ax_hr.axhline(
                    np.mean([x["hr"] for x in r[runs]]),
                    ls=":",
                    color=ax_hr.lines[-1].get_color(),
                    label=f"{label}: same run without DP",
                )
    ax_hr.axhline(0.413, ls="--", color="red", label="popularity")
    ax_auc.axhline(0.5, ls="--", color="red", label="chance")
    for ax, title in ((ax_hr, "test HR@10"), (ax_auc, "best attack AUC")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
