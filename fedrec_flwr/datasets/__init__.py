"""Loaders, validation, id encoding, splits, partitioners and the partition cache."""

from ._errors import DataFileError
from .atomic import read_atomic, read_atomic_inter, read_atomic_table
from .cache import build_partition_cache, load_partition, read_cache_meta
from .catalogue import read_catalogue, write_catalogue
from .encoder import IdEncoder
from .grouplens import RELEASES, MovieLensRelease, fetch_movielens, load_movielens
from .loaded import LoadedData
from .movielens import (
    fetch_ml100k,
    load_ml100k,
    read_ml100k_dir,
    read_ml100k_side_tables,
    read_u_data,
)
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
    client_data_from,
    filter_k_core,
    load_client_data,
    load_source,
    prepare_data,
    prepare_dataset,
    prepare_interactions,
    protocol_without_data,
    to_implicit,
)
from .split import (
    SPLITS,
    TIE_RULE,
    LeaveOneOut,
    RatioSplit,
    random_ratio_split,
    temporal_leave_one_out,
    temporal_ratio_split,
)
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
    "RatioSplit",
    "ValidationReport",
    "apply_duplicate_policy",
    "build_partition_cache",
    "client_data_from",
    "fetch_ml100k",
    "fetch_movielens",
    "filter_k_core",
    "gini",
    "load_client_data",
    "load_ml100k",
    "load_movielens",
    "load_partition",
    "load_source",
    "make_partitioner",
    "partition_stats",
    "partition_users",
    "prepare_data",
    "prepare_dataset",
    "prepare_interactions",
    "protocol_without_data",
    "random_ratio_split",
    "read_atomic",
    "read_atomic_inter",
    "read_atomic_table",
    "read_cache_meta",
    "read_catalogue",
    "read_log",
    "read_ml100k_dir",
    "read_ml100k_side_tables",
    "read_side_table",
    "read_u_data",
    "sample_eval_negatives",
    "sample_train_negatives",
    "stream_log_to_parquet",
    "temporal_leave_one_out",
    "temporal_ratio_split",
    "to_implicit",
    "write_catalogue",
]
