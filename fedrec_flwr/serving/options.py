"""The ``serving`` group of the run config: checkpoints, resume, warm start, delivery.

:class:`ServingOptions` declares every key once (:func:`~fedrec_flwr.settings.option`).
The node-local private store is a node-config key (``state-dir``,
:data:`~fedrec_flwr.protocol.STATE_DIR_KEY`), since only the node may choose
where its users' rows live.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..settings import check_choices, check_numbers, documented, option

__all__ = ["DELIVERIES", "RECOMMEND_EXCLUDES", "ServingOptions"]

#: ``deliver``: the validation-selected round's model, the last round's, or none.
DELIVERIES = ("selected", "final", "off")
#: ``recommend-exclude``: items never recommended to a user: their training
#: items, or every item of theirs the node holds (training, validation, test).
RECOMMEND_EXCLUDES = ("train", "all")


@documented
@dataclass(frozen=True)
class ServingOptions:
    """Checkpoints and resume, warm start, delivery, recommendations."""

    checkpoint_every: int = option(
        1,
        "Write `checkpoint.npz` (shared arrays, the strategy's state, the results so far) "
        "into the run folder every k rounds and after the last; 0 = never.",
        centralized=False,
    )
    resume_from: str = option(
        "",
        "Absolute run folder whose `checkpoint.npz` this run continues from (its nodes "
        "pick up their users' rows from their stores); keys that change the model must "
        "be equal.",
        centralized=False,
    )
    init_from: str = option(
        "",
        "Absolute run folder whose delivered model starts this run (warm start): items "
        "matched by raw id, nodes keep their users' rows, new users and items start "
        "fresh.",
        centralized=False,
    )
    deliver: str = option(
        "selected",
        "After the last round, send every node the model of the validation-selected "
        "round (`selected`) or of the last round (`final`); each node writes its users' "
        "top-k recommendations into its own folder. `off` = no delivery.",
        choices=DELIVERIES,
        centralized=False,
    )
    recommend_k: int = option(
        10, "Recommendations per user written by a node after delivery.", centralized=False
    )
    recommend_exclude: str = option(
        "train",
        "Items not recommended to a user: `train` (those they trained on), `all` (also "
        "their validation and test items).",
        choices=RECOMMEND_EXCLUDES,
        centralized=False,
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices(self)
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint-every={self.checkpoint_every}: must be >= 0 (0 = never)")
        if self.recommend_k < 1:
            raise ConfigError(f"recommend-k={self.recommend_k}: must be >= 1")
        if self.resume_from.strip() and self.init_from.strip():
            raise ConfigError(
                "resume-from and init-from are both set: resume continues one run, init-from "
                "starts a new one from a finished run's model; set one"
            )
