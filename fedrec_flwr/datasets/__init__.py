"""Loaders, validation, id encoding, splits and partitioners."""

from ._frame import DataFileError
from .atomic import read_atomic_inter
from .movielens import fetch_ml100k, load_ml100k, read_ml100k_dir, read_u_data
from .negatives import InteractionSet, sample_eval_negatives, sample_train_negatives
from .partition import partition_users
from .prepare import (
    DATASETS,
    ClientData,
    PreparedData,
    client_data_from,
    load_client_data,
    prepare_dataset,
    prepare_interactions,
)
from .split import TIE_RULE, LeaveOneOut, temporal_leave_one_out

__all__ = [
    "DATASETS",
    "TIE_RULE",
    "ClientData",
    "DataFileError",
    "InteractionSet",
    "LeaveOneOut",
    "PreparedData",
    "client_data_from",
    "fetch_ml100k",
    "load_client_data",
    "load_ml100k",
    "partition_users",
    "prepare_dataset",
    "prepare_interactions",
    "read_atomic_inter",
    "read_ml100k_dir",
    "read_u_data",
    "sample_eval_negatives",
    "sample_train_negatives",
    "temporal_leave_one_out",
]
