"""From a raw log to the encoded, split dataset: :func:`prepare_data`.

Parsing, encoding, splitting and negative drawing happen once per process
(:func:`prepare_data` is cached on its options). A client reads its own group
through the partition cache instead
(:func:`~fedrec_flwr.datasets.cache.load_client_data`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..models.base import NodeContext
from ..protocol import NUM_USERS_KEY, TEST_PART, VAL_PART
from ._errors import DataFileError
from .atomic import read_atomic
from .encoder import IdEncoder
from .grouplens import load_movielens
from .loaded import LoadedData
from .negatives import InteractionSet, sample_eval_negatives
from .options import MOVIELENS, SOURCES, DataOptions, parse_columns
from .partition import partition_users
from .split import KFOLD_RULE, TIE_RULE, rating_split, temporal_leave_one_out
from .tabular import read_log

__all__ = [
    "DATASETS",
    "NEGATIVE_POOLS",
    "ClientData",
    "PreparedData",
    "RatingRows",
    "filter_k_core",
    "prepare_data",
    "protocol_without_data",
    "to_implicit",
]

DATASETS = SOURCES
NEGATIVE_POOLS = ("train", "history")


@dataclass(frozen=True, eq=False)
class RatingRows:
    """The rating task's ratings: the training values and the held-out rows.

    Attributes
    ----------
    train_ratings : numpy.ndarray
        Rating (float32) of each training row, aligned with ``train_users`` /
        ``train_items`` of the data that holds it.
    val_users, val_items, val_ratings : numpy.ndarray
        The validation ratings as (user, item code, rating) rows, grouped by
        user: user codes in :class:`PreparedData`, local indices in
        :class:`ClientData`. A user may have any number of them (the random
        and K-fold splits), zero included.
    test_users, test_items, test_ratings : numpy.ndarray
        The test ratings, likewise.
    mean : float
        The mean training rating of the whole dataset: a model's output plus
        ``mean`` is its predicted rating, so a model that outputs about 0 (MF
        at initialisation) predicts the global mean. Every node of a
        federation gets the same value with its partition.
    low, high : float
        The smallest and largest training rating; evaluated predictions are
        clipped to ``[low, high]`` (Surprise clips to the rating scale).
    """

    train_ratings: np.ndarray
    val_users: np.ndarray
    val_items: np.ndarray
    val_ratings: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray
    mean: float
    low: float
    high: float

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(users, items, ratings)`` of the validation (``VAL_PART``) or test
        (``TEST_PART``) ratings."""
        if name == VAL_PART:
            return self.val_users, self.val_items, self.val_ratings
        if name == TEST_PART:
            return self.test_users, self.test_items, self.test_ratings
        raise ValueError(f"part={name!r}: expected {VAL_PART!r} or {TEST_PART!r}")

    def offset(self) -> dict[str, float]:
        """The prediction offset and clipping range, as recorded in caches and results."""
        return {"mean": self.mean, "low": self.low, "high": self.high}

    def select(self, local: np.ndarray, train_rows: np.ndarray) -> RatingRows:
        """The ratings of some users, re-indexed.

        Parameters
        ----------
        local : numpy.ndarray
            New index of each user code, -1 for users left out.
        train_rows : numpy.ndarray
            Positions of the kept training rows, in their new order.
        """
        kept = {}
        for name in (VAL_PART, TEST_PART):
            users, items, ratings = self.part(name)
            keep = np.flatnonzero(local[users] >= 0)
            kept[name] = (local[users[keep]], items[keep], ratings[keep])
        (val_users, val_items, val_ratings) = kept[VAL_PART]
        (test_users, test_items, test_ratings) = kept[TEST_PART]
        return RatingRows(
            train_ratings=self.train_ratings[train_rows],
            val_users=val_users,
            val_items=val_items,
            val_ratings=val_ratings,
            test_users=test_users,
            test_items=test_items,
            test_ratings=test_ratings,
            mean=self.mean,
            low=self.low,
            high=self.high,
        )


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
    user_table, item_table : pandas.DataFrame or None
        Side tables aligned with the user / item codes (row ``u`` describes
        user code ``u``), ``None`` where the source has none.
    preparation : dict or None
        What preparation did (threshold, k-core, rows dropped), for the record.
    ratings : RatingRows or None
        The rating task's ratings (``task='rating'``); None for ranking. The
        per-user ``val_items`` / ``test_items`` are then -1 and
        ``eval_negatives`` has no columns: the held-out ratings are here.
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
    user_table: pd.DataFrame | None = None
    item_table: pd.DataFrame | None = None
    preparation: dict[str, Any] | None = None
    ratings: RatingRows | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def stats(self) -> dict[str, Any]:
        """Sizes, for results files."""
        if self.ratings is not None:
            held_out = len(self.ratings.val_ratings) + len(self.ratings.test_ratings)
            return {
                "name": self.name,
                NUM_USERS_KEY: self.num_users,
                "num-items": self.num_items,
                "num-interactions": len(self.train_items) + held_out,
                "num-train-interactions": len(self.train_items),
                "num-val-ratings": len(self.ratings.val_ratings),
                "num-test-ratings": len(self.ratings.test_ratings),
                "mean-train-rating": self.ratings.mean,
            }
        return {
            "name": self.name,
            NUM_USERS_KEY: self.num_users,
            "num-items": self.num_items,
            "num-interactions": len(self.train_items) + 2 * self.num_users,
            "num-train-interactions": len(self.train_items),
        }

    def schema(self) -> NodeContext:
        """A context with no users but this data's side tables (their columns, the
        item rows): binding a model to it checks the data has what the model reads,
        before anything is trained (:meth:`Recommender.bind` raises the one line)."""
        empty = np.zeros(0, dtype=np.int64)
        return NodeContext(
            num_users=0,
            train_users=empty,
            train_items=empty,
            val_items=empty,
            test_items=empty,
            user_table=None if self.user_table is None else self.user_table.iloc[:0],
            item_table=self.item_table,
        )

    def protocol(self) -> dict[str, Any]:
        """The evaluation protocol, recorded verbatim in results files."""
        if self.ratings is not None:
            return _rating_protocol(self.preparation or {}, self.ratings.offset())
        return _protocol(self.preparation or {}, int(self.eval_negatives.shape[1]))

    def client_data(self, partition_id: int = 0, num_partitions: int = 1) -> ClientData:
        """One random user group, cut in memory (default: everybody in one group).

        The groups are :func:`~fedrec_flwr.datasets.partition_users` seeded
        with :attr:`seed`: the ones a federation's clients read through the
        partition cache with ``partitioner='random'``
        (:func:`~fedrec_flwr.datasets.load_client_data`).

        Parameters
        ----------
        partition_id : int (default: 0)
            Which group.
        num_partitions : int (default: 1)
            Of how many.

        Returns
        -------
        ClientData
            The group's users re-indexed from 0, their training rows in order.
        """
        if not 0 <= partition_id < num_partitions:
            raise ValueError(
                f"partition-id={partition_id}: must be in [0, num-partitions={num_partitions})"
            )
        assignment = partition_users(self.num_users, num_partitions, self.seed)
        users = np.flatnonzero(assignment == partition_id)
        local = np.full(self.num_users, -1, dtype=np.int64)
        local[users] = np.arange(len(users))
        rows = np.flatnonzero(assignment[self.train_users] == partition_id)
        train_users = local[self.train_users[rows]]
        train_items = self.train_items[rows]
        ratings = None if self.ratings is None else self.ratings.select(local, rows)
        return ClientData(
            partition_id=partition_id,
            num_partitions=num_partitions,
            users=users,
            num_items=self.num_items,
            train_users=train_users,
            train_items=train_items,
            val_items=self.val_items[users],
            test_items=self.test_items[users],
            eval_negatives=self.eval_negatives[users],
            train_set=InteractionSet(train_users, train_items, self.num_items),
            raw_user_ids=np.asarray([str(u) for u in self.user_ids[users].tolist()], dtype=np.str_),
            raw_item_ids=np.asarray([str(i) for i in self.item_ids.tolist()], dtype=np.str_),
            user_table=(
                None
                if self.user_table is None
                else self.user_table.iloc[users].reset_index(drop=True)
            ),
            item_table=self.item_table,
            ratings=ratings,
        )


