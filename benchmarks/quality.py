"""Quality on ML-100K: centralised NCF vs federated strategies, 3 seeds.

Protocol (fixed, recorded in every results.json): temporal leave-one-out, 99
sampled evaluation negatives, HR@10/NDCG@10 of the test item at the round (or
epoch) chosen by validation HR@10; mean ± std over seeds.

    python benchmarks/quality.py            # full: 3 seeds, ~90 min on 2 cores
    python benchmarks/quality.py --quick    # CI: 1 seed, 2 rounds, a few rows
    python benchmarks/quality.py --reuse    # re-run only rows whose saved runs are missing
    python benchmarks/quality.py --rows centralisedNeuMF --seeds 42,1,2,3,4,5,6,7,8,9

A FedAvg row whose fine-tuned twin (the same settings plus ``finetune-*``) is
selected too is read off the twin's runs (their ``global-*`` metrics: the same
training, bit for bit) instead of being trained a second time; with ``--reuse``
or ``--saved-only`` its own saved runs come first.

Prints a markdown table and writes ``quality.png`` and ``quality.json`` to
``--out`` (default ``$FEDREC_FLWR_HOME/benchmarks/quality``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import _bench

from fedrec_flwr.protocol import FROM_TRAIN_PREFIX, GLOBAL_PREFIX, TEST_PART, VAL_PART
from fedrec_flwr.runs.results import select_by_validation

GLOBAL_VAL, GLOBAL_TEST = GLOBAL_PREFIX + VAL_PART, GLOBAL_PREFIX + TEST_PART

# Published anchors (HR@10, NDCG@10); see the README for the protocols behind them.
ANCHORS = {
    "NCF NeuMF, ML-1M (He et al. 2017)": (0.726, 0.445),
    "PFedRec, ML-100K, leaky pool (IJCAI 2023)": (0.709, 0.429),
    "PFedRec code, ML-100K, leak-free pool (measured)": (0.554, 0.328),
}

# One user per client: FedAvg over users (client-mode=per-user, exact). Its
# learning rate was picked on validation HR@10 (seed 42, best round of 25:
# 0.001 -> 0.38, 0.01 -> 0.44, 0.03 -> 0.56, 0.1 -> 0.60); each user takes only
# a few local steps per round, so the default 0.001 barely moves the model.
_PER_USER: dict[str, Any] = {"client-mode": "per-user", "learning-rate": 0.1}
# Every user of a group fine-tunes its own copy of everything (PFedRec-style
# personalisation); the same setting with and without the leaky pool.
_EACH_USER: dict[str, Any] = {
    "finetune-epochs": 5,
    "finetune-scope": "all",
    "finetune-unit": "user",
    "finetune-learning-rate": 0.01,
}

# label, kind, run-config overrides, default number of nodes
ROWS: list[tuple[str, str, dict[str, Any], int]] = [
    ("centralised GMF", "central", {"model": "gmf"}, 1),
    ("centralised MLP", "central", {"model": "mlp"}, 1),
    ("centralised NeuMF", "central", {"model": "neumf"}, 1),
    ("FedAvg · 10 groups", "fed", {}, 10),
    ("FedAvg · by occupation", "fed", {"partitioner": "attribute"}, 21),
    ("FedAvg · one user per client", "fed", _PER_USER, 10),
    ("Fine-tuned · one user per client", "fed", {**_PER_USER, "finetune-epochs": 2}, 10),
    ("Fine-tuned · 10 groups", "fed", {"finetune-epochs": 2}, 10),
    ("Fine-tuned · by occupation", "fed", {"finetune-epochs": 2, "partitioner": "attribute"}, 21),
    ("centralised NeuMF · leaky pool", "central", {"negative-pool": "history"}, 1),
    ("FedAvg · 10 groups · leaky pool", "fed", {"negative-pool": "history"}, 10),
    (
        "Fine-tuned · 10 groups · leaky pool",
        "fed",
        {"finetune-epochs": 2, "negative-pool": "history"},
        10,
    ),
    ("Fine-tuned per user · 10 groups", "fed", _EACH_USER, 10),
    (
        "Fine-tuned per user · 10 groups · leaky pool",
        "fed",
        {**_EACH_USER, "negative-pool": "history"},
        10,
    ),
]


def _family_rows(
    name: str,
    model: dict[str, Any],
    fed: dict[str, Any],
    scope: str = "private",
    per_user: dict[str, Any] | None = None,
) -> list[Any]:
    """Centralised, FedAvg over 10 groups, one user per client, and fine-tuned rows
    of one model family (``model``: its settings; ``fed``: federated-only ones,
    e.g. the learning rate picked on validation for 25 rounds x 2 local epochs;
    ``scope``: what fine-tuning trains, ``all`` for a model with no private part;
    ``per_user``: one-user-per-client settings on top of NCF's ``_PER_USER``)."""
    tuned = {"finetune-epochs": 2, "finetune-scope": scope}
    one_user = {**model, **_PER_USER, **(per_user or {})}
    return [
        (f"centralised {name}", "central", model, 1),
        (f"FedAvg {name} · 10 groups", "fed", {**model, **fed}, 10),
        (f"FedAvg {name} · one user per client", "fed", one_user, 10),
        (f"Fine-tuned {name} · 10 groups", "fed", {**model, **fed, **tuned}, 10),
    ]


# Centralised 120 epochs: seed 2 at 120 selected epoch 99 on validation (0.780, against
# 0.775 at 80), so 80 stopped it still climbing.
_SASREC = {"model": "sasrec", "factors": 64, "num-server-rounds": 120}
_SASREC_FED = {"learning-rate": 0.003, "local-epochs": 3, "num-server-rounds": 40}

# The families beyond NCF (issue 16), each with settings picked on validation HR@10.
ROWS += [
    # MF: 64 factors with embedding-l2=0.005 (Rendle et al.'s penalty on the rows a
    # sample reads) won on validation (docs/benchmarks.md, "Tuning notes"). One user
    # per client trains without it (the per-user trainer has no penalty term), and
    # there 32 factors win on validation (0.615 against 0.607, 3 seeds).
    *_family_rows(
        "MF",
        {"model": "mf", "factors": 64, "embedding-l2": 0.005},
        {"learning-rate": 0.005},
        per_user={"factors": 32, "embedding-l2": 0.0},
    ),
    # Centralised hybrid was still improving at epoch 20 (selected 16, 20, 20): 40 epochs.
    *_family_rows(
        "hybrid",
        {"model": "hybrid", "factors": 32, "num-server-rounds": 40},
        {"learning-rate": 0.005, "num-server-rounds": 25},
        # One user per client: NCF's 0.1 (seed 42, validation HR@10 at round 5: 0.03 ->
        # 0.384, 0.1 -> 0.411) for NCF's 25 rounds.
        per_user={"num-server-rounds": 25},
    ),
    # BPR over each node's graph (3 layers, d=64, as picked on validation by
    # benchmarks/probe_lightgcn.py); it needs more passes than 20 epochs / 25 rounds.
    *_family_rows(
        "LightGCN",
        {
            "model": "lightgcn",
            "factors": 64,
            "learning-rate": 0.005,
            "batch-size": 2048,
            "num-server-rounds": 30,
        },
        {"num-server-rounds": 40},
        # One user per client: 0.1 as NCF (seed 42, validation HR@10 at round 5: 0.01 ->
        # 0.407, 0.1 -> 0.517), 40 rounds as the groups.
        per_user={"num-server-rounds": 40},
    ),
    # Softmax CE, d=64, 2 blocks, last 50 items, windows every 10 items
    # (benchmarks/probe_sasrec.py picked the loss, the stride and the epochs on
    # validation); the test item is scored from training + validation items
    # (test-input='train+val', the paper's rule) and, in the same runs, from the
    # training items only (the "test from training items" rows).
    # Federated: a fresh Adam every round restarts the attention blocks' moments, so
    # more local epochs at a larger step (at 0.001 x 2 epochs it was still climbing at
    # round 40: 0.561 on seed 42).
    *_family_rows(
        "SASRec",
        _SASREC,
        _SASREC_FED,
        scope="all",  # no private parameter: each group fine-tunes the whole model
        # One user per client: 40 rounds as the groups, Adam at 0.03 (seed 42,
        # validation HR@10 at round 5: 0.003 -> 0.143, 0.01 -> 0.345, 0.03 -> 0.369).
        per_user={"num-server-rounds": 40, "learning-rate": 0.03},
    ),
    # The FedAvg row with each group's Adam kept across rounds (optimizer-state='keep'):
    # the attention blocks' moments no longer restart every round. 60 rounds: at 40,
    # seed 42 selected its last round; validation prefers 60 on seeds 1 and 2.
    (
        "FedAvg SASRec · 10 groups · Adam kept",
        "fed",
        {**_SASREC, **_SASREC_FED, "optimizer-state": "keep", "num-server-rounds": 60},
        10,
    ),
]
# SASRec's runs score the test item under both input rules; the second is its own row.
FROM_TRAIN_ROW = "test from training items"
QUICK_ROWS = ("centralised NeuMF", "FedAvg · 10 groups", "FedAvg · one user per client")


def _slug(label: str) -> str:
    """A row's name without spaces, as in its run directories: ``centralisedNeuMF-leakypool``."""
    return label.replace(" ", "").replace("·", "-")


def select_rows(
    rows: list[tuple[str, str, dict[str, Any], int]], spec: str
) -> list[tuple[str, str, dict[str, Any], int]]:
    """The rows named in ``spec`` (comma-separated labels or slugs), in table order.

    Raises
    ------
    ValueError
        For a name that is no row's, listing the accepted slugs.
    """
    wanted = {name.strip() for name in spec.split(",") if name.strip()}
    known = {row[0] for row in rows} | {_slug(row[0]) for row in rows}
    unknown = sorted(wanted - known)
    if unknown or not wanted:
        raise ValueError(
            f"--rows {spec!r}: unknown row(s) {', '.join(unknown) or '(none given)'}; "
            f"accepted: {', '.join(_slug(row[0]) for row in rows)}"
        )
    return [row for row in rows if row[0] in wanted or _slug(row[0]) in wanted]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as run-config overrides (int, float, true/false or text).

    Raises
    ------
    ValueError
        For an item without ``=`` or a key that is no run-config key.
    """
    from fedrec_flwr.config import RunConfig

    known = RunConfig().to_dict()
    sets: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in known:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with a run-config key")
        value: Any = text.strip()
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        if value in ("true", "false"):
            value = value == "true"
        sets[key] = value
    return sets


def _job(job: tuple[str, str, dict[str, Any], int, int, str, str]) -> dict[str, Any] | None:
    label, kind, rc, nodes, seed, out, reuse = job
    out_dir = Path(out) / f"{_slug(label)}-seed{seed}"
    saved = out_dir / "results.json"
    if reuse and saved.is_file() and _same_config(json.loads(saved.read_text()), rc):
        results = json.loads(saved.read_text())
    elif reuse == "saved-only":
        return None  # not run: the row reports the seeds that were
    elif kind == "central":
        results = _bench.run_centralized_inprocess(rc, out_dir)
    else:
        results = _bench.run_federated_inprocess(rc, nodes, out_dir)
    return _record(label, seed, results["selected"], results.get("total-wall-seconds"))


def _record(label: str, seed: int, sel: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """One run's entry in a row: its test metrics at the validation-selected round."""
    return {
        "label": label,
        "seed": seed,
        "round": sel["round"],
        "hr": sel["test"]["hr@10"],
        "ndcg": sel["test"]["ndcg@10"],
        "val-hr": sel["val"]["hr@10"],
        # Full-catalogue ranking of the same test items (None in runs without it).
        "full-hr": sel["test"].get("full-hr@10"),
        "full-ndcg": sel["test"].get("full-ndcg@10"),
        # A sequence model's test item scored from the training items only (the
        # other input rule of the field; None for the other models).
        "from-train-hr": sel["test"].get(f"{FROM_TRAIN_PREFIX}hr@10"),
        "from-train-ndcg": sel["test"].get(f"{FROM_TRAIN_PREFIX}ndcg@10"),
        "seconds": seconds,
    }


Row = tuple[str, str, dict[str, Any], int]


def fine_tuned_twin(row: Row, rows: list[Row]) -> Row | None:
    """The fine-tuned row among ``rows`` that trains exactly ``row``'s global model.

    Fine-tuning personalises copies at evaluation and never feeds back into
    training, so a fine-tuned run's ``global-*`` columns are the plain run's
    metrics bit for bit (``tests/test_personal.py``); the FedAvg row is then read
    off its twin's run instead of training the same model twice.
    """
    _, kind, overrides, nodes = row
    if kind != "fed" or overrides.get("finetune-epochs", 0):
        return None
    for twin in rows:
        _, twin_kind, tuned, twin_nodes = twin
        untuned = {k: v for k, v in tuned.items() if not k.startswith("finetune-")}
        if (twin_kind, twin_nodes, untuned) == (kind, nodes, overrides) and tuned.get(
            "finetune-epochs", 0
        ):
            return twin
    return None


def _from_twin(label: str, twin: Row, seed: int, out: Path) -> dict[str, Any] | None:
    """``label``'s entry for ``seed`` from its fine-tuned twin's saved run (None if absent)."""
    saved = out / f"{_slug(twin[0])}-seed{seed}" / "results.json"
    if not saved.is_file():
        return None
    rounds = [
        {"round": r["round"], VAL_PART: r[GLOBAL_VAL], TEST_PART: r[GLOBAL_TEST]}
        for r in json.loads(saved.read_text())["rounds"]
        if r.get(GLOBAL_VAL)
    ]
    sel = select_by_validation(rounds)
    if sel is None:
        raise ValueError(f"{saved}: no round has {GLOBAL_VAL} metrics to read {label!r} from")
    return _record(label, seed, sel, None)


def _same_config(results: dict[str, Any], rc: dict[str, Any]) -> bool:
    """A saved run counts only if it was made with these run-config values."""
    config = results.get("config", {})
    return all(config.get(key) == value for key, value in rc.items() if key != "data-dir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 1 seed, 2 rounds")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--rounds", type=int, default=25, help="federated rounds")
    parser.add_argument("--epochs", type=int, default=20, help="centralised epochs")
    parser.add_argument("--data-dir", default=_bench.default_data_dir())
    parser.add_argument("--out", default="")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a run already in --out when its saved config matches (add rows cheaply)",
    )
    parser.add_argument(
        "--saved-only",
        action="store_true",
        help="train nothing: report the runs already in --out whose saved config matches "
        "(a row lists the seeds it has)",
    )
    parser.add_argument(
        "--rows",
        default="",
        help="only these rows (comma-separated slugs, e.g. centralisedNeuMF); "
        "writes quality-rows.json/png so the full table's files stay",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config key added to every row run (a tuning probe: the row plus these "
        "keys); repeatable; use its own --out",
    )
    args = parser.parse_args(argv)
    from fedrec_flwr.paths import runs_home

    try:
        picked = select_rows(ROWS, args.rows) if args.rows else None
        sets = parse_sets(args.set)
    except ValueError as exc:
        parser.error(str(exc))

    out = Path(args.out) if args.out else runs_home().parent / "benchmarks" / "quality"
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = ROWS
    rounds, epochs = args.rounds, args.epochs
    if args.quick:
        seeds, rounds, epochs = seeds[:1], 2, 2
        rows = [row for row in ROWS if row[0] in QUICK_ROWS]
    if picked is not None:
        rows = picked
    rows = [(label, kind, {**overrides, **sets}, nodes) for label, kind, overrides, nodes in rows]
    jobs = []
    twins = {row[0]: twin for row in rows if (twin := fine_tuned_twin(row, rows))}
    for label, kind, overrides, nodes in rows:
        reuse = "saved-only" if args.saved_only else ("yes" if args.reuse else "")
        if label in twins:
            if not reuse:
                continue  # read off its fine-tuned twin's fresh runs below
            reuse = "saved-only"  # its own saved runs, else the twin's; never trained
        for seed in seeds:
            n = epochs if kind == "central" else rounds
            rc = {"data-dir": args.data_dir, "seed": seed, "num-server-rounds": n, **overrides}
            jobs.append((label, kind, rc, nodes, seed, str(out), reuse))
    done = [d for d in _bench.parallel_map(_job, jobs, args.workers) if d is not None]
    for label, twin in twins.items():
        have = {d["seed"] for d in done if d["label"] == label}
        for seed in (s for s in seeds if s not in have):
            if (entry := _from_twin(label, twin, seed, out)) is not None:
                done.append(entry)
    done.sort(key=lambda d: seeds.index(d["seed"]))  # a row lists its seeds in --seeds order
    table = []
    summary = []
    for label, *_ in rows:
        runs = [d for d in done if d["label"] == label]
        if not runs:
            continue

        # A sequence model's runs also give the test item scored from training items
        # only: same runs and selected rounds, its own row (no full-ranking values).
        variants: list[tuple[str, str, str, tuple[str, ...]]] = [
            (label, "hr", "ndcg", ("full-hr", "full-ndcg"))
        ]
        if _stats(runs, "from-train-hr") is not None:
            variants.append((f"{label} · {FROM_TRAIN_ROW}", "from-train-hr", "from-train-ndcg", ()))
        for name, hr_key, ndcg_key, full_keys in variants:
            hr, ndcg = _stats(runs, hr_key), _stats(runs, ndcg_key)
            assert hr is not None and ndcg is not None  # every run has its test metrics
            full = {
                key: _stats(runs, key) if key in full_keys else None
                for key in ("full-hr", "full-ndcg")
            }
            summary.append({"label": name, "hr": hr, "ndcg": ndcg, **full, "runs": runs})
            table.append(
                (
                    name,
                    _bench.fmt(*hr),
                    _bench.fmt(*ndcg),
                    *(_bench.fmt(*v) if v is not None else "-" for v in full.values()),
                    ",".join(str(d["round"]) for d in runs),
                    ",".join(str(d["seed"]) for d in runs),
                )
            )
    print(f"ML-100K quality, test at the validation-selected round ({_bench.stamp()})\n")
    if sets:
        print("Every row plus " + " ".join(f"{k}={v}" for k, v in sets.items()) + "\n")
    print(
        "HR@10 / NDCG@10: the test item among 99 sampled negatives; full: over the whole "
        "catalogue minus the user's training items (Krichene & Rendle, KDD 2020).\n"
    )
    header = ("run", "HR@10", "NDCG@10", "full HR@10", "full NDCG@10", "selected", "seeds")
    print(_bench.markdown_table(header, table))
    for label, twin in twins.items():
        print(
            f"\n{label}: its own saved runs, else the global model of the {twin[0]!r} "
            "runs (the same training)"
        )
    print()
    print(
        _bench.markdown_table(
            ("published anchor", "HR@10", "NDCG@10"),
            [(name, f"{hr:.3f}", f"{nd:.3f}") for name, (hr, nd) in ANCHORS.items()],
        )
    )
    stem = "quality-rows" if picked is not None else "quality"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out / f"{stem}.png")
    print(f"\nwrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
    return 0


def _stats(runs: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """Mean and std of one value over a row's runs; None if a run lacks it."""
    values = [d.get(key) for d in runs]
    if any(v is None for v in values):
        return None
    return _bench.mean_std(float(v) for v in values if v is not None)


def _plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(summary) + 1.5))
    ys = range(len(summary))
    ax.barh(
        [y + 0.2 for y in ys],
        [s["hr"][0] for s in summary],
        0.4,
        xerr=[s["hr"][1] for s in summary],
        label="HR@10",
    )
    ax.barh(
        [y - 0.2 for y in ys],
        [s["ndcg"][0] for s in summary],
        0.4,
        xerr=[s["ndcg"][1] for s in summary],
        label="NDCG@10",
    )
    ax.set_yticks(list(ys), [s["label"] for s in summary])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("test metric at the validation-selected round\n(mean ± std over seeds)")
    # Above the bars, not over them: HR@10 nears 1 on leaky rows.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
