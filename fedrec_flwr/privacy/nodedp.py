"""Node-level DP with Flower's own wrappers and accountant, keeping exact weighted FedAvg.

``dp='node-client'`` and ``dp='node-server'`` protect a whole node's data (one
SuperNode, one user group) with Flower's
``DifferentialPrivacyClientSideFixedClipping`` /
``DifferentialPrivacyServerSideFixedClipping`` around Flower's plain
``FedAvg``, accounted by Flower's ``RdpAccountant`` (Google's ``dp-accounting``
underneath). The composition, outermost first::

    ValidatedStrategy            reply validation, fixed order (fedrec-flwr)
    └── NodeDPStrategy           weights -> 1, pre-scaling (node-server), seeded noise,
        │                        epsilon per round (fedrec-flwr)
        └── DifferentialPrivacy{Client,Server}SideFixedClipping   (Flower, + RdpAccountant)
            └── FedAvg           (Flower, aggregate_train unchanged)

and, on each node for ``node-client``, :func:`client_mods`: Flower's
``fixedclipping_mod`` around :func:`_scale_reply`.

Why a pre-scaling. Flower's accountant accepts only its own
``FedAvg.aggregate_train`` with equal client weights (the uniform mean, whose
add-or-remove-one sensitivity Flower's noise ``sigma * C / K`` is calibrated
to), while this app's FedAvg weighs node ``k`` by its training interactions
``n_k``. Let ``K`` be the number of nodes, ``n = sum_k n_k`` and
``Delta_k = w_k - w`` node ``k``'s update against the global ``w``. Each reply
is replaced by ``w + s_k Delta_k`` with ``s_k = K n_k / n`` and weight 1
(on the node before Flower's clipping mod for ``node-client``, on the server
before Flower's server-side clipping for ``node-server``). Flower then releases

    ``w + (1/K) [ sum_k clip_C(s_k Delta_k) + N(0, sigma^2 C^2 I) ]``.

*Exact weighted FedAvg.* When nothing is clipped,
``(1/K) sum_k s_k Delta_k = sum_k (n_k / n) Delta_k``: the aggregate is
``sum_k n_k / n * w_k`` (up to float32 rounding) plus the noise.

*Sensitivity.* ``K`` and ``n`` are fixed, public constants of the mechanism
(fixed at round 1: the nodes connected, and the dataset's training
interactions, which the server knows when it holds the data); they are not
recomputed from the replies, so node ``k``'s term ``clip_C(s_k Delta_k)``
depends only on its own data and the public ``w``. The neighbouring
federation (one node more or fewer) runs the same mechanism with the same
``K`` and ``n``, the missing node's term being absent. Adding or removing one
node therefore changes the sum inside the brackets by one clipped term, of L2
norm at most ``C``, whatever its ``n_k`` (the scaling is applied *before* the
clip: clipping first and scaling after would make the sensitivity
``max_k s_k C``, which Flower's calibration does not know). The bracket is the
Gaussian mechanism with noise multiplier ``sigma``; division by ``K`` is
post-processing; ``T`` rounds are ``T`` adaptively composed Gaussian releases,
what Flower's ``RdpAccountant`` composes with
``neighboring_relation=ADD_OR_REMOVE_ONE`` and
``sampling_method=NO_AMPLIFICATION`` (every node trains every round:
``fraction-train=1``). This is the fixed-denominator argument of DP-FedAvg
(McMahan et al., 2018), with weights ``s_k`` that the clip bounds.
The price of the weighting: a large node's scaled update is ``s_k > 1`` times
its own, so it is clipped first; choose ``dp-clip`` from the scaled norms
(``benchmarks/update_norms.py --scaled``).

Not covered: training and evaluation metrics (Flower's accountant excludes
them), the weights ``n_k`` themselves (public here), and the server, which
sees every reply unnoised and adds the noise itself (it is trusted).

Seeded noise. Flower draws its noise from NumPy's global RNG
(``np.random.normal``). :func:`seeded_noise` gives that RNG, for the duration of
one round's ``aggregate_train`` only, the state seeded by
``SeedSequence([noise_seed, server_round, stream])`` and restores the previous
state afterwards: a round's noise depends only on the noise seed and the round,
and nothing else in the process is reseeded or disturbed. The noise seed is
*not* the run's ``seed``: the run config goes to every node and into
``results.json``, and whoever knows the noise seed can regenerate the noise
and subtract it, which voids the guarantee. It is a secret of the server
process: the environment variable ``FEDREC_FLWR_DP_NOISE_SEED`` (a
non-negative integer; same value, same run config -> the same bits), or, when
unset, fresh OS entropy drawn once per run (private, not reproducible). The
draws come from NumPy's Mersenne Twister, as in Flower: not a cryptographic
generator.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

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
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from ..errors import ConfigError
from ..protocol import NODE_DP_SCALE_KEY, NUM_EXAMPLES_KEY
from ..settings import key_of

if TYPE_CHECKING:
    from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

    from ..config import RunConfig

__all__ = [
    "ACCOUNTANT",
    "NODE_DP_MODES",
    "NOISE_SEED_ENV_VAR",
    "NodeDPStrategy",
    "client_mods",
    "node_dp_mod",
    "node_dp_strategy",
    "seeded_noise",
]

#: The ``dp`` values this module builds.
NODE_DP_MODES = ("node-client", "node-server")
#: How the epsilons are computed (``results.json``, ``dp.accountant``).
ACCOUNTANT = "rdp (dp-accounting, via Flower)"
#: Server-side environment variable holding the secret noise seed (unset: fresh entropy).
NOISE_SEED_ENV_VAR = "FEDREC_FLWR_DP_NOISE_SEED"
# Keeps the noise stream apart from any other use of (seed, round) seeds.
_NOISE_STREAM = 0x4E4F4453


@contextlib.contextmanager
def seeded_noise(noise_seed: int, server_round: int) -> Iterator[None]:
    """Seed NumPy's global RNG (Flower's noise source) for one round, then restore it.

    Not thread-safe: nothing else may draw from NumPy's global RNG meanwhile
    (the server aggregates in one thread).

    Parameters
    ----------
    noise_seed : int
        The secret noise seed (never the public run ``seed``).
    server_round : int
        The round whose noise is drawn.
    """
    saved = np.random.get_state()
    state = np.random.SeedSequence([noise_seed, server_round, _NOISE_STREAM]).generate_state(8)
    np.random.seed(state)
    try:
        yield
    finally:
        np.random.set_state(saved)


class NodeDPStrategy(Strategy):
    """Flower's node-level DP wrapper and accountant, fed pre-scaled, equal-weight replies.

    See the module docstring for the composition and its sensitivity. Put
    :class:`~fedrec_flwr.strategies.ValidatedStrategy` around it (it validates
    each reply and caps its weight by the partition's true size first).

    Flower's wrapper needs the number of nodes ``K`` when it is built; this
    layer builds it, with its ``RdpAccountant``
    (``PrivacyConfig(target_delta=delta, population_size=K,
    ADD_OR_REMOVE_ONE, NO_AMPLIFICATION)``), at the first ``configure_train``,
    once ``min_available_nodes`` nodes are connected: ``K`` is the number
    connected then. Every later round must train the same ``K`` nodes (Flower
    raises otherwise), and a round in which a reply is missing or dropped
    releases nothing (Flower's strict accounting mode).

    Parameters
    ----------
    level : str
        ``node-client`` (each node clips, Flower's ``fixedclipping_mod``) or
        ``node-server`` (the server clips).
    inner : flwr.serverapp.strategy.FedAvg
        Flower's FedAvg (its ``aggregate_train`` unchanged), weighted by
        ``num-examples``.
    noise_multiplier : float
        ``sigma``: noise standard deviation over ``clipping_norm``; > 0.
    clipping_norm : float
        ``C``: L2 bound on each node's scaled update; > 0.
    delta : float
        The delta the accountant reports epsilon at.
    total_examples : float
        ``n``: the federation's training interactions (public).
    noise_seed : int, optional (default: None)
        The secret seed of the noise (:func:`seeded_noise`); None = fresh OS
        entropy, drawn here once (private, not reproducible).

    Attributes
    ----------
    dp : DifferentialPrivacyFixedClippingBase or None
        Flower's wrapper, once built.
    reproducible : bool
        Whether a noise seed was given (else it is fresh entropy).
    num_nodes : int or None
        ``K``, once fixed.
    epsilons : dict of int to float
        Server round -> cumulative epsilon after it, at ``delta``.
    unexact : list of tuple
        ``(server_round, sum of n_k)`` for rounds whose replies' weights did not
        sum to ``n`` (still DP, but not exactly weighted FedAvg).
    """

    def __init__(
        self,
        level: str,
        inner: FedAvg,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float,
        total_examples: float,
        noise_seed: int | None = None,
    ) -> None:
        if level not in NODE_DP_MODES:
            raise ValueError(f"level={level!r}: expected one of {NODE_DP_MODES}")
        if not (math.isfinite(total_examples) and total_examples > 0):
            raise ConfigError(
                f"dp={level!r}: the server must know the federation's training interactions "
                f"(got {total_examples}); the pre-scaling K n_k / n needs n"
            )
        self.level = level
        self.inner = inner
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.delta = delta
        self.total_examples = float(total_examples)
        self.reproducible = noise_seed is not None
        # Fresh entropy (128 bits) unless given; never logged or written out.
        self._noise_seed = (
            noise_seed if noise_seed is not None else int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        )
        self.dp: DifferentialPrivacyFixedClippingBase | None = None
        self.num_nodes: int | None = None
        self.epsilons: dict[int, float] = {}
        self.unexact: list[tuple[int, float]] = []
        self._sent: ArrayRecord | None = None
        self._released: list[int] = []  # rounds whose aggregate was released
        self._resumed_k: int | None = None  # a checkpoint's K, checked at _build

    def __repr__(self) -> str:
        return f"NodeDPStrategy({self.level!r}, {self.dp or self.inner!r})"

    @property
    def scale(self) -> float:
        """``K / n``: a node's scale ``s_k`` is this times its ``n_k``."""
        if self.num_nodes is None:
            raise RuntimeError("K is fixed at the first configure_train")
        return self.num_nodes / self.total_examples

    def summary(self) -> None:
        """Log the node-level DP settings, then Flower's wrapper's summary."""
        log(INFO, "\t├──> Node-level DP (fedrec-flwr): %s", self.level)
        log(INFO, "\t│\t├── noise multiplier: %g", self.noise_multiplier)
        log(INFO, "\t│\t├── clipping norm: %g", self.clipping_norm)
        log(INFO, "\t│\t├── accountant: %s, delta %g", ACCOUNTANT, self.delta)
        log(INFO, "\t│\t├── pre-scaling: s_k = K n_k / n, n = %g", self.total_examples)
        log(INFO, "\t│\t└── noise seed: %s", self._seed_source())
        (self.dp or self.inner).summary()

    def describe(self) -> dict[str, Any]:
        """The ``dp`` record of ``results.json``."""
        return {
            "level": self.level,
            "noise-multiplier": self.noise_multiplier,
            "clip": self.clipping_norm,
            "delta": self.delta,
            "accountant": ACCOUNTANT,
            "num-nodes": self.num_nodes,
            "total-examples": self.total_examples,
            "noise-seed": self._seed_source(),
            "epsilon-per-round": [self.epsilons[r] for r in sorted(self.epsilons)],
            "rounds-not-exact": [{"round": r, "sum-n-k": s} for r, s in self.unexact],
        }

    def _seed_source(self) -> str:
        if self.reproducible:
            return f"secret, from ${NOISE_SEED_ENV_VAR} (reproducible)"
        return "fresh OS entropy (not reproducible)"

    # --- checkpoint and resume ---------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs, as JSON: the mechanism, ``K``, the released rounds
        (each one Gaussian release the accountant composed) and the epsilons so far.

        The noise itself needs no state: a round's draws depend only on the noise
        seed and the round (:func:`seeded_noise`).
        """
        return {
            "level": self.level,
            "noise-multiplier": self.noise_multiplier,
            "clip": self.clipping_norm,
            "delta": self.delta,
            "total-examples": self.total_examples,
            "num-nodes": self.num_nodes,
            "released": list(self._released),
            "epsilons": {str(r): e for r, e in self.epsilons.items()},
            "unexact": [list(u) for u in self.unexact],
        }

    def restore_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`checkpoint_state`: the accountant is given the earlier
        releases when Flower's wrapper is built, so epsilon keeps counting them.

        Raises
        ------
        ConfigError
            If the mechanism differs from the checkpoint's (level, noise
            multiplier, clip, delta, ``n``): the earlier rounds were released
            under another one.
        """
        mine = self.checkpoint_state()
        keys = ("level", "noise-multiplier", "clip", "delta", "total-examples")
        changed = [f"{k} {state.get(k)!r} -> {mine[k]!r}" for k in keys if state.get(k) != mine[k]]
        if changed:
            raise ConfigError(
                f"resume-from with dp={self.level!r}: the checkpoint's rounds were released "
                f"under another mechanism ({'; '.join(changed)}); resume with the same dp keys "
                "and num-server-rounds (dp-target-epsilon calibrates the noise to it)"
            )
        self._resumed_k = state.get("num-nodes")
        self._released = [int(r) for r in state.get("released", [])]
        self.epsilons = {int(r): float(e) for r, e in state.get("epsilons", {}).items()}
        self.unexact = [(int(r), float(t)) for r, t in state.get("unexact", [])]

    def _build(self, grid: Grid) -> DifferentialPrivacyFixedClippingBase:
        from flwr.serverapp import RdpAccountant
        from flwr.supercore.privacy_accounting import (
            GaussianPrivacyEvent,
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )

        while len(nodes := list(grid.get_node_ids())) < self.inner.min_available_nodes:
            time.sleep(1)  # as Flower's own sampling waits
        k = len(nodes)
        resumed_k = self._resumed_k
        if resumed_k is not None and resumed_k != k:
            raise ConfigError(
                f"resume-from with dp={self.level!r}: {k} nodes are connected, the checkpoint's "
                f"rounds were released over K={resumed_k}; node-level DP needs the same nodes"
            )
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=self.delta,
                population_size=k,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        wrapper = (
            DifferentialPrivacyClientSideFixedClipping
            if self.level == "node-client"
            else DifferentialPrivacyServerSideFixedClipping
        )
        self.num_nodes = k
        self.dp = wrapper(
            self.inner, self.noise_multiplier, self.clipping_norm, k, accountant=accountant
        )
        for _ in self._released:  # a resumed run: the earlier rounds' releases count
            accountant.compose(
                GaussianPrivacyEvent(
                    noise_multiplier=self.noise_multiplier, sample_size=k, population_size=k
                )
            )
        log(
            INFO,
            "fedrec-flwr: node-level DP (%s) over K=%d nodes, n=%g training interactions: "
            "noise multiplier %g, clip %g, delta %g",
            self.level,
            k,
            self.total_examples,
            self.noise_multiplier,
            self.clipping_norm,
            self.delta,
        )
        return self.dp

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Fix ``K`` (first round), send the scale (node-client), let Flower configure."""
        dp = self.dp or self._build(grid)
        self._sent = arrays
        if self.level == "node-client":
            config[NODE_DP_SCALE_KEY] = self.scale
        return dp.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to Flower's wrapper (evaluation is not privatised)."""
        return (self.dp or self.inner).configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Scale (node-server), set weights to 1, let Flower clip, average and noise.

        Training metrics are aggregated from the replies as received (weighted
        by ``n_k``, as without DP); Flower's accountant does not cover them.
        """
        if self.dp is None or self._sent is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        key = self.inner.weighted_by_key
        prepared = [m if m.has_error() else self._prepare(m) for m in replies]
        with seeded_noise(self._noise_seed, server_round):
            arrays, _ = self.dp.aggregate_train(server_round, prepared)
        spent = self.dp.privacy_spent()
        epsilon = 0.0 if spent is None else float(spent.epsilon)
        self.epsilons[server_round] = epsilon
        log(
            INFO,
            "fedrec-flwr: round %d: node-level DP epsilon=%.4f at delta=%g (%s)",
            server_round,
            epsilon,
            self.delta,
            "released" if arrays is not None else "nothing released",
        )
        if arrays is None:
            return None, None
        self._released.append(server_round)
        total = math.fsum(float(_metrics(m)[key]) for m in ok)  # type: ignore[arg-type]
        if not math.isclose(total, self.total_examples, rel_tol=1e-9):
            self.unexact.append((server_round, total))
            log(
                WARNING,
                "fedrec-flwr: round %d: the replies' weights sum to %g, not n=%g: the "
                "aggregate is DP but not exactly weighted FedAvg",
                server_round,
                total,
                self.total_examples,
            )
        return arrays, self.inner.train_metrics_aggr_fn([m.content for m in ok], key)

    def _prepare(self, msg: Message) -> Message:
        """The reply Flower's wrapper sees: weight 1; on node-server, ``w + s_k Delta_k``."""
        assert self._sent is not None
        content = msg.content
        name, metrics = next(iter(content.metric_records.items()))
        key = self.inner.weighted_by_key
        out = RecordDict(dict(content.items()))
        if self.level == "node-server":
            s = self.scale * float(metrics[key])  # type: ignore[arg-type]
            arr_name, record = next(iter(content.array_records.items()))
            out[arr_name] = _scaled(record, self._sent, s)
        record_m = MetricRecord(dict(metrics))
        record_m[key] = 1
        out[name] = record_m
        new = copy.copy(msg)
        new.content = out
        return new

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to Flower's wrapper (evaluation is not privatised)."""
        return (self.dp or self.inner).aggregate_evaluate(server_round, replies)


def node_dp_strategy(
    cfg: RunConfig, common: dict[str, Any], *, total_examples: float
) -> NodeDPStrategy:
    """The node-level DP layer over Flower's plain ``FedAvg`` for ``dp`` in :data:`NODE_DP_MODES`.

    Parameters
    ----------
    cfg : RunConfig
        ``dp``, ``dp-clip``, ``dp-delta`` and the noise (``dp-noise-multiplier``
        or calibrated from ``dp-target-epsilon``) are read; the noise seed comes
        from ``$FEDREC_FLWR_DP_NOISE_SEED`` on the server (unset: fresh entropy).
    common : dict
        The keyword arguments every strategy of the registry gets (sampling,
        weight key, metric aggregation).
    total_examples : float
        ``n``, the dataset's training interactions (the server's data); not
        finite when the server does not hold the data (refused).

    Raises
    ------
    ConfigError
        If ``n`` is unknown, or ``$FEDREC_FLWR_DP_NOISE_SEED`` is not a
        non-negative integer.
    """
    privacy = cfg.privacy
    raw = os.environ.get(NOISE_SEED_ENV_VAR, "").strip()
    if raw and not raw.isdigit():
        raise ConfigError(
            f"{NOISE_SEED_ENV_VAR}={raw!r}: expected a non-negative integer (the secret "
            "seed of the DP noise), or unset for fresh entropy"
        )
    return NodeDPStrategy(
        privacy.dp,
        FedAvg(**common),
        noise_multiplier=cfg.noise_multiplier(),
        clipping_norm=privacy.dp_clip,
        delta=privacy.dp_delta,
        total_examples=total_examples,
        noise_seed=int(raw) if raw else None,
    )


def _scale_reply(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run the app, then reply ``w + s_k (w_k - w)`` with ``s_k`` = scale x ``num-examples``."""
    sent = next(iter(msg.content.array_records.values()))
    scale = _config(msg)[NODE_DP_SCALE_KEY]
    if not isinstance(scale, float) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{NODE_DP_SCALE_KEY}={scale!r}: expected a positive finite float")
    reply = call_next(msg, ctxt)
    if reply.has_error() or len(reply.content.array_records) != 1:
        return reply  # fixedclipping_mod reports a malformed reply
    name, record = next(iter(reply.content.array_records.items()))
    weight = float(_metrics(reply)[NUM_EXAMPLES_KEY])  # type: ignore[arg-type]
    reply.content[name] = _scaled(record, sent, scale * weight)
    return reply


def node_dp_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Node-level DP on the node (``dp='node-client'``): scale, then Flower's clipping.

    On a training message whose config carries ``node-dp-scale`` (sent by
    :class:`NodeDPStrategy`), the reply is scaled by :func:`_scale_reply` and
    then clipped by Flower's ``fixedclipping_mod`` (to the ``clipping_norm``
    Flower's wrapper sends). A training message without it is refused when the
    node's own run config says ``dp='node-client'`` (the node never sends an
    unclipped update then); anything else passes through.

    Parameters
    ----------
    msg : flwr.app.Message
        The incoming message.
    ctxt : flwr.app.Context
        The node's context (its ``run_config`` is read).
    call_next : callable
        The rest of the app.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    if NODE_DP_SCALE_KEY not in _config(msg):
        if ctxt.run_config.get(key_of("dp")) == "node-client":
            raise ValueError(
                f"dp='node-client' but the server sent no {NODE_DP_SCALE_KEY}: refusing "
                "to send an unclipped update"
            )
        return call_next(msg, ctxt)

    def scaled(inner_msg: Message, inner_ctxt: Context) -> Message:
        return _scale_reply(inner_msg, inner_ctxt, call_next)

    return fixedclipping_mod(msg, ctxt, scaled)


def client_mods(cfg: RunConfig | None = None) -> list[Mod]:
    """Train mods of the ClientApp for node-level DP.

    Put them inside (after) a SecAgg+ mod: the update is scaled and clipped
    before it is masked.

    Parameters
    ----------
    cfg : RunConfig, optional (default: None)
        None (the ClientApp is built before any run config exists): the mod
        decides per message (:func:`node_dp_mod`). A config whose ``dp`` is
        not ``node-client``: no mod.

    Returns
    -------
    list of flwr mods
    """
    if cfg is not None and cfg.privacy.dp != "node-client":
        return []
    return [node_dp_mod]


def _config(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for record in msg.content.config_records.values():
        out.update(record)
    return out


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


def _scaled(record: ArrayRecord, sent: ArrayRecord, s: float) -> ArrayRecord:
    """``sent + s * (record - sent)`` per array, in each array's dtype, keys kept in order."""
    out = ArrayRecord()
    for name, array in record.items():
        w_k, w = array.numpy(), sent[name].numpy()
        out[name] = Array(np.asarray(w + (w_k - w) * s).astype(w_k.dtype, copy=False))
    return out
