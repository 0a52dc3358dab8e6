"""Flower ServerApp: read the run config once, run :func:`run_federated`."""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from ..config import RunConfig
from ..privacy.secagg import run_secagg
from ..runs.federated import run_federated
from ..runs.results import resolve_output_dir

__all__ = ["app", "main"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config once, train, and write results."""
    try:
        cfg = RunConfig.from_mapping(context.run_config)
        out_dir = resolve_output_dir(cfg.output_dir, f"run-{context.run_id}")
        # SecAgg+ exists only on Flower's legacy path: its own server loop.
        secure = cfg.privacy.secure_aggregation == "secaggplus"
        (run_secagg if secure else run_federated)(grid, cfg, out_dir, run_id=context.run_id)
    except (ValueError, OSError, RuntimeError) as exc:
        # One readable line before Flower's traceback (bad config, data, clients).
        log(ERROR, "fedrec-flwr: %s", exc)
        raise
