"""User-group partitioners: each maps every user to exactly one client."""

from __future__ import annotations

from .attribute import AGE_BUCKETS, AttributePartitioner
from .base import Partitioner
from .contiguous import RangePartitioner
from .dirichlet import DirichletPartitioner, dominant_genre
from .hashing import HashPartitioner
from .natural import NaturalPartitioner
from .power_law import PowerLawPartitioner, power_law_sizes
from .random import RandomPartitioner
from .stats import PartitionStats, gini, partition_stats

__all__ = [
    "AGE_BUCKETS",
    "ATTRIBUTE_SHORTHANDS",
    "DATA_DECIDED",
    "PARTITIONERS",
    "AttributePartitioner",
    "DirichletPartitioner",
    "HashPartitioner",
    "NaturalPartitioner",
    "PartitionStats",
    "Partitioner",
    "PowerLawPartitioner",
    "RandomPartitioner",
    "RangePartitioner",
    "dominant_genre",
    "gini",
    "make_partitioner",
    "partition_stats",
    "power_law_sizes",
]

# Shorthands: partitioner="occupation" means attribute with partition-by="occupation".
ATTRIBUTE_SHORTHANDS = ("age-bucket", "gender", "occupation", "zip-prefix")
# Partitioners whose data decides the number of partitions.
DATA_DECIDED = ("natural", "attribute", *ATTRIBUTE_SHORTHANDS)
PARTITIONERS = (
    "random",
    "natural",
    "attribute",
    "hash",
    "range",
    "dirichlet",
    "power-law",
    *ATTRIBUTE_SHORTHANDS,
)


def make_partitioner(
    name: str,
    num_partitions: int | None,
    seed: int,
    *,
    partition_by: str = "occupation",
    dirichlet_alpha: float = 0.5,
    power_law_exponent: float = 1.0,
) -> Partitioner:
    """Build a partitioner from run-config values.

    Parameters
    ----------
    name : str
        One of :data:`PARTITIONERS`; an attribute name (``occupation``,
        ``gender``, ``age-bucket``, ``zip-prefix``) is short for ``attribute``
        with that ``partition_by``.
    num_partitions : int or None
        From ``num-partitions``; natural and attribute check it against the
        number they make.
    seed : int
        Run seed.
    partition_by : str (default: "occupation")
        Attribute for ``attribute``.
    dirichlet_alpha : float (default: 0.5)
        Concentration for ``dirichlet``.
    power_law_exponent : float (default: 1.0)
        Exponent for ``power-law``.
    """
    if name == "random":
        return RandomPartitioner(num_partitions, seed)
    if name == "natural":
        return NaturalPartitioner(num_partitions, seed)
    if name == "attribute":
        return AttributePartitioner(partition_by, num_partitions, seed)
    if name in ATTRIBUTE_SHORTHANDS:
        return AttributePartitioner(name, num_partitions, seed)
    if name == "hash":
        return HashPartitioner(num_partitions, seed)
    if name == "range":
        return RangePartitioner(num_partitions, seed)
    if name == "dirichlet":
        return DirichletPartitioner(num_partitions, seed, alpha=dirichlet_alpha)
    if name == "power-law":
        return PowerLawPartitioner(num_partitions, seed, exponent=power_law_exponent)
    raise ValueError(f"partitioner={name!r}: unknown; accepted: {', '.join(PARTITIONERS)}")
