"""The ``privacy`` group of the run config: audit, differential privacy, LDP, SecAgg+.

:class:`PrivacyOptions` declares every privacy key once
(:func:`~fedrec_flwr.settings.option`); :class:`~fedrec_flwr.config.RunConfig`
checks its combinations with the other groups before any round starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..settings import check_choices, check_numbers, documented, option

__all__ = ["DP_MODES", "SECURE_AGGREGATIONS", "PrivacyOptions"]

#: ``dp``: off; user-level DP inside each node (per-user mode); node-level DP
#: with Flower's wrappers, clipped on the node or on the server.
DP_MODES = ("off", "user", "node-client", "node-server")
#: ``secure-aggregation``: plain replies, or Flower's SecAgg+ (legacy path).
SECURE_AGGREGATIONS = ("off", "secaggplus")


@documented
@dataclass(frozen=True)
class PrivacyOptions:
    """The privacy audit, differential privacy, local DP and secure aggregation."""

    privacy_audit: bool = option(
        False,
        "Run the server-side item-inference attacks (`fedrec_flwr/privacy/audit.py`) on "
        "the training replies as the server receives them; per node and round: precision, "
        "recall and AUC of the inferred training items, in `results.json` "
        "(`privacy-audit`) and `privacy-audit.png`.",
        centralized=False,
    )
    privacy_audit_every: int = option(
        1,
        "Audit rounds 1, 1+k, 1+2k, ... (the attacks cost time per reply).",
        centralized=False,
    )
    dp: str = option(
        "off",
        "Differential privacy: `off`; `user` (DP-FedAvg at user level inside each node: "
        "client-mode='per-user', every user's update clipped to `dp-clip`, Gaussian noise "
        "added to the node's sum before it replies); `node-client` / `node-server` "
        "(node-level DP with Flower's wrappers, updates clipped on the node or on the "
        "server, noise added by the server).",
        choices=DP_MODES,
        centralized=False,
    )
    dp_clip: float = option(
        0.0,
        "L2 bound on one user's (`dp='user'`) or one node's update; must be > 0 when "
        "`dp` is on (`benchmarks/update_norms.py` prints typical norms).",
        centralized=False,
    )
    dp_noise_multiplier: float = option(
        0.0,
        "Gaussian noise standard deviation as a multiple of `dp-clip`; 0 = calibrated "
        "from `dp-target-epsilon`.",
        centralized=False,
    )
    dp_target_epsilon: float = option(
        0.0,
        "Epsilon to reach after `num-server-rounds` rounds at `dp-delta`: picks the "
        "noise multiplier (RDP accountant of Google's dp-accounting); 0 = use "
        "`dp-noise-multiplier`.",
        centralized=False,
    )
    dp_delta: float = option(
        1e-5,
        "The delta of (epsilon, delta)-DP; choose it below 1 / (number of users).",
        centralized=False,
    )
    ldp_clip: float = option(
        0.0,
        "Local DP on item updates (FedPerGNN): every element of a reply's item-table "
        "update is clipped to [-ldp-clip, ldp-clip] before noise; 0 = off.",
        centralized=False,
    )
    ldp_noise: float = option(
        0.0,
        "Laplace noise scale added to every element of the item rows a reply updates "
        "(trained and pseudo items); 0 = none.",
        centralized=False,
    )
    pseudo_items: int = option(
        0,
        "Pseudo interacted items per reply (FedPerGNN): random items the node did not "
        "train on get a fake update drawn like the real ones; 0 = off.",
        centralized=False,
    )
    secure_aggregation: str = option(
        "off",
        "`secaggplus`: Flower's SecAgg+ (legacy workflow): the server sees only the "
        "masked sum of the replies.",
        choices=SECURE_AGGREGATIONS,
        centralized=False,
    )
    secagg_num_shares: int = option(
        3, "SecAgg+: shares each node's secret is split into.", centralized=False
    )
    secagg_reconstruction_threshold: int = option(
        2,
        "SecAgg+: shares needed to reconstruct a secret, in [2, secagg-num-shares): a "
        "node may drop out while this many of its neighbours stay.",
        centralized=False,
    )
    secagg_clipping_range: float = option(
        8.0,
        "SecAgg+: every array element is clipped to [-r, r] before quantisation.",
        centralized=False,
    )
    secagg_quantization_range: int = option(
        4194304,
        "SecAgg+: quantisation levels over the clipping range (error per element and "
        "node below 2 * clipping-range / quantization-range; nodes * range < 2**32).",
        centralized=False,
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices(self)
        if self.privacy_audit_every < 1:
            raise ConfigError(f"privacy-audit-every={self.privacy_audit_every}: must be >= 1")
        for key, value in (
            ("dp-noise-multiplier", self.dp_noise_multiplier),
            ("dp-target-epsilon", self.dp_target_epsilon),
            ("ldp-clip", self.ldp_clip),
            ("ldp-noise", self.ldp_noise),
            ("pseudo-items", self.pseudo_items),
        ):
            if value < 0:
                raise ConfigError(f"{key}={value}: must be >= 0")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta={self.dp_delta}: must be in (0, 1)")
        if self.dp != "off":
            if not self.dp_clip > 0:
                raise ConfigError(
                    f"dp={self.dp!r} with dp-clip={self.dp_clip}: dp-clip must be > 0 "
                    "(the L2 bound on one update; benchmarks/update_norms.py prints "
                    "typical norms)"
                )
            if self.dp_noise_multiplier > 0 and self.dp_target_epsilon > 0:
                raise ConfigError(
                    f"dp-noise-multiplier={self.dp_noise_multiplier} and "
                    f"dp-target-epsilon={self.dp_target_epsilon}: set one of them (the "
                    "target picks the noise), the other to 0"
                )
            if self.dp_noise_multiplier == 0 and self.dp_target_epsilon == 0:
                raise ConfigError(
                    f"dp={self.dp!r}: set dp-noise-multiplier > 0 or dp-target-epsilon > 0 "
                    "(without noise clipping alone gives no privacy guarantee)"
                )
        elif self.dp_clip < 0:
            raise ConfigError(f"dp-clip={self.dp_clip}: must be > 0")
        if self.ldp_noise > 0 and not self.ldp_clip > 0:
            raise ConfigError(
                f"ldp-noise={self.ldp_noise} with ldp-clip={self.ldp_clip}: the Laplace "
                "noise is calibrated to a clipped update; set ldp-clip > 0"
            )
        if self.secure_aggregation != "off":
            # Flower's SecAggPlusWorkflow: an integer share count must exceed 2 and
            # the threshold stay below it (1 would mean "all shares" there).
            if self.secagg_num_shares < 3:
                raise ConfigError(f"secagg-num-shares={self.secagg_num_shares}: must be >= 3")
            if not 2 <= self.secagg_reconstruction_threshold < self.secagg_num_shares:
                raise ConfigError(
                    f"secagg-reconstruction-threshold={self.secagg_reconstruction_threshold}: "
                    f"must be in [2, secagg-num-shares={self.secagg_num_shares})"
                )
            if not self.secagg_clipping_range > 0 or self.secagg_quantization_range < 2:
                raise ConfigError(
                    f"secagg-clipping-range={self.secagg_clipping_range}, "
                    f"secagg-quantization-range={self.secagg_quantization_range}: "
                    "need a range > 0 and at least 2 levels"
                )

    @property
    def dp_on(self) -> bool:
        """Whether differential privacy of any level is on."""
        return self.dp != "off"
