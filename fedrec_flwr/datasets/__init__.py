"""Loaders, validation, id encoding, the split, partitioners and the partition cache.

One way in for each job: :func:`prepare_data` turns :class:`DataOptions` into
the encoded, split :class:`PreparedData`; :func:`load_client_data` gives one
client its partition through the on-disk cache; one reader per file format
(:func:`read_u_data`, :func:`read_atomic`, :func:`read_log`, ...).
"""

from ._errors import DataFileError
from .atomic import read_atomic, read_atomic_inter, read_atomic_table
from .cache import build_partition_cache, load_client_data, read_cache_meta
from .catalogue import read_catalogue, write_catalogue
from .encoder import IdEncoder
from .grouplens import RELEASES, MovieLensRelease, fetch_movielens, load_movielens
from .loaded import LoadedData
from .movielens import read_u_data
from .negatives import InteractionSet, sample_eval_negatives, sample_train_negatives
from .options import DataOptions
from .partition import partition_users
from .partitioners import (
    PARTITIONERS,
    AttributePartitioner,
    DirichletPartitioner,
    HashPartitioner,
    NaturalPartitioner,
    Partitioner,
    PartitionStats,
    PowerLawPartitioner,
    RandomPartitioner,
    RangePartitioner,
    gini,
    make_partitioner,
    partition_stats,
)
from .prepare import (
    DATASETS,
    NEGATIVE_POOLS,
    ClientData,
    PreparedData,
    filter_k_core,
    prepare_data,
    protocol_without_data,
    to_implicit,
)
from .split import SPLITS, TIE_RULE, LeaveOneOut, temporal_leave_one_out
from .tabular import read_log, read_side_table, stream_log_to_parquet
from .validation import DROP_KINDS, DUPLICATE_POLICIES, ValidationReport, apply_duplicate_policy

__all__ = [
    "DATASETS",
    "DROP_KINDS",
    "DUPLICATE_POLICIES",
    "NEGATIVE_POOLS",
    "PARTITIONERS",
    "RELEASES",
    "SPLITS",
    "TIE_RULE",
    "AttributePartitioner",
    "ClientData",
    "DataFileError",
    "DataOptions",
    "DirichletPartitioner",
    "HashPartitioner",
    "IdEncoder",
    "InteractionSet",
    "LeaveOneOut",
    "LoadedData",
    "MovieLensRelease",
    "NaturalPartitioner",
    "PartitionStats",
    "Partitioner",
    "PowerLawPartitioner",
    "PreparedData",
    "RandomPartitioner",
    "RangePartitioner",
    "ValidationReport",
    "apply_duplicate_policy",
    "build_partition_cache",
    "fetch_movielens",
    "filter_k_core",
    "gini",
    "load_client_data",
    "load_movielens",
    "make_partitioner",
    "partition_stats",
    "partition_users",
    "prepare_data",
    "protocol_without_data",
    "read_atomic",
    "read_atomic_inter",
    "read_atomic_table",
    "read_cache_meta",
    "read_catalogue",
    "read_log",
    "read_side_table",
    "read_u_data",
    "sample_eval_negatives",
    "sample_train_negatives",
    "stream_log_to_parquet",
    "temporal_leave_one_out",
    "to_implicit",
    "write_catalogue",
]
