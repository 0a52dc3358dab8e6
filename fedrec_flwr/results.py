"""Results files shared by federated and centralised runs.

Both write the same ``results.json`` shape (config, protocol, dataset, one entry
per round or epoch, and the validation-selected round), a ``model.pt`` and a
``metrics.png``, so their numbers can be compared line by line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .paths import resolve_user_path, runs_home

__all__ = [
    "SELECTION_METRIC",
    "plot_metrics",
    "resolve_output_dir",
    "select_by_validation",
    "with_negative_pool",
    "write_run",
]

SELECTION_METRIC = "hr@10"


def resolve_output_dir(output_dir: str, run_name: str) -> Path:
    """``output-dir`` if given (must be absolute), else ``runs_home()/run_name``."""
    if output_dir:
        return resolve_user_path(output_dir, key="output-dir")
    return runs_home() / run_name


def select_by_validation(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The round with the best validation HR@10 (earliest on ties).

    Test metrics are reported at that round only; they play no part in the choice.
    """
    scored = [r for r in rounds if r.get("val")]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r["val"][SELECTION_METRIC], -r["round"]))
    return {
        "round": best["round"],
        "by": f"val-{SELECTION_METRIC}",
        "val": best["val"],
        "test": best["test"],
    }


def with_negative_pool(protocol: Mapping[str, Any], pool: str) -> dict[str, Any]:
    """``protocol`` plus which training-negative pool was used; the leaky one is
    flagged in the record itself, so no number from it passes as honest."""
    from .config import LEAKY_POOL_WARNING

    out = {**protocol, "negative-pool": pool}
    if pool != "train":
        out["train-negatives"] = f"LEAKY: {LEAKY_POOL_WARNING}"
    return out


def plot_metrics(rounds: Sequence[Mapping[str, Any]], path: Path, *, xlabel: str) -> None:
    """Draw HR@10 and NDCG@10 (validation and test) per round into ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # headless; selected here, not at import time
    import matplotlib.pyplot as plt

    scored = [r for r in rounds if r.get("val")]
    x = [r["round"] for r in scored]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("hr@10", "ndcg@10"), strict=True):
        for part, style in (("val", "--"), ("test", "-")):
            ax.plot(
                x,
                [r[part][metric] for r in scored],
                style,
                marker="o",
                markersize=3,
                label=part,
            )
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
        More top-level fields.

    Returns
    -------
    pathlib.Path
        Path of ``results.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "fedrec-flwr": __version__,
        "mode": mode,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": dict(config),
        "protocol": dict(protocol),
        "dataset": dict(dataset),
        **dict(extra or {}),
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
        link = out_dir.parent / "latest"
        tmp = out_dir.parent / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(out_dir.name)
        tmp.replace(link)
    return results_path
