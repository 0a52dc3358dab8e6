"""LightGCN on ML-100K: centralised, or a minimal in-memory FedAvg over user groups.

A quick read of the model's quality under this package's protocol (temporal
leave-one-out, the held-out item among 99 sampled negatives, HR@10 / NDCG@10),
not the Flower path: ``--groups 1`` trains every user in one graph with one
Adam; ``--groups G`` cuts the users into ``G`` random groups
(``prepared.client_data(p, G)``), each node propagating over its own users'
graph, and runs FedAvg in this process: every round each node loads the global
shared arrays (the layer-0 item embeddings), trains ``--local-epochs`` with a
fresh Adam, and the server averages the returned arrays weighted by training
interactions. Metrics are summed over users of every node. The epoch (round)
is selected on validation HR@10 only; its test metrics are reported.

Training is the model's own :meth:`~fedrec_flwr.models.lightgcn.LightGCN.train_epochs`
(BPR); ``--loss bce`` trains with BCE instead (drawn and shuffled as the package's
pairwise trainer), by a trainer in this script, for the comparison that chose BPR.

Usage (from the repository root)::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_lightgcn.py --epochs 40
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_lightgcn.py --groups 10 --epochs 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fedrec_flwr.datasets import DataOptions, prepare_data  # noqa: E402
from fedrec_flwr.datasets.negatives import InteractionSet, sample_train_negatives  # noqa: E402
from fedrec_flwr.datasets.prepare import ClientData  # noqa: E402
from fedrec_flwr.models import load_arrays, shared_arrays  # noqa: E402
from fedrec_flwr.models.lightgcn import LightGCN  # noqa: E402
from fedrec_flwr.train.evaluate import rank_val_test  # noqa: E402
from fedrec_flwr.train.metrics import finalize_sums  # noqa: E402

KS = (10,)
# The tests' copy (FEDREC_TEST_ML100K), else the one beside the repository.
SHARED_ML100K = os.environ.get(
    "FEDREC_TEST_ML100K", str(REPO.parent / "shared" / "data" / "ml-100k")
)


def train_bce(
    model: LightGCN,
    data: ClientData,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    num_negatives: int,
    rng: np.random.Generator,
    exclude: InteractionSet,
) -> float:
    """BCE over each positive and ``num_negatives`` negatives, drawn and shuffled
    as :func:`fedrec_flwr.train.group.train_epochs`, one propagation per batch."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    users = np.asarray(data.train_users, dtype=np.int64)
    pos_users = torch.from_numpy(users)
    pos_items = torch.from_numpy(np.asarray(data.train_items, dtype=np.int64))
    n_pos = len(pos_users)
    labels = torch.cat([torch.ones(n_pos), torch.zeros(n_pos * num_negatives)])
    all_users = torch.cat([pos_users, pos_users.repeat_interleave(num_negatives)])
    mean_loss = float("nan")
    for _ in range(epochs):
        negatives = sample_train_negatives(rng, users, exclude, num_negatives)
        all_items = torch.cat([pos_items, torch.from_numpy(negatives.reshape(-1))])
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            final_u, final_i = model.propagate()
            logits = (final_u[all_users[idx]] * final_i[all_items[idx]]).sum(-1)
            loss = loss_fn(logits, labels[idx])
            (loss / len(idx)).backward()
            optimizer.step()
            total += float(loss.detach())
        mean_loss = total / len(labels)
    return mean_loss


def local_train(
    model: LightGCN, data: ClientData, args: argparse.Namespace, opt: Any, rng: Any, epochs: int
) -> float:
    if args.loss == "bce":
        return train_bce(
            model,
            data,
            epochs=epochs,
            batch_size=args.batch_size,
            optimizer=opt,
            num_negatives=args.negatives,
            rng=rng,
            exclude=data.train_set,
        )
    return model.train_epochs(
        epochs=epochs,
        batch_size=args.batch_size,
        optimizer=opt,
        num_negatives=args.negatives,
        rng=rng,
        exclude=data.train_set,
    )


