"""Everything that decides what a client's data is, in one hashable record.

:class:`DataOptions` is also the ``data`` group of the run config
(:class:`~fedrec_flwr.config.RunConfig`): its fields, defaults and help text are
declared here once (:func:`~fedrec_flwr.settings.option`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..settings import check_choices, check_numbers, documented, key_of, option
from .partitioners import PARTITIONERS
from .split import KFOLD_SPLITS, SPLITS
from .validation import DUPLICATE_POLICIES

__all__ = ["MOVIELENS", "SOURCES", "TASKS", "VALIDATION_MODES", "DataOptions", "parse_columns"]

MOVIELENS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small")
# "atomic": RecBole files at data-dir; "log": a CSV/TSV/Parquet file at data-dir.
SOURCES = (*MOVIELENS, "atomic", "log")
VALIDATION_MODES = ("strict", "lenient")
# What is learnt and measured: implicit-feedback ranking, or explicit rating prediction.
TASKS = ("ranking", "rating")


def parse_columns(text: str) -> dict[str, str]:
    """``"user=uid,item=sku,timestamp=ts"`` -> ``{"user": "uid", ...}``."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        role, sep, name = part.partition("=")
        if not sep or role.strip() not in ("user", "item", "rating", "timestamp"):
            raise ValueError(
                f"log-columns={text!r}: expected role=column pairs with roles user, item, "
                "rating, timestamp, e.g. 'user=customer,item=sku,timestamp=ts'"
            )
        mapping[role.strip()] = name.strip()
    return mapping


