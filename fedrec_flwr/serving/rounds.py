"""The round loop of :meth:`flwr.serverapp.strategy.Strategy.start`, resumable.

Flower 1.42's ``Strategy.start`` always runs rounds ``1..num_rounds`` and
offers no hook between rounds. :func:`run_rounds` makes the same calls in the
same order (``configure_train``, ``send_and_receive``, ``aggregate_train``,
then the same for evaluation), so a run is bit-identical to ``start``'s, but
it can begin at any round, calls ``on_round`` after each round (checkpoints)
and lets ``on_round`` change the next round's configs (the nodes' keep-rounds).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

__all__ = ["run_rounds"]


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    num_rounds: int,
    first_round: int = 1,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    on_round: Callable[[int, ArrayRecord, Result], None] | None = None,
    timeout: float = 3600,
) -> Result:
    """Run rounds ``first_round..num_rounds`` from ``arrays``.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Configures and aggregates each round (its state restored by the
        caller when resuming).
    grid : flwr.serverapp.Grid
        Where messages go.
    arrays : flwr.app.ArrayRecord
        The global arrays before ``first_round``.
    num_rounds : int
        The last round.
    first_round : int (default: 1)
        The first round to run (a resumed run: the checkpoint's round + 1).
    train_config, evaluate_config : ConfigRecord, optional (default: empty)
        Sent with every round's messages (``on_round`` may update them).
    on_round : callable, optional (default: None)
        ``on_round(server_round, arrays, result)`` after each round's evaluation.
    timeout : float (default: 3600)
        Seconds to wait for a round's replies (``Strategy.start``'s default).

    Returns
    -------
    flwr.serverapp.strategy.Result
        This call's rounds only: final arrays, aggregated metrics per round.
    """
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    result = Result()
    result.arrays = arrays
    for rnd in range(first_round, num_rounds + 1):
        log(INFO, "[ROUND %s/%s]", rnd, num_rounds)
        replies = grid.send_and_receive(
            messages=strategy.configure_train(rnd, arrays, train_config, grid), timeout=timeout
        )
        aggregated, train_metrics = strategy.aggregate_train(rnd, replies)
        if aggregated is not None:
            result.arrays = arrays = aggregated
        if train_metrics is not None:
            result.train_metrics_clientapp[rnd] = train_metrics
        replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(rnd, arrays, evaluate_config, grid),
            timeout=timeout,
        )
        evaluate_metrics = strategy.aggregate_evaluate(rnd, replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[rnd] = evaluate_metrics
        if on_round is not None:
            on_round(rnd, arrays, result)
    return result
