"""Results files shared by federated and centralised runs.

Both write the same ``results.json`` shape (config, protocol, dataset, one entry
per round or epoch, and the validation-selected round), a ``model.pt`` and a
``metrics.png``, so their numbers can be compared line by line.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from ..paths import (
    HOME_ENV_VAR,
    check_input_path,
    check_output_dir,
    replace_symlink,
    resolve_user_path,
    runs_home,
)
from ..protocol import ITEM_CATALOGUE_KEY, TEST_PART, TRAIN_LOSS_KEY, VAL_PART
from ..threads import CLIENT_DEFAULT_THREADS, resolve_num_threads

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "RATING_SELECTION_METRIC",
    "SELECTION_METRIC",
    "RunPaths",
    "check_run_paths",
    "plot_metrics",
    "resolve_output_dir",
    "round_entry",
    "select_by_validation",
    "summary_line",
    "with_negative_pool",
    "write_run",
]

SELECTION_METRIC = "hr@10"
#: The rating task's selection metric (lowest wins).
RATING_SELECTION_METRIC = "rmse"


def resolve_output_dir(output_dir: str, run_name: str) -> Path:
    """``output-dir`` if given (must be absolute), else ``runs_home()/run_name``.

    The folder must exist and be writable or be creatable (see
    :func:`~fedrec_flwr.paths.check_output_dir`), so a bad ``output-dir`` fails
    here, before training, and not when the results are written.

    Raises
    ------
    ValueError
        One line naming ``output-dir`` and the fix.
    """
    if output_dir:
        path = resolve_user_path(output_dir, key="output-dir")
        return check_output_dir(path, label=f"output-dir={output_dir!r}")
    path = runs_home() / run_name
    return check_output_dir(
        path, label=f"output-dir='' (default {path}; set output-dir or ${HOME_ENV_VAR})"
    )


@dataclass(frozen=True)
class RunPaths:
    """Every path of a run, absolute and checked (None = key empty or not read)."""

    output_dir: Path
    data_dir: Path | None
    item_catalogue: Path | None
    node_weight_caps: Path | None


def check_run_paths(cfg: RunConfig, run_name: str, *, reads_data: bool = True) -> RunPaths:
    """Check every path key of ``cfg`` before any work is done.

    ``output-dir`` must be a writable folder or creatable; ``data-dir`` (when
    set and read by this process), ``item-catalogue`` and ``node-weight-caps``
    (when set) must be absolute and exist, as folder or file as the key needs.

    Parameters
    ----------
    cfg : RunConfig
        The run's configuration.
    run_name : str
        Folder name under the runs directory when ``output-dir`` is empty.
    reads_data : bool (default: True)
        Whether this process reads ``data-dir``. The centralised baseline does;
        a ServerApp with ``item-catalogue`` set does not (``data-dir`` then
        names files on the SuperNodes), so it passes ``not cfg.item_catalogue``.

    Returns
    -------
    RunPaths
        The resolved paths (``~`` and ``$VARS`` expanded).

    Raises
    ------
    ValueError
        One line naming the first bad key and the fix.
    """
    from ..datasets.options import MOVIELENS

    data_dir = None
    dataset = cfg.data.dataset
    if cfg.data.data_dir and reads_data:
        if dataset in MOVIELENS:
            kind = "directory"
            what = f"the folder holding the {dataset} files, or '' to download them"
        elif dataset == "atomic":
            kind, what = "file or directory", "the RecBole .inter file or its folder"
        else:
            kind, what = "file", "the CSV/TSV/Parquet interaction log"
        data_dir = check_input_path(cfg.data.data_dir, key="data-dir", kind=kind, what=what)
    item_catalogue = None
    if cfg.item_catalogue:
        item_catalogue = check_input_path(
            cfg.item_catalogue,
            key=ITEM_CATALOGUE_KEY,
            kind="file",
            what="the item catalogue (write it with `fedrec data catalogue`)",
        )
    caps = None
    if cfg.strategy.node_weight_caps:
        caps = check_input_path(
            cfg.strategy.node_weight_caps,
            key="node-weight-caps",
            kind="file",
            what="the TOML file of per-node weight caps",
        )
    return RunPaths(
        output_dir=resolve_output_dir(cfg.output_dir, run_name),
        data_dir=data_dir,
        item_catalogue=item_catalogue,
        node_weight_caps=caps,
    )


def round_entry(
    round_: int,
    *,
    train_loss: float | None,
    val: Mapping[str, float],
    test: Mapping[str, float],
    val_loss: float | None,
    wall_seconds: float,
    bytes_sent: int = 0,
    bytes_received: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One ``rounds`` entry of ``results.json``, the same shape for every mode.

    Parameters
    ----------
    round_ : int
        Federated round, or epoch of the centralised baseline (from 1).
    train_loss : float or None
        Mean training BCE of the round (None if no training reply arrived);
        the rating task's: MSE.
    val, test : mapping of str to float
        Global metrics (``hr@10``, ``ndcg@10`` ...; the rating task's ``rmse``
        and ``mae``) on the validation and test items.
    val_loss : float or None
        Mean validation BCE over all candidates (the rating task: the
        validation MSE).
    wall_seconds : float
        Wall-clock time of the round.
    bytes_sent, bytes_received : int (default: 0)
        Payload bytes to and from clients (0 for the centralised baseline).
    **extra
        Mode-specific fields, kebab-cased (``client_train_seconds`` ->
        ``client-train-seconds``), after the common ones.
    """
    entry: dict[str, Any] = {
        "round": round_,
        TRAIN_LOSS_KEY: train_loss,
        VAL_PART: dict(val),
        TEST_PART: dict(test),
        "val-loss": val_loss,
        "wall-seconds": wall_seconds,
        "bytes-sent": bytes_sent,
        "bytes-received": bytes_received,
    }
    entry.update({name.replace("_", "-"): value for name, value in extra.items()})
    return entry


