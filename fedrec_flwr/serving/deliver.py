"""A node's side of delivery: the delivered model's top-k for every user, on disk.

After the last round the server sends every node the delivered shared arrays
(``query.deliver``); the node pairs them with its own users' rows of the
delivered round (the store mod loads them) and writes into its folder
(:func:`~fedrec_flwr.serving.store.node_folder`):

- ``recommendations.parquet`` and ``recommendations.csv``: ``user``, ``rank``
  (1 = best), ``item``, ``score`` (the model's logit), raw ids;
- ``model.npz``: the delivered shared arrays;
- ``node.json``: the run config, this node's config and the delivered round,
  which is all ``fedrec recommend`` needs besides the store and the node's log.

Nothing of it is sent back but the number of users served.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..paths import staged, write_npz

__all__ = ["MODEL_FILE", "NODE_FILE", "RECOMMENDATIONS", "recommendations_frame", "write_delivery"]

MODEL_FILE = "model.npz"
NODE_FILE = "node.json"
#: The recommendation files, one per format.
RECOMMENDATIONS = ("recommendations.parquet", "recommendations.csv")


def recommendations_frame(
    user_ids: np.ndarray, item_ids: np.ndarray, items: np.ndarray, scores: np.ndarray
) -> pd.DataFrame:
    """One row per (user, rank): raw user id, rank from 1, raw item id, score.

    Slots :func:`~fedrec_flwr.serving.scoring.top_k` left empty (item -1: the
    user has fewer eligible items than k) are not written.
    """
    n, k = items.shape
    flat = items.reshape(-1)
    keep = flat >= 0
    return pd.DataFrame(
        {
            "user": np.repeat(np.asarray(user_ids, dtype=np.str_), k)[keep],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), n)[keep],
            "item": np.asarray(item_ids, dtype=np.str_)[flat[keep]],
            "score": scores.reshape(-1)[keep].astype(np.float32),
        }
    )


def _write_atomically(path: Path, write: Any) -> None:
    with staged(path) as tmp:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


def write_delivery(
    folder: Path,
    frame: pd.DataFrame,
    shared: Mapping[str, np.ndarray],
    node: Mapping[str, Any],
) -> list[Path]:
    """Write the recommendations, the delivered model and ``node.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    parquet, csv = (folder / name for name in RECOMMENDATIONS)
    _write_atomically(parquet, lambda p: frame.to_parquet(p, index=False))
    _write_atomically(csv, lambda p: frame.to_csv(p, index=False))

    write_npz(folder / MODEL_FILE, {k: np.asarray(v) for k, v in shared.items()})
    text = json.dumps(dict(node), indent=1) + "\n"
    _write_atomically(folder / NODE_FILE, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return [parquet, csv, folder / MODEL_FILE, folder / NODE_FILE]
