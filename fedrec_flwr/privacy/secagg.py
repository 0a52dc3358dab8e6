"""Secure aggregation (``secure-aggregation=secaggplus``): Flower's SecAgg+, made a run mode.

Flower 1.42 ships SecAgg+ only on its legacy path, so this mode runs the rounds
through ``LegacyContext`` + ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``
with a legacy strategy (:class:`SecAggFedAvg`) on the server, and the legacy
``ClientApp(client_fn=...)`` with ``mods=[secaggplus_mod, secagg_reply_mod]`` on the
nodes (:func:`secure_aggregation_mods`). No cryptography is written here: key
agreement, secret sharing, masking and unmasking are Flower's.

Weighting. Flower's SecAgg+ keeps FedAvg's ``num_examples`` weighting: each node
scales its arrays by ``r_k = round(n_k / M * Q) / Q`` (``M`` = ``max_weight``,
``Q`` = quantisation range) before quantising, and also sends ``r_k`` masked; the
server divides the unmasked sum by ``sum_k r_k``. We choose ``M`` as the smallest
power of two at or above the largest possible weight (:func:`max_weight_for`):
then ``n_k Q / M`` is an integer, ``r_k = n_k / M`` *exactly*, and the aggregate
is the exact weighted FedAvg ``sum_k n_k w_k / sum_k n_k`` up to quantisation
alone. ``n_k`` follows ``weight-key`` (:func:`secagg_reply_mod` sets it on the node).

The bound (:func:`quantization_bound`, from ``flwr.common.secure_aggregation.
quantization``): a node quantises ``x = r_k w_k`` (clipped to ``[-c, c]``) to
``(x + c) Q / (2c)`` by stochastic rounding, which moves it by less than one
step, so per element and node the error on ``x`` is below ``delta = 2c / Q``;
on the unmasked sum of ``N`` nodes below ``N delta``; on the weighted mean below
``N delta / sum_k r_k = N delta M / sum_k n_k`` (``<= 2 delta max_k n_k /
mean_k n_k`` since ``M < 2 max_k n_k``), plus float64 rounding. It holds while
every element satisfies ``|w_k| <= c`` (else it is clipped: the node logs a
warning) and ``N Q < 2**32`` (no wrap-around of the modular sum; checked before
any round). Defaults ``c=8``, ``Q=2**22``: ``delta = 3.8e-6``.

What the server sees in clear: each node's weight ``n_k`` and its fit metrics
(``train-loss``, partition id, users, compute seconds: ``secaggplus_mod`` only
empties the arrays), and every evaluation reply (evaluation is not securely
aggregated). The arrays reach it only as masked integer vectors and their sum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import (
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..config import RunConfig
from ..errors import ConfigError
from ..protocol import (
    ARRAYS_RECORD,
    DP_NOISE_SEED_KEY,
    LOSS_KEY,
    METRICS_RECORD,
    NUM_EXAMPLES_KEY,
    NUM_PARTITIONS_KEY,
    NUM_USERS_KEY,
    PARTITION_ID_KEY,
    SERVER_ROUND_KEY,
    TEST_PART,
)
from ..serving.checkpoint import restore_strategy_state, strategy_state
from ..strategies.aggregate import exact_metric_aggregation
from ..strategies.guard import sample_rank
from ..strategies.registry import build_bare_strategy

__all__ = [
    "MODULUS_RANGE",
    "SERVER_OPTIMISERS",
    "QuantizationBound",
    "SecAggFedAvg",
    "ServerStep",
    "max_weight_for",
    "mode_dispatch_mod",
    "quantization_bound",
    "run_secagg",
    "secagg_reply_mod",
    "secure_aggregation_mods",
    "seeded_rounding_mod",
]

#: Flower's default (and largest allowed) modulus of the masked sums.
MODULUS_RANGE = 2**32
#: strategies whose server step runs on the SecAgg+ mean (:class:`ServerStep`).
SERVER_OPTIMISERS = ("fedadam", "fedyogi", "fedavgm")
#: separates the rounding draws' seeds from every other draw's.
_ROUNDING = 0x5EC


# --- the bound -----------------------------------------------------------------


@dataclass(frozen=True)
class QuantizationBound:
    """SecAgg+'s error bounds, per element (see the module docstring).

    Attributes
    ----------
    per_node : float
        ``delta = 2c / Q``: error on one node's scaled element ``r_k w_k``.
    sum : float
        ``N delta``: error on the unmasked sum.
    mean : float
        ``N delta / sum_k r_k``: error of the aggregate against exact
        weighted FedAvg of the same replies.
    weights_exact : bool
        Whether ``r_k = n_k / M`` exactly (``M`` a power of two ``<= Q``); if
        not, ``mean`` includes the weight-quantisation term ``N c / (Q sum_k r_k)``.
    """

    per_node: float
    sum: float
    mean: float
    weights_exact: bool

    def to_dict(self) -> dict[str, Any]:
        """The bound as ``results.json`` records it."""
        return {
            "per-element-per-node": self.per_node,
            "per-element-sum": self.sum,
            "per-element-mean": self.mean,
            "weights-exact": self.weights_exact,
        }


def quantization_bound(
    weights: list[float],
    *,
    max_weight: float,
    clipping_range: float = 8.0,
    quantization_range: int = 2**22,
) -> QuantizationBound:
    """Bound SecAgg+'s per-element error against exact weighted FedAvg.

    Parameters
    ----------
    weights : list of float
        The weights ``n_k`` of the nodes whose masked vectors were summed.
    max_weight : float
        ``M`` given to ``SecAggPlusWorkflow``; every weight must be ``<= M``.
    clipping_range : float (default: 8.0)
        ``c``: elements are clipped to ``[-c, c]``.
    quantization_range : int (default: 2**22)
        ``Q``: quantisation levels over ``[-c, c]``.

    Raises
    ------
    ValueError
        If there is no weight, or one is not in ``(0, max_weight]``.
    """
    if not weights or any(not 0 < w <= max_weight for w in weights):
        raise ValueError(f"weights {weights!r}: need at least one, each in (0, {max_weight}]")
    q, c, n = quantization_range, clipping_range, len(weights)
    # The node's own rounding of its ratio, as secaggplus_mod does it.
    ratios = [round(w / max_weight * q) / q for w in weights]
    exact = all(r == w / max_weight for r, w in zip(ratios, weights, strict=True))
    delta = 2 * c / q
    total = math.fsum(ratios)
    mean = n * delta / total
    if not exact:
        # |r_k - n_k/M| <= 1/(2Q) moves the mean by at most 2 sum|.| c / sum r_k.
        mean += n * c / (q * total)
    return QuantizationBound(per_node=delta, sum=n * delta, mean=mean, weights_exact=exact)


def max_weight_for(largest: float, quantization_range: int) -> float:
    """``M``: the smallest power of two ``>= largest``, if ``<= Q`` (exact weights).

    With ``M = 2**j <= Q`` every integer weight ``n_k <= M`` gives an integer
    ``n_k Q / M``, so Flower's rounded ratio is exactly ``n_k / M``. Above ``Q``
    the weights are quantised too and ``largest`` itself is returned.

    Parameters
    ----------
    largest : float
        The largest weight a node can send (> 0, finite).
    quantization_range : int
        ``Q``.
    """
    if not (math.isfinite(largest) and largest > 0):
        raise ValueError(f"largest weight {largest!r}: must be finite and > 0")
    power = float(2 ** math.ceil(math.log2(largest)))
    return power if power <= quantization_range else float(largest)


# --- the node's side -------------------------------------------------------------


def secagg_reply_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Prepare a plain fit reply for ``secaggplus_mod`` (put it inside that mod).

    - The weight ``num_examples`` follows ``weight-key`` (``interactions``: the
      client's own; ``users``: its ``num-users``; ``uniform``: 1), as the
      Message-API strategies weigh it.
    - Arrays go on as float64, so Flower's scaling and quantisation run in
      float64 and the bound of :func:`quantization_bound` holds (in float32 the
      scaled values, up to ``Q = 2**22``, would be rounded to a quarter step).
    - Elements beyond the clipping range are logged: SecAgg+ clips them.

    Evaluate messages and SecAgg+'s key-exchange stages pass through.
    """
    reply = call_next(msg, ctxt)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    cfg = RunConfig.from_mapping(ctxt.run_config)
    key = cfg.strategy.weight_key
    if key == "users":
        fitres.num_examples = int(fitres.metrics[NUM_USERS_KEY])
    elif key == "uniform":
        fitres.num_examples = 1
    arrays = [np.asarray(a, dtype=np.float64) for a in parameters_to_ndarrays(fitres.parameters)]
    limit = cfg.privacy.secagg_clipping_range
    beyond = sum(int(np.count_nonzero(np.abs(a) > limit)) for a in arrays)
    if beyond:
        log(
            WARNING,
            "fedrec-flwr: %d shared values exceed secagg-clipping-range=%s and are clipped "
            "by SecAgg+ (the aggregate is then off by more than the stated bound)",
            beyond,
            limit,
        )
    fitres.parameters = ndarrays_to_parameters(arrays)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def seeded_rounding_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Make SecAgg+'s stochastic rounding reproducible (put it outside ``secaggplus_mod``).

    Flower quantises with ``np.random.rand``, NumPy's global generator, so two
    runs with one seed would round differently and end with different models.
    For each train message this mod seeds that generator from the node's noise
    seed (node-config ``dp-noise-seed``, else the run seed), its partition and
    the round, and puts the generator's previous state back afterwards. The
    rounding draws only decide which of two neighbouring integers each masked
    element becomes; they reveal nothing of the arrays, and the server still
    sees only the masked sum.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    cfg = RunConfig.from_mapping(ctxt.run_config)
    base = ctxt.node_config.get(DP_NOISE_SEED_KEY, cfg.data.seed)
    partition = ctxt.node_config.get(PARTITION_ID_KEY, 0)
    group = msg.metadata.group_id
    server_round = int(group) if group.isdigit() else 0
    entropy = [int(base), int(partition), server_round, _ROUNDING]
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(entropy).generate_state(4))
    try:
        return call_next(msg, ctxt)
    finally:
        np.random.set_state(saved)