def summary_line(results_path: Path, selected: Mapping[str, Any] | None) -> str:
    """The one line every run ends with: where results went, the selected round."""
    where = f"results in {results_path.parent}"
    if not selected:
        return f"fedrec-flwr: {where}; no round was evaluated"
    val, test = selected[VAL_PART], selected[TEST_PART]
    if RATING_SELECTION_METRIC in val:
        return (
            f"fedrec-flwr: {where}; selected round {selected['round']} by {selected['by']}: "
            f"val RMSE {val['rmse']:.4f} MAE {val.get('mae', float('nan')):.4f}, test RMSE "
            f"{test.get('rmse', float('nan')):.4f} MAE {test.get('mae', float('nan')):.4f}"
        )
    return (
        f"fedrec-flwr: {where}; selected round {selected['round']} by {selected['by']}: "
        f"val HR@10 {val.get('hr@10', float('nan')):.4f} NDCG@10 "
        f"{val.get('ndcg@10', float('nan')):.4f}, test HR@10 "
        f"{test.get('hr@10', float('nan')):.4f} NDCG@10 {test.get('ndcg@10', float('nan')):.4f}"
    )


def select_by_validation(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The round with the best validation HR@10 (the rating task: the lowest
    validation RMSE), the earliest on ties.

    Test metrics are reported at that round only; they play no part in the choice.
    """
    scored = [r for r in rounds if r.get(VAL_PART)]
    if not scored:
        return None
    metric = SELECTION_METRIC
    if all(RATING_SELECTION_METRIC in r[VAL_PART] for r in scored):
        metric = RATING_SELECTION_METRIC
        # nan (no validation rating) never wins.
        best = min(
            scored,
            key=lambda r: (math.isnan(r[VAL_PART][metric]), r[VAL_PART][metric], r["round"]),
        )
    else:
        best = max(scored, key=lambda r: (r[VAL_PART][SELECTION_METRIC], -r["round"]))
    return {
        "round": best["round"],
        "by": f"{VAL_PART}-{metric}",
        VAL_PART: best[VAL_PART],
        TEST_PART: best[TEST_PART],
    }


def with_negative_pool(protocol: Mapping[str, Any], pool: str) -> dict[str, Any]:
    """``protocol`` plus which training-negative pool was used; the leaky one is
    flagged in the record itself, so no number from it passes as honest."""
    from ..config import LEAKY_POOL_WARNING

    if protocol.get("task") == "rating":  # no negatives are drawn
        return dict(protocol)
    out = {**protocol, "negative-pool": pool}
    if pool != "train":
        out["train-negatives"] = f"LEAKY: {LEAKY_POOL_WARNING}"
    return out


def plot_metrics(rounds: Sequence[Mapping[str, Any]], path: Path, *, xlabel: str) -> None:
    """Draw HR@10 and NDCG@10 (validation and test) per round into ``path``;
    the full-ranking values too (dotted) when the rounds hold them. Rating
    rounds: RMSE and MAE."""
    import matplotlib

    matplotlib.use("Agg")  # headless; selected here, not at import time
    import matplotlib.pyplot as plt

    scored = [r for r in rounds if r.get(VAL_PART)]
    x = [r["round"] for r in scored]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    rating = bool(scored) and all(RATING_SELECTION_METRIC in r[VAL_PART] for r in scored)
    metrics = ("rmse", "mae") if rating else ("hr@10", "ndcg@10")
    for ax, metric in zip(axes, metrics, strict=True):
        for part, style in ((VAL_PART, "--"), (TEST_PART, "-")):
            ax.plot(
                x,
                [r[part][metric] for r in scored],
                style,
                marker="o",
                markersize=3,
                label=part if rating else f"{part} (sampled)",
            )
        full = f"full-{metric}"
        for part, style in ((VAL_PART, ":"), (TEST_PART, "-.")):
            if all(full in r[part] for r in scored):
                ax.plot(x, [r[part][full] for r in scored], style, label=f"{part} (full ranking)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run(
    out_dir: Path,
    *,
    mode: str,
    config: Mapping[str, Any],
    protocol: Mapping[str, Any],
    dataset: Mapping[str, Any],
    rounds: Sequence[Mapping[str, Any]],
    model_state: Mapping[str, np.ndarray],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``results.json``, ``model.pt`` and ``metrics.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if missing. Its parent gets a ``latest`` link to it when the
        parent is the default runs directory.
    mode : str
        ``"federated"`` or ``"centralized"``.
    config, protocol, dataset : mapping
        Recorded verbatim.
    rounds : sequence of mapping
        One entry per round (epoch): ``round``, ``train-loss``, ``val``,
        ``test``, ``wall-seconds``, ``bytes-sent``, ``bytes-received``.
    model_state : mapping of str to numpy.ndarray
        Final model parameters by name (federated: shared parameters only).
    extra : mapping, optional
        More top-level fields. Without ``num-threads`` in it, the torch thread
        count is recorded from ``config``'s ``num-threads``: a federated run's
        per-client count (resolved as each client resolves it), a centralised
        run's the one this process runs with.

    Returns
    -------
    pathlib.Path
        Path of ``results.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = dict(extra or {})
    if "num-threads" not in extras:
        requested = int(config.get("num-threads", 0))
        extras["num-threads"] = (
            resolve_num_threads(requested, default=CLIENT_DEFAULT_THREADS)
            if mode == "federated"
            else torch.get_num_threads()
        )
    results: dict[str, Any] = {
        "fedrec-flwr": __version__,
        "mode": mode,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": dict(config),
        "protocol": dict(protocol),
        "dataset": dict(dataset),
        **extras,
        "rounds": list(rounds),
        "selected": select_by_validation(rounds),
        "final": dict(rounds[-1]) if rounds else None,
    }
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    torch.save(
        {
            "config": dict(config),
            "state_dict": {k: torch.from_numpy(np.array(v)) for k, v in model_state.items()},
        },
        out_dir / "model.pt",
    )
    plot_metrics(
        rounds,
        out_dir / "metrics.png",
        xlabel="round" if mode == "federated" else "epoch",
    )
    if out_dir.parent == runs_home():
        replace_symlink(out_dir.parent / "latest", out_dir.name)
    return results_path
