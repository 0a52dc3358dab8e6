"""Everything that decides what a client's data is, in one hashable record."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .partitioners import PARTITIONERS
from .split import SPLITS
from .validation import DUPLICATE_POLICIES

__all__ = ["MOVIELENS", "SOURCES", "VALIDATION_MODES", "DataOptions", "parse_columns"]

MOVIELENS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small")
# "atomic": RecBole files at data-dir; "log": a CSV/TSV/Parquet file at data-dir.
SOURCES = (*MOVIELENS, "atomic", "log")
VALIDATION_MODES = ("strict", "lenient")


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


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is loaded, prepared, split and partitioned.

    Parameters
    ----------
    dataset : str (default: "ml-100k")
        One of :data:`SOURCES`.
    data_dir : str (default: "")
        MovieLens: directory with the files (``""`` = download into the cache).
        ``atomic``: the ``.inter`` file or its directory. ``log``: the file.
    seed : int (default: 42)
        Seeds evaluation negatives and partitioners.
    num_eval_negatives : int (default: 99)
        Negatives per user in the ranking candidates.
    implicit_threshold : float (default: 0.0)
        Ratings below it are dropped; 0 keeps every interaction as a positive.
    k_core : int (default: 0)
        Repeatedly drop users and items with fewer interactions (0 = off).
    duplicates : str (default: "keep-latest")
        Duplicate ``(user, item)`` policy.
    validation : str (default: "strict")
        ``strict`` raises on the first bad row; ``lenient`` drops and counts.
    split : str (default: "leave-one-out")
        The only split: temporal leave-one-out with validation (the client
        evaluates one held-out item per user); the key records the protocol.
    partitioner : str (default: "random")
        One of :data:`~fedrec_flwr.datasets.partitioners.PARTITIONERS`
        (``occupation`` etc. are short for ``attribute`` by that column).
    partition_by : str (default: "occupation")
        Attribute for the ``attribute`` partitioner.
    dirichlet_alpha : float (default: 0.5)
        Concentration for the ``dirichlet`` partitioner.
    power_law_exponent : float (default: 1.0)
        Exponent for the ``power-law`` partitioner.
    log_columns : str (default: "")
        Column mapping for ``log`` (``"user=uid,item=iid,..."``; empty = the
        columns are already named user, item, rating, timestamp).
    """

    dataset: str = "ml-100k"
    data_dir: str = ""
    seed: int = 42
    num_eval_negatives: int = 99
    implicit_threshold: float = 0.0
    k_core: int = 0
    duplicates: str = "keep-latest"
    validation: str = "strict"
    split: str = "leave-one-out"
    partitioner: str = "random"
    partition_by: str = "occupation"
    dirichlet_alpha: float = 0.5
    power_law_exponent: float = 1.0
    log_columns: str = ""

    def __post_init__(self) -> None:
        choices = {
            "dataset": SOURCES,
            "duplicates": DUPLICATE_POLICIES,
            "validation": VALIDATION_MODES,
            "split": SPLITS,
            "partitioner": PARTITIONERS,
        }
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ValueError(
                    f"{name.replace('_', '-')}={getattr(self, name)!r}: unknown; accepted: "
                    f"{', '.join(accepted)}"
                )
        if self.k_core < 0:
            raise ValueError(f"k-core={self.k_core}: must be >= 0")
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"dirichlet-alpha={self.dirichlet_alpha}: must be > 0")
        if not self.power_law_exponent >= 0:
            raise ValueError(f"power-law-exponent={self.power_law_exponent}: must be >= 0")
        if self.dataset in ("atomic", "log") and not self.data_dir:
            raise ValueError(f"dataset={self.dataset}: data-dir must name the file to read")
        parse_columns(self.log_columns)

    @property
    def lenient(self) -> bool:
        return self.validation == "lenient"

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, as recorded in caches and results."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