def secure_aggregation_mods() -> list[Mod]:
    """The client mods of ``secure-aggregation=secaggplus``, outermost first.

    :func:`seeded_rounding_mod` outside ``secaggplus_mod`` (Flower's protocol)
    outside :func:`secagg_reply_mod`, so the reply is weighted and cast before
    it is quantised (with seeded rounding) and masked. A mod that clips or
    noises the update (node-level DP) belongs *inside* all of them.
    """
    from flwr.client.mod import secaggplus_mod

    return [seeded_rounding_mod, secaggplus_mod, secagg_reply_mod]


def mode_dispatch_mod(secure_app: ClientApp) -> Mod:
    """A mod that hands train/evaluate messages to ``secure_app`` in SecAgg+ runs.

    Put on the Message-API ClientApp the FAB names, it makes that one app serve
    both modes: with ``secure-aggregation=secaggplus`` in the run config the
    server speaks the legacy protocol (``fitins``/``evaluateins`` records and
    SecAgg+ stages), which ``secure_app`` (the legacy ``ClientApp`` with
    :func:`secure_aggregation_mods`) answers; anything else (every message of a
    plain run, and ``query`` messages) goes on to the Message-API handlers.

    Parameters
    ----------
    secure_app : flwr.clientapp.ClientApp
        The legacy ClientApp with the SecAgg+ mods.
    """

    def dispatch(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        kind = msg.metadata.message_type.split(".")[0]
        if kind in (MessageType.TRAIN, MessageType.EVALUATE):
            cfg = RunConfig.from_mapping(ctxt.run_config)
            if cfg.privacy.secure_aggregation == "secaggplus":
                return secure_app(msg, ctxt)
        return call_next(msg, ctxt)

    return dispatch


# --- the server's side -----------------------------------------------------------


def _records(weight: int, metrics: Mapping[str, Scalar], **extra: float) -> RecordDict:
    """A legacy result as the RecordDict :func:`exact_metric_aggregation` reads."""
    values = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return RecordDict(
        {METRICS_RECORD: MetricRecord({**values, **extra, NUM_EXAMPLES_KEY: int(weight)})}
    )


def _scalars(record: MetricRecord) -> dict[str, Scalar]:
    """The scalar entries of an aggregated MetricRecord (legacy metrics are scalars)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


class ServerStep:
    """A Message-API strategy's server step, applied to the securely aggregated mean.

    FedAdam, FedYogi and FedAvgM take FedAvg's weighted mean of the replies and
    move the global model from it with their own state (moments, momentum).
    Under SecAgg+ the server holds only that mean, so this hands it to the
    strategy as the one reply of a round, of weight 1 (its weighted mean is
    then the mean itself, exactly), after the strategy's own
    ``configure_train`` has seen the global arrays: the strategy's code and
    state are Flower's, unchanged. Its output is FedAdam (etc.) of the SecAgg+
    mean; an adaptive step divides by the update's own size, so where an
    update is below SecAgg+'s quantisation step the rounding shows in the step.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.FedAvg
        The Message-API strategy (``build_bare_strategy``).
    names : list of str
        The shared arrays' names, in the clients' order.
    grid : flwr.serverapp.Grid
        The run's grid (``configure_train`` samples from its nodes; nothing is sent).
    """

    def __init__(self, strategy: FedAvg, names: list[str], grid: Grid) -> None:
        self.strategy = strategy
        self.names = names
        self.grid = grid

    def __call__(
        self, server_round: int, current: list[np.ndarray], mean: list[np.ndarray]
    ) -> list[np.ndarray]:
        """The new global arrays from this round's global ``current`` and SecAgg+ ``mean``."""
        sent = list(
            self.strategy.configure_train(
                server_round, self._record(current), ConfigRecord(), self.grid
            )
        )
        if not sent:
            raise RuntimeError(f"round {server_round}: {self.strategy!r} configured no node")
        metrics = MetricRecord({self.strategy.weighted_by_key: 1})
        content = RecordDict({ARRAYS_RECORD: self._record(mean), METRICS_RECORD: metrics})
        out, _ = self.strategy.aggregate_train(server_round, [Message(content, reply_to=sent[0])])
        if out is None:
            raise RuntimeError(f"round {server_round}: {self.strategy!r} aggregated nothing")
        return [out[n].numpy() for n in self.names]

    def _record(self, arrays: list[np.ndarray]) -> ArrayRecord:
        return ArrayRecord({n: Array(a) for n, a in zip(self.names, arrays, strict=True)})


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg for ``SecAggPlusWorkflow``: takes its weighted mean as is.

    ``SecAggPlusWorkflow`` hands ``aggregate_fit`` every node's ``FitRes`` with
    ``parameters`` replaced by the unmasked weighted mean (one object shared by
    all). Legacy FedAvg would average these identical arrays again (harmless
    but not bit-exact); this strategy takes the mean itself and casts it back
    to the model's dtypes (SecAgg+ returns float64). Metrics are aggregated by
    :func:`exact_metric_aggregation` (``*-sum`` keys become exact global means),
    weights from the plain ``num_examples`` each node sent beside its masked vector.

    Parameters
    ----------
    initial_arrays : list of numpy.ndarray
        The shared arrays of the initial model, in the clients' order.
    fraction_fit : float (default: 1.0)
        Fraction of nodes trained each round. Below 1 the nodes are drawn as
        the Message-API strategies draw them (:func:`~fedrec_flwr.strategies.
        guard.sample_rank`: by seed, round and partition id), not by Flower's
        unseeded legacy sampler.
    min_nodes : int (default: 2)
        Minimum nodes to train, evaluate and be connected (SecAgg+ needs 2).
    seed : int (default: 0)
        The sample's seed (the run's ``seed``).
    partitions : mapping of int to int, optional (default: None)
        Node id to partition id, as the nodes answered a ``query``; nodes not
        in it are sampled after the others, by node id.
    server_step : ServerStep, optional (default: None)
        A server optimiser (FedAdam, FedYogi, FedAvgM) moving the global model
        from the securely aggregated mean; None = the mean is the new model.

    Attributes
    ----------
    train_metrics, evaluate_metrics : dict of int to dict
        Aggregated metrics per round.
    weights : dict of int to list of int
        The weights of the nodes aggregated in each round.
    node_config : dict
        Sent with every fit and evaluate instruction besides the round (the
        run lineage and the rounds to keep, for the nodes' private store);
        scalars only, as legacy configs are.
    """

    def __init__(
        self,
        initial_arrays: list[np.ndarray],
        *,
        fraction_fit: float = 1.0,
        min_nodes: int = 2,
        seed: int = 0,
        partitions: Mapping[int, int] | None = None,
        server_step: ServerStep | None = None,
    ) -> None:
        super().__init__(
            fraction_fit=fraction_fit,
            fraction_evaluate=1.0,
            min_fit_clients=min_nodes,
            min_evaluate_clients=min_nodes,
            min_available_clients=min_nodes,
            initial_parameters=ndarrays_to_parameters(initial_arrays),
            # The round number in the config, as the Message-API strategies send it:
            # the clients seed their negatives with it.
            on_fit_config_fn=self._config,
            on_evaluate_config_fn=self._config,
        )
        self.dtypes = [a.dtype for a in initial_arrays]
        self.train_metrics: dict[int, dict[str, Scalar]] = {}
        self.evaluate_metrics: dict[int, dict[str, Scalar]] = {}
        self.weights: dict[int, list[int]] = {}
        self.seed = seed
        self.partitions = dict(partitions or {})
        self.server_step = server_step
        self.node_config: dict[str, Scalar] = {}
        self._current: list[np.ndarray] = initial_arrays

    def _config(self, server_round: int) -> dict[str, Scalar]:
        return {SERVER_ROUND_KEY: server_round, **self.node_config}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedAvg's fit instructions to a reproducible sample of the nodes."""
        self._current = parameters_to_ndarrays(parameters)  # the server step starts here
        if self.fraction_fit >= 1.0:
            return super().configure_fit(server_round, parameters, client_manager)
        size, wanted = self.num_fit_clients(client_manager.num_available())
        client_manager.wait_for(wanted, timeout=86400)  # legacy sample()'s default wait
        proxies = list(client_manager.all().values())
        key = {p.cid: sample_rank(self.seed, server_round, *self._node(p)) for p in proxies}
        chosen = sorted(proxies, key=lambda p: key[p.cid])[:size]
        log(
            INFO,
            "fedrec-flwr: SecAgg+ round %d samples partitions %s",
            server_round,
            sorted(self.partitions.get(self._node(p)[0], -1) for p in chosen),
        )
        fit_ins = FitIns(parameters, self._config(server_round))
        return [(proxy, fit_ins) for proxy in chosen]

    def _node(self, proxy: ClientProxy) -> tuple[int, int | None]:
        node = int(proxy.cid)
        return node, self.partitions.get(node)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The SecAgg+ mean, cast back; metrics aggregated exactly."""
        if not results:
            return None, {}
        arrays = parameters_to_ndarrays(results[0][1].parameters)
        if len(arrays) != len(self.dtypes):
            raise RuntimeError(f"SecAgg+ returned {len(arrays)} arrays for {len(self.dtypes)}")
        cast = [np.asarray(a).astype(d) for a, d in zip(arrays, self.dtypes, strict=True)]
        if self.server_step is not None:
            stepped = self.server_step(server_round, self._current, cast)
            cast = [np.asarray(a).astype(d) for a, d in zip(stepped, self.dtypes, strict=True)]
        records = [_records(res.num_examples, res.metrics) for _, res in results]
        metrics = _scalars(exact_metric_aggregation(records, NUM_EXAMPLES_KEY))
        self.train_metrics[server_round] = metrics
        self.weights[server_round] = [res.num_examples for _, res in results]
        return ndarrays_to_parameters(cast), metrics

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Exact global metrics (sums over users / users), as the plain mode."""
        if not results:
            return None, {}
        records = [
            _records(res.num_examples, res.metrics, **{LOSS_KEY: float(res.loss)})
            for _, res in results
        ]
        metrics = _scalars(exact_metric_aggregation(records, NUM_EXAMPLES_KEY))
        self.evaluate_metrics[server_round] = metrics
        loss = metrics.get(LOSS_KEY)
        return (float(loss) if isinstance(loss, (int, float)) else None), metrics


#: checkpoint record key: every round's SecAgg+ weights (the error bounds need them).
_WEIGHTS = "secagg-weights"


class _SecAggState:
    """The SecAgg+ loop's part of a checkpoint (a :class:`~fedrec_flwr.serving.
    session.RoundState`): the server step's state (FedAdam/FedYogi moments, FedAvgM
    momentum) and every round's weights, from which the error bounds are computed."""

    def __init__(self, strategy: SecAggFedAvg) -> None:
        self.strategy = strategy

    def state_arrays(self) -> dict[str, np.ndarray]:
        step = self.strategy.server_step
        return strategy_state(step.strategy) if step is not None else {}

    def state_record(self) -> dict[str, Any]:
        return {_WEIGHTS: {str(r): list(w) for r, w in self.strategy.weights.items()}}

    def restore(self, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> None:
        step = self.strategy.server_step
        if step is not None:
            restore_strategy_state(step.strategy, arrays)
        weights = record.get(_WEIGHTS, {})
        self.strategy.weights.update({int(r): [int(n) for n in w] for r, w in weights.items()})


class _FromRound:
    """A legacy workflow stage that runs from round ``first`` on, then calls ``after``.

    A resumed run's earlier rounds are in its checkpoint: Flower's
    ``DefaultWorkflow`` still counts them (its loop starts at 1), but nothing
    is sent in them.
    """

    def __init__(
        self,
        stage: Callable[[Grid, Context], None],
        first: int,
        after: Callable[[int], None] | None = None,
    ) -> None:
        self.stage, self.first, self.after = stage, first, after

    def __call__(self, grid: Grid, context: Context) -> None:
        rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])  # type: ignore[arg-type]
        if rnd < self.first:
            return
        self.stage(grid, context)
        if self.after is not None:
            self.after(rnd)


