"""Privacy accounting for the Gaussian releases of a DP run, by dp-accounting.

Every DP mode of this app releases one Gaussian mechanism per round and
participant: the clipped sum of the protected units' updates plus noise of
standard deviation ``noise_multiplier * clip`` (sensitivity ``clip`` under
add-or-remove-one). No sampling amplification is claimed: every protected unit
takes part in every round it is asked to, and a node does not trust the
server's sampling. ``T`` rounds are therefore ``T`` self-composed Gaussian
events, accounted with the RDP accountant of Google's ``dp-accounting``
(the library Flower's own accountant wraps); no formula is written here.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from ..errors import ConfigError

__all__ = ["MAX_NOISE_MULTIPLIER", "epsilons", "noise_for_target"]

#: Beyond this the model learns nothing; a target that needs more is refused.
MAX_NOISE_MULTIPLIER = 1000.0


def _event(noise_multiplier: float, rounds: int) -> Any:
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), rounds
    )


def _epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    accountant.compose(_event(noise_multiplier, rounds))
    return float(accountant.get_epsilon(delta))


def epsilons(noise_multiplier: float, rounds: int, delta: float) -> list[float]:
    """Cumulative epsilon after each of ``rounds`` Gaussian releases.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the sensitivity; 0 = no noise (infinite epsilon).
    rounds : int
        Releases (rounds a participant replied in).
    delta : float
        The delta of (epsilon, delta)-DP.

    Returns
    -------
    list of float
        ``epsilons[t - 1]`` is epsilon after round ``t``.
    """
    if noise_multiplier <= 0:
        return [math.inf] * rounds
    return [_epsilon(noise_multiplier, t, delta) for t in range(1, rounds + 1)]


@functools.lru_cache(maxsize=64)
def noise_for_target(target_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose ``rounds`` releases stay within the target.

    Parameters
    ----------
    target_epsilon : float
        Epsilon after ``rounds`` rounds.
    rounds : int
        Number of releases (``num-server-rounds``).
    delta : float
        The delta of (epsilon, delta)-DP.

    Raises
    ------
    ConfigError
        If even :data:`MAX_NOISE_MULTIPLIER` does not reach the target.
    """
    import dp_accounting
    from dp_accounting import rdp

    if _epsilon(MAX_NOISE_MULTIPLIER, rounds, delta) > target_epsilon:
        raise ConfigError(
            f"dp-target-epsilon={target_epsilon}: cannot be met in num-server-rounds="
            f"{rounds} at dp-delta={delta} (needs a noise multiplier above "
            f"{MAX_NOISE_MULTIPLIER:g}); raise the target or dp-delta, or train fewer rounds"
        )
    sigma = dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant,
        functools.partial(_event, rounds=rounds),
        target_epsilon,
        delta,
        dp_accounting.ExplicitBracketInterval(1e-4, MAX_NOISE_MULTIPLIER),
        tol=1e-6,
    )
    return float(sigma)


def user_level_report(
    noise_multiplier: float,
    clip: float,
    delta: float,
    rounds: int,
    *,
    node_noise_multiplier: float | None = None,
) -> dict[str, Any]:
    """The ``dp`` section of ``results.json`` for ``dp='user'``.

    Epsilon after round ``t`` assumes the user's node replied in every round up
    to ``t`` (an upper bound when nodes are sampled).

    Parameters
    ----------
    noise_multiplier, clip, delta : float
        The run's noise multiplier, ``dp-clip`` and ``dp-delta``.
    rounds : int
        ``num-server-rounds``.
    node_noise_multiplier : float, optional (default: None)
        Each node's share under secure aggregation (distributed DP); None =
        each node adds the whole noise.
    """
    share = noise_multiplier if node_noise_multiplier is None else node_noise_multiplier
    return {
        "level": "user",
        "neighbouring": "add-or-remove one user of a node (zero-out: its update or none)",
        "noise-multiplier": noise_multiplier,
        "node-noise-multiplier": share,
        "clip": clip,
        "delta": delta,
        "accountant": "rdp (dp-accounting), no sampling amplification",
        "epsilon-per-round": epsilons(noise_multiplier, rounds, delta),
    }