@documented
@dataclass(frozen=True)
class DataOptions:
    """How a dataset is loaded, prepared, split and partitioned."""

    dataset: str = option(
        "ml-100k",
        "A MovieLens release by name, `atomic` (RecBole atomic files) or `log` (any "
        "CSV/TSV/Parquet interaction log, with `log-columns`); see datasets/README.md.",
        choices=SOURCES,
    )
    data_dir: str = option(
        "",
        "Absolute path of the files to read: MovieLens, the folder with `u.data` or "
        "`ml-100k.inter`; `atomic`, the `.inter` file or its folder; `log`, the file. "
        "Empty = download into the cache (`$FEDREC_FLWR_HOME/data`).",
    )
    seed: int = option(
        42,
        "Non-negative; seeds partitions, evaluation and training negatives, initialisation "
        "and shuffling.",
    )
    task: str = option(
        "ranking",
        "`ranking`: implicit feedback (every kept interaction is a positive), each user's "
        "held-out item ranked among sampled negatives (HR@K, NDCG@K). `rating`: explicit "
        "ratings, every rating kept; the model predicts the rating (its output plus the mean "
        "training rating), trained by MSE and evaluated by RMSE and MAE; models `mf`, `gmf`, "
        "`mlp`, `neumf`, group clients.",
        choices=TASKS,
    )
    num_eval_negatives: int = option(
        99, "Negatives ranked against each held-out item (the ranking candidates)."
    )
    implicit_threshold: float = option(
        0.0, "Interactions rated below it are dropped; 0 keeps every interaction as a positive."
    )
    k_core: int = option(
        0, "Repeatedly drop users and items with fewer interactions than this; 0 = off."
    )
    duplicates: str = option(
        "keep-latest", "What to do with repeated (user, item) pairs.", choices=DUPLICATE_POLICIES
    )
    validation: str = option(
        "strict",
        "`strict`: the first bad row is an error naming file:line; `lenient`: bad rows are "
        "dropped and counted per kind.",
        choices=VALIDATION_MODES,
    )
    split: str = option(
        "leave-one-out",
        "Evaluation split. `leave-one-out`: temporal, each user's latest interaction is its "
        "test item (rating) and the second latest its validation one; the ranking task's only "
        "split. `task=rating` also takes `random` (a seeded `test-fraction` of all ratings is "
        "the test part) and `kfold` (fold `fold` of Surprise's `KFold(n_splits=5, "
        "random_state=0)` over the ratings in file order); both hold out a seeded "
        "`val-fraction` of the other ratings for validation.",
        choices=SPLITS,
    )
    fold: int = option(0, "`split=kfold`: the test fold, 0 to 4.")
    val_fraction: float = option(
        0.1,
        "`split=random` or `kfold`: share of the non-test ratings held out (seeded) for "
        "validation, in (0, 1).",
    )
    test_fraction: float = option(
        0.2, "`split=random`: share of all ratings in the test part (seeded), in (0, 1)."
    )
    partitioner: str = option(
        "random",
        "How users are cut into groups, one per SuperNode: `random` (sizes differ by at "
        "most one), `natural` (one user per client), `attribute` (by the users-table "
        "column `partition-by`; `age-bucket`, `gender`, `occupation` and `zip-prefix` are "
        "short for `attribute` by that column), `hash`, `range`, `dirichlet` "
        "(`dirichlet-alpha`) or `power-law` (`power-law-exponent`).",
        choices=PARTITIONERS,
        centralized=False,
    )
    partition_by: str = option(
        "occupation",
        "Users-table column for the `attribute` partitioner: `age-bucket`, `gender`, "
        "`occupation`, `zip-prefix`, or any custom column.",
        centralized=False,
    )
    dirichlet_alpha: float = option(
        0.5, "Concentration of the `dirichlet` partitioner (small = skewed).", centralized=False
    )
    power_law_exponent: float = option(
        1.0, "Group-size exponent of the `power-law` partitioner (0 = equal).", centralized=False
    )
    log_columns: str = option(
        "",
        'For `dataset = "log"`: the column mapping, e.g. '
        "`user=customer,item=sku,timestamp=ts`; empty = the columns are already named "
        "user, item, rating, timestamp.",
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.seed < 0:
            # numpy's SeedSequence would say only "expected non-negative integer".
            raise ConfigError(f"seed={self.seed}: must be a non-negative integer")
        if self.num_eval_negatives < 1:
            raise ConfigError(f"num-eval-negatives={self.num_eval_negatives}: must be >= 1")
        check_choices(self)
        self._check_task()
        if self.k_core < 0:
            raise ConfigError(f"k-core={self.k_core}: must be >= 0")
        if not self.dirichlet_alpha > 0:
            raise ConfigError(f"dirichlet-alpha={self.dirichlet_alpha}: must be > 0")
        if not self.power_law_exponent >= 0:
            raise ConfigError(f"power-law-exponent={self.power_law_exponent}: must be >= 0")
        if self.dataset in ("atomic", "log") and not self.data_dir:
            raise ConfigError(f"dataset={self.dataset}: data-dir must name the file to read")
        try:
            parse_columns(self.log_columns)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_task(self) -> None:
        """The split keys against ``task`` and each other."""
        split = self.split
        if self.task == "ranking" and split != "leave-one-out":
            raise ConfigError(
                f"split={split!r} with task='ranking': the ranking task evaluates one held-out "
                "item per user, so its split is 'leave-one-out'; set task='rating' for "
                f"split={split!r}"
            )
        if self.task == "rating" and self.implicit_threshold > 0:
            raise ConfigError(
                f"implicit-threshold={self.implicit_threshold:g} with task='rating': the rating "
                "task keeps every rating (nothing is turned implicit); set implicit-threshold=0"
            )
        if not 0 <= self.fold < KFOLD_SPLITS:
            raise ConfigError(
                f"fold={self.fold}: must be in 0..{KFOLD_SPLITS - 1} (split='kfold' has "
                f"{KFOLD_SPLITS} folds)"
            )
        for key, value, ok in (
            ("val-fraction", self.val_fraction, 0 < self.val_fraction < 1),
            ("test-fraction", self.test_fraction, 0 < self.test_fraction < 1),
        ):
            if not ok:
                raise ConfigError(f"{key}={value:g}: must be in (0, 1)")
        defaults = {f.name: f.default for f in dataclasses.fields(DataOptions)}
        for name, needs in (
            ("fold", ("kfold",)),
            ("val_fraction", ("random", "kfold")),
            ("test_fraction", ("random",)),
        ):
            value = getattr(self, name)
            if value != defaults[name] and split not in needs:
                accepted = " or ".join(repr(n) for n in needs)
                raise ConfigError(
                    f"{key_of(name)}={value:g} with split={split!r}: it applies only to "
                    f"split={accepted}; set split={accepted} or {key_of(name)}="
                    f"{defaults[name]:g}"
                )

    @property
    def lenient(self) -> bool:
        return self.validation == "lenient"

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, as recorded in caches and results."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
