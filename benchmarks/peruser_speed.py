"""Per-user training speed: the generic torch.func trainer vs the NCF-only one it replaced.

One round of per-user training (``client-mode=per-user``, ``local-epochs=1``)
on ML-100K's users cut into ``--groups`` groups, single-threaded, for the old
hand-written implementation (``fedrec_flwr/train/peruser.py`` at ``--old-rev``,
loaded from git into a temporary module) and the current one, in the same run
and on the same inputs. Prints seconds per round for each, their ratio and the
largest absolute difference between the two results' shared arrays.

    python benchmarks/peruser_speed.py                 # one group (~94 users)
    python benchmarks/peruser_speed.py --all-groups    # all 943 users
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import _bench

# The last commit with the NCF-specific trainer (its own forward and Adam).
OLD_REV = "6d1980a"


def _old_module(rev: str) -> ModuleType:
    """``fedrec_flwr/train/peruser.py`` at ``rev``, importable as a sibling module
    (its relative imports resolve inside the current package)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:fedrec_flwr/train/peruser.py"],
        cwd=_bench.REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "peruser_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fedrec_flwr.train._peruser_old", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _best_seconds(repeats: int, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls ``fn(*args, **kwargs)``, and its result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print one line per group and the totals.

    Parameters
    ----------
    argv : list of str, optional (default: None)
        Command-line arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    int
        0 when the two results agree to 1e-5, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--all-groups", action="store_true", help="time every group, not one")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--chunk-users", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--data-dir", default=_bench.default_data_dir())
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.datasets.prepare import prepare_data
    from fedrec_flwr.models import build_model, private_arrays, shared_arrays
    from fedrec_flwr.train import peruser as new

    torch.set_num_threads(1)  # as each client
    old = _old_module(args.old_rev)
    cfg = RunConfig.from_mapping({"data-dir": args.data_dir, "seed": args.seed})
    m, train, seed = cfg.model, cfg.training, cfg.data.seed
    prepared = prepare_data(cfg.data)
    groups = range(args.groups) if args.all_groups else range(1)
    totals = {"old": 0.0, "new": 0.0}
    worst = 0.0
    print(
        f"model={m.model} factors={m.factors} mlp-layers={m.mlp_layers} "
        f"batch-size={train.batch_size} negatives={train.num_negatives} local-epochs=1 "
        f"chunk-users={args.chunk_users}"
    )
    for g in groups:
        data = prepared.client_data(g, args.groups)
        model = build_model(
            m.model,
            data.num_users,
            data.num_items,
            factors=m.factors,
            mlp_layers=m.mlp_layers,
            seed=seed,
        )
        model.reset_private(g)
        exclude = data.negative_pool(train.negative_pool)
        seeds = [int(code) for code in data.users]
        local = {
            "epochs": 1,
            "batch_size": train.batch_size,
            "learning_rate": train.learning_rate,
            "num_negatives": train.num_negatives,
            "weight_decay": train.weight_decay,
            "chunk_users": args.chunk_users,
        }
        inputs = (data.train_users, data.train_items, exclude, seeds)
        shared, private = shared_arrays(model), private_arrays(model)
        t_old, a = _best_seconds(
            args.repeats, old.train_users_independently, shared, private, *inputs, **local
        )
        t_new, b = _best_seconds(
            args.repeats, new.train_users_independently, model, *inputs, **local
        )
        diff = max(float(np.abs(a.shared[k] - b.shared[k]).max()) for k in a.shared)
        diff = max(diff, *(float(np.abs(a.private[k] - b.private[k]).max()) for k in a.private))
        worst = max(worst, diff)
        totals["old"] += t_old
        totals["new"] += t_new
        print(
            f"group {g}: {data.num_users} users, old {t_old:.3f} s, new {t_new:.3f} s, "
            f"new/old {t_new / t_old:.2f}, max |diff| {diff:.2e}"
        )
    print(
        f"round ({len(groups)} of {args.groups} groups): old {totals['old']:.3f} s, "
        f"new {totals['new']:.3f} s, new/old {totals['new'] / totals['old']:.2f}, "
        f"max |diff| {worst:.2e}"
    )
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