@dataclass(frozen=True)
class _Layout:
    """What the nodes answered a ``query`` with."""

    partitions: dict[int, int]  # node id -> partition id, where answered
    num_partitions: int | None  # the agreed num-partitions, None if unknown


def _query_layout(grid: Grid, timeout: float = 60.0) -> _Layout:
    """Each node's ``partition-id`` and the agreed ``num-partitions`` (one ``query`` each)."""
    queries = [
        Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
        for n in grid.get_node_ids()
    ]
    counts: set[object] = set()
    partitions: dict[int, int] = {}
    agreed = True
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            agreed = False
            continue
        for record in reply.content.metric_records.values():
            counts.add(record.get(NUM_PARTITIONS_KEY))
            pid = record.get(PARTITION_ID_KEY)
            if isinstance(pid, int) and not isinstance(pid, bool):
                partitions[reply.metadata.src_node_id] = pid
    k = next(iter(counts)) if len(counts) == 1 else None
    if agreed and isinstance(k, int) and not isinstance(k, bool) and k > 0:
        return _Layout(partitions, k)
    return _Layout(partitions, None)


def _largest_weight(cfg: RunConfig, layout: _Layout, max_train: float, sizes: Any) -> float:
    """The largest weight any node can send, as tightly as the server can know it.

    ``uniform``: 1. Else ``max-client-weight`` if set; else the largest
    partition's size when the server holds the data and the nodes agree on
    ``num-partitions``; else the dataset's size.

    Raises
    ------
    ConfigError
        If nothing bounds the weights (nodes hold their own logs and
        ``max-client-weight`` is 0; :meth:`RunConfig` rejects this too).
    """
    options = cfg.strategy
    if options.weight_key == "uniform":
        return 1.0
    if options.max_client_weight > 0:
        return float(options.max_client_weight)
    if sizes is not None and (k := layout.num_partitions) is not None:
        known = sizes(k)
        table = known.users if options.weight_key == "users" else known.examples
        return float(max(table.values()))
    if not math.isfinite(max_train):
        raise ConfigError(
            "secure-aggregation='secaggplus' with item-catalogue set needs max-client-weight "
            "> 0 (the largest node's weight): SecAgg+ scales every reply by weight / max"
        )
    return float(max_train)