def evaluate(models: Sequence[LightGCN], datas: Sequence[ClientData]) -> dict[str, Any]:
    """Val/test HR@10 and NDCG@10 over every node's users (sums, then one division)."""
    sums: dict[str, dict[str, float]] = {"val": {}, "test": {}}
    n = 0
    for model, data in zip(models, datas, strict=True):
        val, test = rank_val_test(model, data, KS)
        n += val.num_users
        for part, res in (("val", val), ("test", test)):
            for key, value in res.sums.items():
                sums[part][key] = sums[part].get(key, 0.0) + value
    return {part: finalize_sums(s, n) for part, s in sums.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=SHARED_ML100K)
    parser.add_argument("--epochs", type=int, default=40, help="epochs (rounds with --groups)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--groups", type=int, default=1, help="1 = centralised")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--loss", choices=("bpr", "bce"), default="bpr", help="bpr: the model's own objective"
    )
    parser.add_argument(
        "--patience", type=int, default=0, help="stop after this many epochs without a better val"
    )
    parser.add_argument("--out", default="", help="write the run as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    prepared = prepare_data(DataOptions(dataset="ml-100k", data_dir=args.data_dir, seed=args.seed))
    datas = [prepared.client_data(p, args.groups) for p in range(args.groups)]
    models = []
    for p, data in enumerate(datas):
        model = LightGCN(data.num_users, data.num_items, args.factors, args.layers, seed=args.seed)
        if args.groups > 1:
            model.reset_private(args.seed * 1000 + p)  # each node its own user rows
        model.bind(data.context())
        models.append(model)
    rngs = [np.random.default_rng([args.seed, 0xCE47, p]) for p in range(args.groups)]
    central = args.groups == 1
    # Centralised: one Adam for the run (moments carry over epochs), as runs/centralized.py.
    opt0 = torch.optim.Adam(models[0].parameters(), lr=args.lr, weight_decay=args.weight_decay)
    server = LightGCN(0, prepared.num_items, args.factors, args.layers, seed=args.seed)
    global_arrays = shared_arrays(server)
    weights = np.array([d.num_train for d in datas], dtype=np.float64)
    label = "centralised" if central else f"FedAvg {args.groups} groups"
    print(f"# LightGCN {label}: {vars(args)}", flush=True)
    rounds: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        if central:
            loss = local_train(models[0], datas[0], args, opt0, rngs[0], 1)
        else:
            acc = {k: np.zeros_like(v, dtype=np.float64) for k, v in global_arrays.items()}
            losses = []
            for model, data, rng, w in zip(models, datas, rngs, weights, strict=True):
                load_arrays(model, global_arrays, private=False)
                opt = torch.optim.Adam(
                    model.parameters(), lr=args.lr, weight_decay=args.weight_decay
                )
                losses.append(local_train(model, data, args, opt, rng, args.local_epochs))
                for k, v in shared_arrays(model).items():
                    acc[k] += w * v
            global_arrays = {k: (v / weights.sum()).astype(np.float32) for k, v in acc.items()}
            for model in models:
                load_arrays(model, global_arrays, private=False)
            loss = float(np.average(losses, weights=weights))
        train_s = time.perf_counter() - t0
        metrics = evaluate(models, datas)
        entry = {"epoch": epoch, "loss": loss, "train-seconds": train_s, **metrics}
        rounds.append(entry)
        print(
            f"epoch {epoch:3d} loss {loss:.4f} val HR@10 {metrics['val']['hr@10']:.4f} "
            f"NDCG@10 {metrics['val']['ndcg@10']:.4f} | test HR@10 {metrics['test']['hr@10']:.4f} "
            f"NDCG@10 {metrics['test']['ndcg@10']:.4f} ({train_s:.1f}s train)",
            flush=True,
        )
        if best is None or metrics["val"]["hr@10"] > best["val"]["hr@10"]:
            best = entry  # earliest on ties
        elif args.patience and epoch - best["epoch"] >= args.patience:
            break
    assert best is not None
    per_epoch = float(np.mean([r["train-seconds"] for r in rounds]))
    print(
        f"selected epoch {best['epoch']} (val HR@10 {best['val']['hr@10']:.4f} NDCG@10 "
        f"{best['val']['ndcg@10']:.4f}): test HR@10 {best['test']['hr@10']:.4f} NDCG@10 "
        f"{best['test']['ndcg@10']:.4f}; {per_epoch:.2f} s/epoch training ({label})",
        flush=True,
    )
    result = {
        "args": vars(args),
        "selected": best,
        "seconds-per-epoch": per_epoch,
        "rounds": rounds,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
