"""Rating prediction on ML-100K (``task='rating'``): MF, centralised and FedAvg.

Protocol (recorded in every results.json): every rating kept; the model's
output plus the mean training rating is the predicted rating, clipped to
[1, 5]; MSE training; test RMSE and MAE at the round (epoch) with the lowest
validation RMSE. Splits: Surprise's 5-fold cross-validation (``split=kfold``,
folds 0-4 of ``KFold(n_splits=5, random_state=0)`` over the ratings in file
order), the temporal leave-one-out split and a seeded random 80/20 split; each
holds out 10% of its training ratings (seeded) for validation. Federated: FedAvg
over 10 random user groups, user vectors and biases private to their group.

Anchor: Surprise's SVD on this ML-100K copy, ``KFold(5, random_state=0)``:
RMSE 0.9344, MAE 0.7367 (mean over the 5 folds).

    python benchmarks/rating.py --data-dir /work/shared/data/ml-100k   # every split, both modes
    python benchmarks/rating.py --splits kfold --folds 0,1 --modes federated
    python benchmarks/rating.py --quick                                 # CI: 1 fold, 2 rounds

Prints a markdown table per split and writes ``rating.json`` to ``--out``
(default ``$FEDREC_FLWR_HOME/benchmarks/rating``). One process, one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import _bench

ANCHOR = {"label": "Surprise SVD, KFold(5, random_state=0)", "rmse": 0.9344, "mae": 0.7367}

# Picked on fold 0's *validation* RMSE (see docs/benchmarks.md, "Rating
# prediction"): Adam, 32 factors, the per-rating embedding penalty
# (Surprise's `reg`; Adam's weight-decay pulls every row of a fresh optimiser
# each round and left FedAvg at ~0.955), no weight decay.
MF: dict[str, Any] = {
    "task": "rating",
    "model": "mf",
    "factors": 32,
    "learning-rate": 0.01,
    "embedding-l2": 0.1,
    "weight-decay": 0.0,
    "batch-size": 256,
    "num-threads": 1,
}
# Centralised: epochs; federated: rounds of `local-epochs` passes per group.
CENTRAL = {**MF, "learning-rate": 0.002, "num-server-rounds": 20}
FEDERATED = {**MF, "num-server-rounds": 30, "local-epochs": 1}
NODES = 10
SPLITS = {"kfold": {"split": "kfold"}, "leave-one-out": {}, "random": {"split": "random"}}


def _run(mode: str, keys: dict[str, Any], out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    if mode == "centralized":
        results = _bench.run_centralized_inprocess(keys, out)
    else:
        results = _bench.run_federated_inprocess({**keys, "output-dir": str(out)}, NODES, out)
    selected = results["selected"]
    return {
        "round": selected["round"],
        "val-rmse": selected["val"]["rmse"],
        "test-rmse": selected["test"]["rmse"],
        "test-mae": selected["test"]["mae"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=_bench.default_data_dir())
    parser.add_argument("--splits", default="kfold,leave-one-out,random")
    parser.add_argument("--folds", default="0,1,2,3,4", help="kfold's folds")
    parser.add_argument("--modes", default="centralized,federated")
    parser.add_argument("--rounds", type=int, default=0, help="override num-server-rounds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="fold 0 of kfold, 2 rounds")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from fedrec_flwr.paths import fedrec_home

    out = args.out or fedrec_home() / "benchmarks" / "rating"
    out.mkdir(parents=True, exist_ok=True)
    splits = ["kfold"] if args.quick else args.splits.split(",")
    folds = [0] if args.quick else [int(f) for f in args.folds.split(",")]
    rounds = 2 if args.quick else args.rounds
    modes = args.modes.split(",")
    print(f"# Rating prediction, ML-100K ({_bench.stamp()})\n")
    rows: list[dict[str, Any]] = []
    for split in splits:
        for fold in folds if split == "kfold" else [None]:
            for mode in modes:
                keys = {**(CENTRAL if mode == "centralized" else FEDERATED), **SPLITS[split]}
                keys.update({"data-dir": args.data_dir, "dataset": "ml-100k"})
                if fold is not None:
                    keys["fold"] = fold
                if rounds:
                    keys["num-server-rounds"] = rounds
                label = split if fold is None else f"{split}-{fold}"
                row = {"split": split, "fold": fold, "mode": mode}
                row |= _run(mode, keys, out / f"{mode}-{label}")
                rows.append(row)
                print(
                    f"{mode:11s} {label:13s} test RMSE {row['test-rmse']:.4f} MAE "
                    f"{row['test-mae']:.4f} (val RMSE {row['val-rmse']:.4f}, round "
                    f"{row['round']}, {row['seconds']:.0f}s)",
                    flush=True,
                )
    print()
    for split in splits:
        table = []
        for mode in modes:
            mine = [r for r in rows if r["split"] == split and r["mode"] == mode]
            rmse, rmse_sd = _bench.mean_std(r["test-rmse"] for r in mine)
            mae, mae_sd = _bench.mean_std(r["test-mae"] for r in mine)
            per_fold = " ".join(f"{r['test-rmse']:.4f}" for r in mine)
            rmse_text, mae_text = _bench.fmt(rmse, rmse_sd), _bench.fmt(mae, mae_sd)
            table.append([f"MF · {mode}", len(mine), rmse_text, mae_text, per_fold])
        if split == "kfold":
            table.append([ANCHOR["label"], 5, f"{ANCHOR['rmse']:.4f}", f"{ANCHOR['mae']:.4f}", ""])
        print(f"## split = {split}\n")
        header = ["model", "runs", "test RMSE", "test MAE", "test RMSE per run"]
        print(_bench.markdown_table(header, table) + "\n")
    summary = {"anchor": ANCHOR, "central": CENTRAL, "federated": FEDERATED, "rows": rows}
    (out / "rating.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'rating.json'}")


if __name__ == "__main__":
    main()