def _protocol(prep: Mapping[str, Any], num_eval_negatives: int) -> dict[str, Any]:
    """The protocol record, from what preparation did and the candidates per user."""
    threshold = prep.get("implicit-threshold", 0.0)
    feedback = (
        f"implicit: ratings >= {threshold:g} are positives, the rest dropped"
        if threshold > 0
        else "implicit: every rating is a positive"
    )
    extra = {"k-core": prep["k-core"]} if prep.get("k-core") else {}
    return {
        "feedback": feedback,
        **extra,
        "split": "temporal leave-one-out with validation",
        "tie-rule": TIE_RULE,
        "eval-negatives": (
            f"{num_eval_negatives} per user, drawn once with the run "
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


def _rating_protocol(prep: Mapping[str, Any], offset: Mapping[str, float] | None) -> dict[str, Any]:
    """The rating task's protocol record (``offset``: the measured mean and range)."""
    split = prep.get("split", "leave-one-out")
    if split == "leave-one-out":
        described = (
            "temporal leave-one-out: each user's latest rating is its test rating, the second "
            "latest its validation rating, the rest are training ratings"
        )
        carved: dict[str, Any] = {"tie-rule": TIE_RULE}
    else:
        if split == "random":
            share = prep.get("test-fraction", 0.2)
            described = (
                f"seeded random hold-out: ceil({share:g} n) of the n ratings, drawn with the run "
                "seed, are the test part"
            )
        else:
            described = f"K-fold cross-validation, test fold {prep.get('fold', 0)}: {KFOLD_RULE}"
        carved = {
            "validation": (
                f"ceil({prep.get('val-fraction', 0.1):g} m) of the m non-test ratings, drawn "
                "with the run seed; the rest are training ratings"
            )
        }
    extra = {"k-core": prep["k-core"]} if prep.get("k-core") else {}
    # Nodes that read their own logs (no offset known here) each take their own mean.
    where = " of the node's own log" if offset is None else f" ({offset['mean']:.6g})"
    clip = "" if offset is None else f" [{offset['low']:g}, {offset['high']:g}]"
    same = "" if offset is None else ", the same on every node"
    return {
        "task": "rating",
        "feedback": "explicit: every rating is kept and predicted",
        **extra,
        "split": described,
        **carved,
        "prediction": (
            f"model output + the mean training rating{where}{same}; "
            f"clipped to the training ratings' range{clip} when evaluated"
        ),
        "training": "mean squared error on the rating (MSE)",
        "metrics": (
            "RMSE and MAE over every held-out rating; federated values come from exact "
            "global sums of squared errors, absolute errors and rating counts"
        ),
        "model-selection": "round/epoch with the lowest validation RMSE",
        **({"offset": dict(offset)} if offset is not None else {}),
    }


def _split_record(options: DataOptions) -> dict[str, Any]:
    """The rating task's split keys, for the preparation record (empty for ranking)."""
    if options.task != "rating":
        return {}
    record: dict[str, Any] = {"task": options.task, "split": options.split}
    if options.split == "kfold":
        record["fold"] = options.fold
    if options.split == "random":
        record["test-fraction"] = options.test_fraction
    if options.split != "leave-one-out":
        record["val-fraction"] = options.val_fraction
    return record


def protocol_without_data(options: DataOptions) -> dict[str, Any]:
    """The protocol record for a server that holds no interaction data (nodes
    read their own files): what the options ask for, not what was measured."""
    prep = {"implicit-threshold": options.implicit_threshold, "k-core": options.k_core}
    if options.task == "rating":
        return _rating_protocol({**prep, **_split_record(options)}, None)
    return _protocol(prep, options.num_eval_negatives)


def _aligned(table: pd.DataFrame | None, key: str, ids: np.ndarray) -> pd.DataFrame | None:
    """Side-table rows in code order (a missing id gives an all-NaN row)."""
    if table is None or key not in table.columns:
        return None
    table = table.drop_duplicates(key, keep="last").set_index(key)
    try:
        aligned = table.reindex(pd.Index(ids, name=key))
    except TypeError:  # int ids in one table, strings in the other
        aligned = table.set_axis(table.index.astype(str)).reindex(pd.Index(ids.astype(str)))
    return aligned.reset_index()


def _prepare_frame(
    frame: pd.DataFrame,
    *,
    name: str,
    seed: int,
    num_eval_negatives: int,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    item_catalogue: np.ndarray | None = None,
    preparation: dict[str, Any] | None = None,
    negatives_salt: int | None = None,
    options: DataOptions | None = None,
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
    users, items : pandas.DataFrame, optional (default: None)
        Side tables keyed by ``user`` / ``item``, aligned to the codes.
    item_catalogue : numpy.ndarray, optional (default: None)
        The shared item catalogue (sorted raw ids); items are encoded against
        it instead of the items present in ``frame`` (a SuperNode holding only
        its users' log). An item outside it is an error.
    preparation : dict, optional (default: None)
        Recorded in :attr:`PreparedData.preparation`.
    negatives_salt : int, optional (default: None)
        Extra seed entropy (the partition id of a node-local log, so nodes do
        not draw identical negatives).
    options : DataOptions, optional (default: None)
        Its ``task``, ``split``, ``fold`` and fractions; None = the ranking task.
        With ``task='rating'`` the ``rating`` column is kept and split by
        :func:`~fedrec_flwr.datasets.split.rating_split`; no negatives are drawn.
    """
    if options is not None and options.task == "rating":
        return _prepare_ratings(
            frame,
            name=name,
            options=options,
            users=users,
            items=items,
            item_catalogue=item_catalogue,
            preparation=preparation,
        )
    if "timestamp" not in frame.columns:
        raise ValueError(
            f"{name}: no timestamp column; the temporal split needs one (it orders each "
            "user's items, and model='sasrec' reads them as a sequence): add a timestamp "
            "column, or name yours in log-columns (e.g. timestamp=ts); split='random' or "
            "'kfold' need none (task='rating' only)"
        )
    # Encoding sorted by raw id makes codes independent of file order.
    user_encoder = IdEncoder()
    user_codes = user_encoder.fit_transform(frame["user"])
    item_encoder = IdEncoder()
    if item_catalogue is None:
        item_codes = item_encoder.fit_transform(frame["item"])
    else:
        item_codes = item_encoder.fit_from_classes(item_catalogue).transform(frame["item"])
    user_ids, item_ids = user_encoder.classes_, item_encoder.classes_
    split = temporal_leave_one_out(user_codes, frame["timestamp"].to_numpy())
    everything = InteractionSet(user_codes, item_codes, len(item_ids))
    entropy = [seed, 0xE7A1] if negatives_salt is None else [seed, 0xE7A1, negatives_salt]
    negatives = sample_eval_negatives(
        np.random.default_rng(entropy),
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
        user_table=_aligned(users, "user", np.asarray(user_ids)),
        item_table=_aligned(items, "item", np.asarray(item_ids)),
        preparation=preparation,
    )


def _prepare_ratings(
    frame: pd.DataFrame,
    *,
    name: str,
    options: DataOptions,
    users: pd.DataFrame | None,
    items: pd.DataFrame | None,
    item_catalogue: np.ndarray | None,
    preparation: dict[str, Any] | None,
) -> PreparedData:
    """:func:`_prepare_frame` for the rating task: every rating kept and split."""
    if options.split == "leave-one-out" and "timestamp" not in frame.columns:
        raise ValueError(
            f"{name}: no timestamp column; split='leave-one-out' needs one (or use "
            "split='random' or 'kfold')"
        )
    user_encoder = IdEncoder()
    user_codes = user_encoder.fit_transform(frame["user"]).astype(np.int64)
    item_encoder = IdEncoder()
    if item_catalogue is None:
        item_codes = item_encoder.fit_transform(frame["item"])
    else:
        item_codes = item_encoder.fit_from_classes(item_catalogue).transform(frame["item"])
    item_codes = np.asarray(item_codes, dtype=np.int64)
    user_ids, item_ids = user_encoder.classes_, item_encoder.classes_
    stamps = frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None
    split = rating_split(
        user_codes,
        stamps,
        options.split,
        seed=options.seed,
        fold=options.fold,
        val_fraction=options.val_fraction,
        test_fraction=options.test_fraction,
    )
    values = frame["rating"].to_numpy(dtype=np.float64)
    train = values[split.train_rows]
    if not len(train):
        raise ValueError(f"{name}: no training ratings left after the split")
    ratings = RatingRows(
        train_ratings=train.astype(np.float32),
        val_users=user_codes[split.val_rows],
        val_items=item_codes[split.val_rows],
        val_ratings=values[split.val_rows].astype(np.float32),
        test_users=user_codes[split.test_rows],
        test_items=item_codes[split.test_rows],
        test_ratings=values[split.test_rows].astype(np.float32),
        mean=float(train.mean()),
        low=float(train.min()),
        high=float(train.max()),
    )
    no_item = np.full(len(user_ids), -1, dtype=np.int64)
    return PreparedData(
        name=name,
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        train_users=user_codes[split.train_rows],
        train_items=item_codes[split.train_rows],
        val_items=no_item,
        test_items=no_item.copy(),
        eval_negatives=np.zeros((len(user_ids), 0), dtype=np.int64),
        seed=options.seed,
        user_table=_aligned(users, "user", np.asarray(user_ids)),
        item_table=_aligned(items, "item", np.asarray(item_ids)),
        preparation=preparation,
        ratings=ratings,
    )


def to_implicit(frame: pd.DataFrame, threshold: float = 0.0) -> pd.DataFrame:
    """Keep interactions with ``rating >= threshold`` (every one if 0): what is
    left are the positives. File order is kept."""
    if threshold <= 0:
        return frame
    keep = frame["rating"].to_numpy() >= threshold
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


def filter_k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Repeatedly drop users and items with fewer than ``k`` interactions until
    every remaining user and item has at least ``k``. File order is kept."""
    if k <= 1:
        return frame
    users = pd.factorize(frame["user"])[0]
    items = pd.factorize(frame["item"])[0]
    keep = np.ones(len(frame), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max() + 1 if len(users) else 0)
        item_counts = np.bincount(items[keep], minlength=items.max() + 1 if len(items) else 0)
        ok = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if (ok == keep).all():
            break
        keep = ok
    if not keep.any():
        raise ValueError(f"k-core={k}: no interactions left; lower k-core")
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


def _load_source(options: DataOptions) -> LoadedData:
    """Load and validate the dataset ``options`` names (duplicates resolved)."""
    if options.dataset in MOVIELENS:
        return load_movielens(
            options.dataset,
            options.data_dir or None,
            lenient=options.lenient,
            duplicates=options.duplicates,
        )
    if options.dataset == "atomic":
        return read_atomic(options.data_dir, lenient=options.lenient, duplicates=options.duplicates)
    path = Path(options.data_dir)
    if path.suffix == ".inter":
        return read_atomic(path, lenient=options.lenient, duplicates=options.duplicates)
    # partition-by on a custom log names a column of the log itself (e.g. region).
    by = {"age-bucket": "age", "zip-prefix": "zip"}.get(options.partition_by, options.partition_by)
    return read_log(
        path,
        parse_columns(options.log_columns) or None,
        lenient=options.lenient,
        duplicates=options.duplicates,
        user_columns=(by,) if options.partitioner == "attribute" else (),
    )


def _prepare_loaded(
    loaded: LoadedData,
    options: DataOptions,
    *,
    item_catalogue: np.ndarray | None = None,
    negatives_salt: int | None = None,
) -> PreparedData:
    """Implicit conversion, k-core, encoding, split and negatives for a loaded log.

    Parameters
    ----------
    loaded : LoadedData
        A validated log.
    options : DataOptions
        Threshold, k-core, seed and negatives.
    item_catalogue : numpy.ndarray, optional (default: None)
        Shared catalogue to encode items against (node-local data).
    negatives_salt : int, optional (default: None)
        Extra seed entropy for the evaluation negatives.
    """
    frame = loaded.interactions
    if options.task == "rating" and not loaded.rated:
        raise DataFileError(
            f"{loaded.name or options.dataset}: task='rating' needs a rating column and this "
            "log has none; name it in log-columns (e.g. 'user=uid,item=sku,rating=stars') "
            "or set task='ranking'"
        )
    rows_loaded = len(frame)
    # The rating task keeps every rating (its options refuse a threshold).
    frame = to_implicit(frame, options.implicit_threshold)
    rows_implicit = len(frame)
    frame = filter_k_core(frame, options.k_core)
    preparation = {
        "implicit-threshold": options.implicit_threshold,
        "k-core": options.k_core,
        "rows-loaded": rows_loaded,
        "rows-below-threshold": rows_loaded - rows_implicit,
        "rows-removed-by-k-core": rows_implicit - len(frame),
        "validation": loaded.report.to_dict(),
        **_split_record(options),
    }
    return _prepare_frame(
        frame,
        name=options.dataset,
        seed=options.seed,
        num_eval_negatives=options.num_eval_negatives,
        users=loaded.users,
        items=loaded.items,
        item_catalogue=item_catalogue,
        preparation=preparation,
        negatives_salt=negatives_salt,
        options=options,
    )


@functools.lru_cache(maxsize=4)
def prepare_data(options: DataOptions) -> PreparedData:
    """Load, validate, prepare, encode and split the dataset ``options`` names.

    The one way from options to a :class:`PreparedData`; cached per process
    on ``options`` (a frozen, hashable dataclass).

    Parameters
    ----------
    options : DataOptions
        Dataset and files, validation and duplicates, implicit threshold,
        k-core, seed and evaluation negatives.

    Returns
    -------
    PreparedData
        Same options and source files, same bits.

    Raises
    ------
    DataFileError
        If a file is missing or malformed (one line naming it).
    ValueError
        If the options leave too little data (k-core, fewer than three
        interactions for a user).
    """
    return _prepare_loaded(_load_source(options), options)


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
    raw_user_ids : numpy.ndarray or None (default: None)
        Raw id (text) of each local user, for recommendations; None when the
        data was built in memory without ids.
    raw_item_ids : numpy.ndarray or None (default: None)
        Raw id (text) of each item code (the catalogue).
    user_table, item_table : pandas.DataFrame or None (default: None)
        Side features: row ``i`` describes local user ``i`` / item code ``i``;
        None where the data has none.
    ratings : RatingRows or None (default: None)
        The rating task's ratings, users as local indices (``val_items`` /
        ``test_items`` are then -1); None for ranking.
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
    raw_user_ids: np.ndarray | None = None
    raw_item_ids: np.ndarray | None = None
    user_table: pd.DataFrame | None = None
    item_table: pd.DataFrame | None = None
    ratings: RatingRows | None = None

    @property
    def num_users(self) -> int:
        return len(self.users)

    def context(self) -> NodeContext:
        """What a model may read of this group besides ids (:meth:`Recommender.bind`)."""
        return NodeContext(
            num_users=self.num_users,
            train_users=self.train_users,
            train_items=self.train_items,
            val_items=self.val_items,
            test_items=self.test_items,
            user_table=self.user_table,
            item_table=self.item_table,
        )

    @property
    def num_train(self) -> int:
        return len(self.train_items)

    def held_out(self) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` of every held-out pair: validation then test (one
        each per user for ranking, the held-out ratings for the rating task)."""
        if self.ratings is not None:
            val_users, val_items, _ = self.ratings.part(VAL_PART)
            test_users, test_items, _ = self.ratings.part(TEST_PART)
            return np.concatenate([val_users, test_users]), np.concatenate([val_items, test_items])
        local = np.arange(self.num_users)
        return np.concatenate([local, local]), np.concatenate([self.val_items, self.test_items])

    def negative_pool(self, pool: str) -> InteractionSet:
        """Pairs never drawn as *training* negatives.

        Parameters
        ----------
        pool : str
            ``"train"`` (the default protocol): the training interactions only,
            so held-out items stay eligible and nothing about them reaches
            training. ``"history"``: every interaction of the user, held-out
            validation and test items included. That is what several published
            federated recommenders' reference code does; it leaks the answer (the
            held-out item is the one item never drawn as a negative) and is
            offered only to reproduce their numbers.
        """
        if pool == "train":
            return self.train_set
        if pool == "history":
            held_users, held_items = self.held_out()
            return InteractionSet(
                np.concatenate([self.train_users, held_users]),
                np.concatenate([self.train_items, held_items]),
                self.num_items,
            )
        raise ValueError(f"negative-pool={pool!r}: unknown; accepted: {', '.join(NEGATIVE_POOLS)}")
