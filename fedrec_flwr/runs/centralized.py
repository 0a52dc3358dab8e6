"""Centralised baseline: the same model, split, negatives and metrics, no FL.

Run ``python -m fedrec_flwr.runs.centralized --help``. Flags mirror the run-config
keys (``--model neumf --num-server-rounds 20`` trains 20 epochs); the output is
the same ``results.json`` shape as a federated run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import LEAKY_POOL_WARNING, ConfigError, RunConfig
from ..datasets import prepare_data
from ..models import build_model
from ..protocol import TEST_PART, VAL_PART
from ..threads import apply_num_threads
from ..train.evaluate import evaluate_ranking
from ..train.group import train_epochs
from ..train.metrics import finalize_sums
from .results import (
    check_run_paths,
    round_entry,
    select_by_validation,
    summary_line,
    with_negative_pool,
    write_run,
)

__all__ = ["main", "run_centralized"]


def run_centralized(cfg: RunConfig, *, log: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train on every user's training interactions; evaluate after each epoch.

    Every path is checked first (:func:`~fedrec_flwr.runs.results.check_run_paths`),
    so a bad ``output-dir`` fails before training, not after the last epoch.
    ``num-threads`` is applied here (``torch.set_num_threads``, process-wide).

    Returns
    -------
    tuple
        Path of ``results.json`` and the validation-selected entry.

    Raises
    ------
    ValueError
        A path key is bad (one line naming it), or the data cannot be prepared.
    """
    paths = check_run_paths(
        cfg, f"centralized-{cfg.model}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if paths.data_dir is not None and str(paths.data_dir) != cfg.data_dir:
        cfg = dataclasses.replace(cfg, data_dir=str(paths.data_dir))  # ~ and $VARS expanded
    num_threads = apply_num_threads(cfg.num_threads)
    prepared = prepare_data(cfg.data_options())
    data = prepared.client_data()  # everybody in one group
    model = build_model(
        cfg.model,
        data.num_users,
        data.num_items,
        factors=cfg.factors,
        mlp_layers=cfg.mlp_layers,
        seed=cfg.seed,
    )
    rng = np.random.default_rng([cfg.seed, 0xCE47])
    # One optimizer for the whole run: Adam's moments carry across epochs.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    exclude = data.negative_pool(cfg.negative_pool)
    if cfg.negative_pool != "train" and log:
        print(LEAKY_POOL_WARNING, file=sys.stderr)
    local = np.arange(data.num_users)
    rounds = []
    for epoch in range(1, cfg.num_server_rounds + 1):
        t0 = time.perf_counter()
        loss = train_epochs(
            model,
            data.train_users,
            data.train_items,
            exclude,
            epochs=1,
            batch_size=cfg.batch_size,
            optimizer=optimizer,
            num_negatives=cfg.num_negatives,
            rng=rng,
        )
        train_seconds = time.perf_counter() - t0
        val = evaluate_ranking(model, local, data.val_items, data.eval_negatives, cfg.ks)
        test = evaluate_ranking(model, local, data.test_items, data.eval_negatives, cfg.ks)
        entry = round_entry(
            epoch,
            train_loss=loss,
            val=finalize_sums(val.sums, val.num_users),
            test=finalize_sums(test.sums, test.num_users),
            val_loss=val.loss,
            wall_seconds=time.perf_counter() - t0,
            train_seconds=train_seconds,
        )
        rounds.append(entry)
        if log:
            print(
                f"epoch {epoch:3d} loss {loss:.4f} val HR@10 {entry[VAL_PART]['hr@10']:.4f} "
                f"NDCG@10 {entry[VAL_PART]['ndcg@10']:.4f} | test HR@10 "
                f"{entry[TEST_PART]['hr@10']:.4f} NDCG@10 {entry[TEST_PART]['ndcg@10']:.4f} "
                f"({entry['wall-seconds']:.1f}s)",
                flush=True,
            )
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    path = write_run(
        paths.output_dir,
        mode="centralized",
        config=cfg.to_dict(),
        protocol=with_negative_pool(prepared.protocol(), cfg.negative_pool),
        dataset=prepared.stats(),
        rounds=rounds,
        model_state=state,
        extra={"num-threads": num_threads},
    )
    selected = select_by_validation(rounds)
    assert selected is not None  # every epoch is evaluated
    return path, selected


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedrec_flwr.runs.centralized",
        description="Centralised NCF baseline on the federated protocol. "
        "Flags are the run-config keys; --num-server-rounds is the number of epochs.",
    )
    for f in dataclasses.fields(RunConfig):
        key = f.name.replace("_", "-")
        default = f.default
        if isinstance(default, tuple):
            parser.add_argument(f"--{key}", type=str, default=",".join(map(str, default)))
        else:
            parser.add_argument(f"--{key}", type=type(default), default=default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    try:
        cfg = RunConfig.from_mapping({k.replace("_", "-"): v for k, v in args.items()})
        path, selected = run_centralized(cfg)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        # torch's allocator message names no key; these are the ones that size memory.
        print(
            "error: out of memory building or training the model; lower factors, "
            "mlp-layers, batch-size or num-negatives",
            file=sys.stderr,
        )
        return 2
    print(summary_line(path, selected))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
