"""Centralised baseline: the same model, split, negatives and metrics, no FL
(for ``task='rating'``: the same MSE training and RMSE/MAE evaluation).

Run ``python -m fedrec_flwr.runs.centralized --help``. Flags are the run-config
keys that apply without a federation (:func:`centralized_fields`; ``--model neumf
--num-server-rounds 20`` trains 20 epochs); the output is the same
``results.json`` shape as a federated run.
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
from ..progress import progress
from ..protocol import TEST_PART, VAL_PART
from ..settings import add_flags, key_of, setting
from ..threads import apply_num_threads
from ..train.evaluate import evaluate_val_test
from ..train.group import train_epochs, train_rating_epochs
from ..train.metrics import RMSE, finalize_metrics
from .results import (
    check_run_paths,
    round_entry,
    select_by_validation,
    summary_line,
    with_negative_pool,
    write_run,
)

__all__ = ["centralized_fields", "main", "run_centralized"]


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
    seed = cfg.data.seed
    paths = check_run_paths(
        cfg, f"centralized-{cfg.model.model}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if paths.data_dir is not None and str(paths.data_dir) != cfg.data.data_dir:
        # ~ and $VARS expanded
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, data_dir=str(paths.data_dir))
        )
    train = cfg.training
    num_threads = apply_num_threads(train.num_threads)
    prepared = prepare_data(cfg.data)
    data = prepared.client_data()  # everybody in one group
    model = cfg.model.build(data.num_users, data.num_items, seed=seed)
    model.bind(data.context())
    rng = np.random.default_rng([seed, 0xCE47])
    # One optimizer for the whole run: Adam's moments carry across epochs.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay
    )
    exclude = data.negative_pool(train.negative_pool)
    if train.negative_pool != "train" and log:
        print(LEAKY_POOL_WARNING, file=sys.stderr)
    rounds = []
    epochs = range(1, cfg.num_server_rounds + 1)
    # A bar on a terminal, plain lines in a log (the per-epoch lines go to stdout).
    for epoch in progress(epochs, "training epochs", unit="epochs") if log else epochs:
        t0 = time.perf_counter()
        if data.ratings is not None:
            loss = train_rating_epochs(
                model,
                data.train_users,
                data.train_items,
                data.ratings.train_ratings,
                offset=data.ratings.mean,
                epochs=1,
                batch_size=train.batch_size,
                optimizer=optimizer,
                rng=rng,
                embedding_l2=train.embedding_l2,
            )
        else:
            loss = train_epochs(
                model,
                data.train_users,
                data.train_items,
                exclude,
                epochs=1,
                batch_size=train.batch_size,
                optimizer=optimizer,
                num_negatives=train.num_negatives,
                rng=rng,
                embedding_l2=train.embedding_l2,
            )
        train_seconds = time.perf_counter() - t0
        val, test = evaluate_val_test(model, data, train.ks, full=train.full_ranking)
        entry = round_entry(
            epoch,
            train_loss=loss,
            val=finalize_metrics(val.sums, val.num_users),
            test=finalize_metrics(test.sums, test.num_users),
            val_loss=val.loss,
            wall_seconds=time.perf_counter() - t0,
            train_seconds=train_seconds,
        )
        rounds.append(entry)
        if log and RMSE in entry[VAL_PART]:
            print(
                f"epoch {epoch:3d} loss {loss:.4f} val RMSE {entry[VAL_PART]['rmse']:.4f} "
                f"MAE {entry[VAL_PART]['mae']:.4f} | test RMSE {entry[TEST_PART]['rmse']:.4f} "
                f"MAE {entry[TEST_PART]['mae']:.4f} ({entry['wall-seconds']:.1f}s)",
                flush=True,
            )
        elif log:
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
        protocol={
            **with_negative_pool(prepared.protocol(), train.negative_pool),
            **model.protocol(),
        },
        dataset=prepared.stats(),
        rounds=rounds,
        model_state=state,
        extra={"num-threads": num_threads},
    )
    selected = select_by_validation(rounds)
    assert selected is not None  # every epoch is evaluated
    return path, selected


def centralized_fields() -> list[dataclasses.Field[Any]]:
    """The run-config keys that mean something without a federation, in table order.

    Those whose :class:`~fedrec_flwr.settings.Setting` says ``centralized``: the
    data keys but the partitioner's, the model, the training keys but local
    epochs, client mode and personalisation, ``num-server-rounds`` (epochs),
    ``output-dir`` and ``num-threads``. No strategy key applies.
    """
    return [f for _, f in RunConfig.settings() if setting(f).centralized]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedrec_flwr.runs.centralized",
        description="Centralised NCF baseline on the federated protocol. "
        "Flags are the run-config keys that apply without a federation; "
        "--num-server-rounds is the number of epochs.",
    )
    return add_flags(parser, centralized_fields())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedrec-centralized``; returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional (default: None)
        Command-line arguments (None = ``sys.argv[1:]``).
    """
    args = vars(_parser().parse_args(argv))
    try:
        cfg = RunConfig.from_mapping({key_of(name): value for name, value in args.items()})
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
