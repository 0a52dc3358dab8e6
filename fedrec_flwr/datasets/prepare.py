"""From a raw log to what one client trains and evaluates on.

Parsing, encoding, splitting and negative drawing happen once per process
(:func:`prepare_dataset` is cached on its arguments), so a client never re-reads
the raw log between rounds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .movielens import load_ml100k
from .negatives import InteractionSet, sample_eval_negatives
from .partition import partition_users
from .split import TIE_RULE, temporal_leave_one_out

__all__ = [
    "DATASETS",
    "ClientData",
    "PreparedData",
    "client_data_from",
    "load_client_data",
    "prepare_dataset",
    "prepare_interactions",
]

DATASETS = ("ml-100k",)


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A dataset encoded, split and given its evaluation negatives.

    Attributes
    ----------
    name : str
        Dataset name.
    user_ids, item_ids : numpy.ndarray
        Raw id of each user / item code.
    train_users, train_items : numpy.ndarray
        Training interactions as codes, grouped by user.
    val_items, test_items : numpy.ndarray
        Held-out item of each user (index = user code).
    eval_negatives : numpy.ndarray
        ``(num_users, k)`` items the user never interacted with, drawn once with
        the seed; shared by validation and test candidates.
    seed : int
        Seed the negatives were drawn with.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    train_users: np.ndarray
    train_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    eval_negatives: np.ndarray
    seed: int

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def stats(self) -> dict[str, Any]:
        """Sizes, for results files."""
        return {
            "name": self.name,
            "num-users": self.num_users,
            "num-items": self.num_items,
            "num-interactions": len(self.train_items) + 2 * self.num_users,
            "num-train-interactions": len(self.train_items),
        }

    def protocol(self) -> dict[str, Any]:
        """The evaluation protocol, recorded verbatim in results files."""
        return {
            "feedback": "implicit: every rating is a positive",
            "split": "temporal leave-one-out with validation",
            "tie-rule": TIE_RULE,
            "eval-negatives": (
                f"{self.eval_negatives.shape[1]} per user, drawn once with the run "
                "seed, uniformly without replacement from items the user never "
                "interacted with; the same candidates serve validation and test"
            ),
            "train-negatives": (
                "drawn each epoch uniformly with replacement from items outside the "
                "user's training interactions (held-out items stay eligible)"
            ),
            "metrics": (
                "HR@K and NDCG@K over 1 held-out positive + the negatives; ties count "
                "against the positive (rank = number of negatives scoring >= it); "
                "federated values are exact global sums over users"
            ),
            "model-selection": "round/epoch with the best validation HR@10",
        }


def prepare_interactions(
    frame: pd.DataFrame, *, name: str, seed: int, num_eval_negatives: int
) -> PreparedData:
    """Encode ids, split, and draw evaluation negatives for an interactions frame.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``user``, ``item``, ``timestamp`` in file order (the order breaks
        timestamp ties).
    name : str
        Dataset name, for the record.
    seed : int
        Seed for the evaluation negatives.
    num_eval_negatives : int
        Negatives per user in the ranking candidates.
    """
    if "timestamp" not in frame.columns:
        raise ValueError(f"{name}: no timestamp column; the temporal split needs one")
    # Encoding sorted by raw id makes codes independent of file order.
    user_codes, user_ids = pd.factorize(frame["user"], sort=True)
    item_codes, item_ids = pd.factorize(frame["item"], sort=True)
    split = temporal_leave_one_out(user_codes, frame["timestamp"].to_numpy())
    everything = InteractionSet(user_codes, item_codes, len(item_ids))
    negatives = sample_eval_negatives(
        np.random.default_rng([seed, 0xE7A1]),
        len(user_ids),
        everything,
        num_eval_negatives,
    )
    return PreparedData(
        name=name,
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        train_users=user_codes[split.train_rows].astype(np.int64),
        train_items=item_codes[split.train_rows].astype(np.int64),
        val_items=item_codes[split.val_rows].astype(np.int64),
        test_items=item_codes[split.test_rows].astype(np.int64),
        eval_negatives=negatives,
        seed=seed,
    )


@functools.lru_cache(maxsize=4)
def prepare_dataset(
    dataset: str, data_dir: str, seed: int, num_eval_negatives: int
) -> PreparedData:
    """Load, encode and split a named dataset; cached per process on the arguments.

    Parameters
    ----------
    dataset : str
        One of :data:`DATASETS`.
    data_dir : str
        Local directory with the files, or ``""`` to use the download cache.
    seed, num_eval_negatives : int
        See :func:`prepare_interactions`.
    """
    if dataset != "ml-100k":
        raise ValueError(f"dataset={dataset!r}: unknown; accepted: {', '.join(DATASETS)}")
    frame = load_ml100k(data_dir or None)
    return prepare_interactions(
        frame, name=dataset, seed=seed, num_eval_negatives=num_eval_negatives
    )


@dataclass(frozen=True, eq=False)
class ClientData:
    """One user group's data, with users re-indexed locally from 0.

    Attributes
    ----------
    partition_id, num_partitions : int
        Which group of how many.
    users : numpy.ndarray
        Global codes of the local users; local user ``i`` is ``users[i]``.
    num_items : int
        Size of the shared item catalogue.
    train_users, train_items : numpy.ndarray
        Training interactions (local user index, item code).
    val_items, test_items : numpy.ndarray
        Held-out item per local user.
    eval_negatives : numpy.ndarray
        ``(len(users), k)`` evaluation negatives per local user.
    train_set : InteractionSet
        The training interactions, excluded when drawing training negatives.
    """

    partition_id: int
    num_partitions: int
    users: np.ndarray
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    eval_negatives: np.ndarray
    train_set: InteractionSet

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_train(self) -> int:
        return len(self.train_items)


def client_data_from(
    prepared: PreparedData, partition_id: int, num_partitions: int, seed: int
) -> ClientData:
    """Cut one user group out of ``prepared``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id={partition_id}: must be in [0, num-partitions={num_partitions})"
        )
    assignment = partition_users(prepared.num_users, num_partitions, seed)
    users = np.flatnonzero(assignment == partition_id)
    local = np.full(prepared.num_users, -1, dtype=np.int64)
    local[users] = np.arange(len(users))
    rows = np.flatnonzero(assignment[prepared.train_users] == partition_id)
    train_users = local[prepared.train_users[rows]]
    train_items = prepared.train_items[rows]
    return ClientData(
        partition_id=partition_id,
        num_partitions=num_partitions,
        users=users,
        num_items=prepared.num_items,
        train_users=train_users,
        train_items=train_items,
        val_items=prepared.val_items[users],
        test_items=prepared.test_items[users],
        eval_negatives=prepared.eval_negatives[users],
        train_set=InteractionSet(train_users, train_items, prepared.num_items),
    )


@functools.lru_cache(maxsize=64)
def load_client_data(
    dataset: str,
    data_dir: str,
    seed: int,
    num_eval_negatives: int,
    partition_id: int,
    num_partitions: int,
) -> ClientData:
    """Return one client's data; the raw log is parsed once per process."""
    prepared = prepare_dataset(dataset, data_dir, seed, num_eval_negatives)
    return client_data_from(prepared, partition_id, num_partitions, seed)