def run_secagg(grid: Grid, cfg: RunConfig, out_dir: Path, *, run_id: int = 0) -> Path:
    """Run ``num-server-rounds`` SecAgg+ rounds on ``grid`` and write the results.

    The same ``results.json`` schema as :func:`~fedrec_flwr.runs.federated.run_federated`
    (round entries with val/test metrics, wall seconds, bytes), plus a
    ``secure-aggregation`` section (settings, ``max-weight``, the bound of
    every round). Checkpoints, ``resume-from``, ``init-from`` and delivery go
    through the plain run's :class:`~fedrec_flwr.serving.session.ServerSession`;
    a resumed run sends nothing before the checkpoint's next round.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid Flower handed to the ServerApp (or an ``InProcessGrid``).
    cfg : RunConfig
        The run's configuration (``secure-aggregation='secaggplus'``).
    out_dir : pathlib.Path
        Where the results go.
    run_id : int (default: 0)
        Recorded in ``results.json``.

    Returns
    -------
    pathlib.Path
        Path of ``results.json``.

    Raises
    ------
    ConfigError
        Before any round, if ``N Q >= 2**32`` (the modular sum would wrap),
        nothing bounds the weights, or ``resume-from``/``init-from`` is refused.
    RuntimeError
        If no training round succeeded.
    """
    from ..runs.federated import (
        _item_tables,
        _reply_poll_interval,
        dp_extra,
        dp_report,
        initial_arrays,
        round_entries,
        server_view,
    )
    from ..runs.metering import MeteredGrid
    from ..runs.results import select_by_validation, summary_line, write_run
    from ..serving.session import ServerSession

    privacy, serving = cfg.privacy, cfg.serving
    log(INFO, "fedrec-flwr: SecAgg+ run; results will be written to %s", out_dir)
    view = server_view(cfg)
    num_nodes = len(list(grid.get_node_ids()))
    q, c = privacy.secagg_quantization_range, privacy.secagg_clipping_range
    if num_nodes * q >= MODULUS_RANGE:
        raise ConfigError(
            f"secagg-quantization-range={q} with {num_nodes} nodes: the masked sum wraps "
            f"around 2**32; choose secagg-quantization-range < {MODULUS_RANGE // num_nodes}"
        )
    layout = _query_layout(grid)
    largest = _largest_weight(cfg, layout, view.max_train, view.partition_sizes)
    max_weight = max_weight_for(largest, q)
    fresh = initial_arrays(cfg, view.num_items)
    names = list(fresh.keys())
    strategy = SecAggFedAvg(
        [fresh[n].numpy() for n in names],
        fraction_fit=cfg.strategy.fraction_train,
        min_nodes=cfg.strategy.min_nodes,
        seed=cfg.data.seed,
        partitions=layout.partitions,
        server_step=(
            ServerStep(build_bare_strategy(cfg), names, grid)  # type: ignore[arg-type]
            if cfg.strategy.strategy in SERVER_OPTIMISERS
            else None
        ),
    )
    # Lineage, checkpoints, resume, warm start and delivery: as in a plain run.
    session = ServerSession.for_run(cfg, out_dir, _SecAggState(strategy), run_id=run_id)
    session.check_rounds_left(cfg.num_server_rounds)
    earlier = session.earlier_rounds()
    start = session.initial_arrays(fresh, view.item_ids, _item_tables(cfg, view.num_items))
    strategy.initial_parameters = ndarrays_to_parameters([start[n].numpy() for n in names])
    # The nodes file their users' private rows under the lineage after every
    # round and keep the rounds a resume or the delivery needs.
    strategy.node_config = session.legacy_config()
    metered = MeteredGrid(grid, poll_interval=_reply_poll_interval(grid))
    server_context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    context = LegacyContext(
        server_context, config=ServerConfig(num_rounds=cfg.num_server_rounds), strategy=strategy
    )

    def global_arrays() -> ArrayRecord:
        """The global model as the legacy workflow keeps it, by array name."""
        record = context.state.array_records[MAIN_PARAMS_RECORD]
        arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))
        return ArrayRecord({n: Array(a) for n, a in zip(names, arrays, strict=True)})

    def after_round(rnd: int) -> None:
        so_far = earlier + round_entries(
            strategy.train_metrics, strategy.evaluate_metrics, metered, time.perf_counter()
        )
        session.on_round(
            rnd,
            global_arrays(),
            strategy.train_metrics,
            strategy.evaluate_metrics,
            so_far,
            cfg.num_server_rounds,
        )
        strategy.node_config = session.legacy_config()

    first = session.first_round
    workflow = DefaultWorkflow(
        fit_workflow=_FromRound(
            SecAggPlusWorkflow(
                num_shares=privacy.secagg_num_shares,
                reconstruction_threshold=privacy.secagg_reconstruction_threshold,
                max_weight=max_weight,
                clipping_range=c,
                quantization_range=q,
                modulus_range=MODULUS_RANGE,
            ),
            first,
        ),
        evaluate_workflow=_FromRound(default_evaluate_workflow, first, after_round),
    )
    log(INFO, "fedrec-flwr: run lineage %s (the nodes' private store)", session.lineage)
    t0 = time.perf_counter()
    workflow(metered, context)
    t_end = time.perf_counter()
    if not strategy.train_metrics and not session.earlier_train_rounds():
        raise RuntimeError(
            "no SecAgg+ training round succeeded; client errors: "
            + "; ".join(r for rs in metered.failure_reasons.values() for r in rs[:3])
        )
    rounds = earlier + round_entries(
        strategy.train_metrics, strategy.evaluate_metrics, metered, t_end
    )
    bounds = {}
    for entry in rounds:
        weights = [float(w) for w in strategy.weights.get(entry["round"], [])]
        if not weights:
            continue
        if not all(0 < w <= max_weight for w in weights):
            # A node claimed more than max-weight: its scaled vector may have been
            # clipped or wrapped, so no bound holds for this round.
            log(
                WARNING,
                "fedrec-flwr: round %s: weights %s exceed max-weight %s; no "
                "SecAgg+ error bound holds",
                entry["round"],
                weights,
                max_weight,
            )
            entry["secagg-error-bound"] = None
            continue
        bound = quantization_bound(
            weights, max_weight=max_weight, clipping_range=c, quantization_range=q
        )
        entry["secagg-error-bound"] = bound.mean
        bounds[entry["round"]] = bound.to_dict()
    final = global_arrays()
    delivery = (
        session.deliver(metered, serving.deliver, final, cfg.num_server_rounds, view.item_ids)
        if serving.deliver != "off"
        else None
    )
    failed = [r["round"] for r in rounds if r["failures"]]
    # User-level DP's epsilon (the nodes add the noise; the server sees only the sum).
    dp_section = dp_extra(dp_report(cfg), None, rounds)
    path = write_run(
        out_dir,
        mode="federated",
        config=cfg.to_dict(),
        protocol=view.protocol,
        dataset=view.stats,
        rounds=rounds,
        model_state={k: v.numpy() for k, v in final.items()},
        extra={
            "run-id": run_id,
            "strategy": type(strategy).__name__,
            "num-clients": num_nodes,
            "rounds-with-failures": failed,
            "arrays-received": sorted(metered.array_names_received),
            "total-wall-seconds": t_end - t0,
            "lineage": session.lineage,
            "resumed-from": serving.resume_from or None,
            "initialised-from": serving.init_from or None,
            "delivery": delivery,
            "checkpoint-seconds": {str(r): t for r, t in session.checkpoint_seconds.items()},
            **dp_section,
            "secure-aggregation": {
                "mode": privacy.secure_aggregation,
                "num-shares": privacy.secagg_num_shares,
                "reconstruction-threshold": privacy.secagg_reconstruction_threshold,
                "clipping-range": c,
                "quantization-range": q,
                "modulus-range": MODULUS_RANGE,
                "max-weight": max_weight,
                "weight-key": cfg.strategy.weight_key,
                "error-bound": "per element: node < 2c/Q; mean < N (2c/Q) M / sum_k n_k",
                "bounds": bounds,
            },
        },
    )
    last = rounds[-1][TEST_PART]
    log(
        INFO,
        "fedrec-flwr: SecAgg+ final test HR@10 %.4f NDCG@10 %.4f",
        last.get("hr@10", float("nan")),
        last.get("ndcg@10", float("nan")),
    )
    log(INFO, "%s", summary_line(path, select_by_validation(rounds)))
    return path
