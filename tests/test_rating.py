"""The rating task (``task='rating'``): splits, MSE training, exact RMSE/MAE, runs.

Known answers are computed here by hand or by an independent re-implementation
(Surprise's K-fold rule with numpy's ``array_split``), never by the code under test.
"""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import write_u_data
from flwr.app import MetricRecord, RecordDict
from torch import nn

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.datasets import DataOptions, load_client_data, prepare_data
from fedrec_flwr.datasets._errors import DataFileError
from fedrec_flwr.datasets.prepare import _load_source
from fedrec_flwr.datasets.split import kfold_test_rows, rating_split, temporal_leave_one_out
from fedrec_flwr.runs.centralized import run_centralized
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.strategies.aggregate import exact_metric_aggregation
from fedrec_flwr.testing.inprocess import InProcessGrid
from fedrec_flwr.train.evaluate import evaluate_ratings, rate_val_test
from fedrec_flwr.train.group import train_rating_epochs
from fedrec_flwr.train.metrics import RATING_SUMS, rating_metrics, rating_sums

logging.getLogger("flwr").setLevel(logging.WARNING)


# --- metrics: known answers --------------------------------------------------------


def test_rating_sums_and_metrics_known_answer():
    sums = rating_sums(np.array([3.0, 4.5, 1.0]), np.array([4.0, 4.0, 2.0]))
    # errors -1, 0.5, -1
    assert sums == {"sq-error": 2.25, "abs-error": 2.5, "ratings": 3.0}
    assert rating_metrics(sums) == {"rmse": math.sqrt(0.75), "mae": 2.5 / 3}
    # The server divides every sum by the same total weight: the ratios stay.
    per_user = {k: v / 7 for k, v in sums.items()}
    assert rating_metrics(per_user) == pytest.approx({"rmse": math.sqrt(0.75), "mae": 2.5 / 3})
    assert rating_metrics({"hr@10": 0.5}) == {"hr@10": 0.5}  # ranking passes unchanged
    assert all(math.isnan(v) for v in rating_metrics(dict.fromkeys(RATING_SUMS, 0.0)).values())


class _Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, users, items):
        return torch.full((len(users),), self.value)


def test_evaluate_ratings_adds_the_offset_and_clips():
    ratings = np.array([1.0, 5.0, 4.0, 2.0])
    # Output 0 + offset 3.5 predicts 3.5: errors -2.5, 1.5, 0.5, -1.5.
    at_mean = evaluate_ratings(
        _Constant(0.0), np.zeros(4), np.arange(4), ratings, offset=3.5, low=1, high=5, num_users=2
    )
    assert at_mean.sums == {"sq-error": 11.0, "abs-error": 6.0, "ratings": 4.0}
    assert at_mean.loss == 11.0 / 4 and at_mean.num_users == 2
    # 3.5 + 10 is clipped to 5: errors 4, 0, 1, 3.
    clipped = evaluate_ratings(
        _Constant(10.0), np.zeros(4), np.arange(4), ratings, offset=3.5, low=1, high=5, num_users=2
    )
    assert clipped.sums == {"sq-error": 26.0, "abs-error": 8.0, "ratings": 4.0}


def _reply(**metrics):
    return RecordDict({"metrics": MetricRecord(metrics)})


def test_server_combines_exact_sums_not_means_of_client_rmse():
    # Node A: 1 rating, squared error 4; node B: 3 ratings, squared errors 0.
    a = _reply(**{"num-users": 1, "val-sq-error-sum": 4.0, "val-abs-error-sum": 2.0,
                  "val-ratings-sum": 1.0})  # fmt: skip
    b = _reply(**{"num-users": 3, "val-sq-error-sum": 0.0, "val-abs-error-sum": 0.0,
                  "val-ratings-sum": 3.0})  # fmt: skip
    means = exact_metric_aggregation([a, b], "num-users")
    val = rating_metrics({k[len("val-") :]: float(v) for k, v in means.items()})
    assert val == pytest.approx({"rmse": 1.0, "mae": 0.5})  # sqrt(4 / 4), 2 / 4
    # Averaging the nodes' RMSEs (2 and 0) by users would say 0.5: not what we report.


# --- splits --------------------------------------------------------------------------


def _surprise_folds(n):
    """Surprise's KFold(n_splits=5, random_state=0): its shuffled order cut into
    5 runs, the first n % 5 one longer (numpy's array_split cuts exactly so)."""
    return np.array_split(np.random.RandomState(0).permutation(n), 5)


@pytest.mark.parametrize("n", [100_000, 23, 5])
def test_kfold_folds_are_surprises_and_partition_the_ratings(n):
    folds = [kfold_test_rows(n, f) for f in range(5)]
    for mine, theirs in zip(folds, _surprise_folds(n), strict=True):
        assert np.array_equal(mine, theirs)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(n))  # disjoint, complete
    assert len({tuple(np.sort(f)) for f in folds}) == 5  # they differ


def test_kfold_split_holds_out_the_fold_and_carves_validation_by_seed():
    users = np.repeat(np.arange(20), 10)
    parts = [rating_split(users, None, "kfold", seed=1, fold=f) for f in range(5)]
    for f, part in enumerate(parts):
        assert set(part.test_rows) == set(kfold_test_rows(200, f))
        rest = np.concatenate([part.train_rows, part.val_rows])
        assert np.array_equal(np.sort(np.concatenate([rest, part.test_rows])), np.arange(200))
        assert len(part.val_rows) == math.ceil(0.1 * 160)
        for rows in (part.train_rows, part.val_rows, part.test_rows):
            assert np.all(np.diff(users[rows]) >= 0)  # grouped by user
    again = rating_split(users, None, "kfold", seed=1, fold=0)
    other = rating_split(users, None, "kfold", seed=2, fold=0)
    assert np.array_equal(again.val_rows, parts[0].val_rows)
    assert np.array_equal(other.test_rows, parts[0].test_rows)  # the fold is Surprise's
    assert not np.array_equal(other.val_rows, parts[0].val_rows)  # validation is seeded


def test_random_split_is_seeded_disjoint_and_sized():
    users = np.repeat(np.arange(50), 20)
    a = rating_split(users, None, "random", seed=7)
    assert np.array_equal(a.test_rows, rating_split(users, None, "random", seed=7).test_rows)
    assert not np.array_equal(a.test_rows, rating_split(users, None, "random", seed=8).test_rows)
    assert (len(a.test_rows), len(a.val_rows)) == (200, 80)  # ceil(0.2 * 1000), ceil(0.1 * 800)
    everything = np.concatenate([a.train_rows, a.val_rows, a.test_rows])
    assert np.array_equal(np.sort(everything), np.arange(1000))
    b = rating_split(users, None, "random", seed=7, val_fraction=0.25, test_fraction=0.5)
    assert (len(b.test_rows), len(b.val_rows)) == (500, 125)


def _rating_options(ml100k_dir, **keys):
    return RunConfig.from_mapping({"data-dir": str(ml100k_dir), "task": "rating", **keys}).data


def test_ml100k_kfold_test_ratings_are_the_fold_in_file_order(ml100k_dir):
    options = _rating_options(ml100k_dir, split="kfold", fold=3)
    frame = _load_source(options).interactions
    prepared = prepare_data(options)
    r = prepared.ratings
    rows = np.sort(kfold_test_rows(len(frame), 3))
    expected = set(zip(frame["user"].to_numpy()[rows], frame["item"].to_numpy()[rows],
                       frame["rating"].to_numpy()[rows], strict=True))  # fmt: skip
    got = set(zip(prepared.user_ids[r.test_users], prepared.item_ids[r.test_items],
                  r.test_ratings.astype(float), strict=True))  # fmt: skip
    assert len(frame) == 100_000 and got == expected
    stats = prepared.stats()
    assert (stats["num-interactions"], stats["num-test-ratings"], stats["num-val-ratings"]) == (
        100_000,
        20_000,
        8_000,
    )
    assert r.mean == pytest.approx(float(np.mean(r.train_ratings)))
    assert prepared.eval_negatives.shape == (943, 0)
    protocol = prepared.protocol()
    assert protocol["task"] == "rating" and "test fold 3" in protocol["split"]
    assert protocol["model-selection"] == "round/epoch with the lowest validation RMSE"


def test_ml100k_temporal_rating_split_is_the_leave_one_out_rows(ml100k_dir):
    options = _rating_options(ml100k_dir)  # split='leave-one-out'
    frame = _load_source(options).interactions
    prepared = prepare_data(options)
    loo = temporal_leave_one_out(
        np.searchsorted(prepared.user_ids, frame["user"].to_numpy()), frame["timestamp"].to_numpy()
    )
    r = prepared.ratings
    ratings = frame["rating"].to_numpy()
    assert np.array_equal(r.test_ratings, ratings[loo.test_rows])
    assert np.array_equal(r.val_ratings, ratings[loo.val_rows])
    assert np.array_equal(r.train_ratings, ratings[loo.train_rows])
    assert np.array_equal(r.test_users, np.arange(943))  # one test rating per user
    assert set(np.unique(r.train_ratings)) == {1, 2, 3, 4, 5}  # nothing turned implicit


def test_cache_partitions_hold_the_in_memory_ratings(ml100k_dir):
    options = _rating_options(ml100k_dir, split="random")
    prepared = prepare_data(options)
    total = 0
    for p in range(3):
        cached, memory = load_client_data(options, p, 3), prepared.client_data(p, 3)
        assert np.array_equal(cached.users, memory.users)
        for name in ("train_ratings", "val_users", "val_items", "val_ratings", "test_users",
                     "test_items", "test_ratings"):  # fmt: skip
            assert np.array_equal(getattr(cached.ratings, name), getattr(memory.ratings, name))
        assert cached.ratings.offset() == memory.ratings.offset() == prepared.ratings.offset()
        total += len(cached.ratings.test_ratings)
    assert total == len(prepared.ratings.test_ratings) == 20_000


# --- training: a rank-1 matrix, and its negative control ------------------------------


def _rank_one_rows(num_users=40, num_items=30, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(1.0, 2.2, num_users), rng.uniform(1.0, 2.2, num_items)
    rows, t = [], 0
    for u in range(num_users):
        for i in range(num_items):
            t += 1
            rows.append((u + 1, i + 1, round(float(a[u] * b[i]), 6), 1_000_000 + t))
    return [rows[k] for k in rng.permutation(len(rows))]


@pytest.fixture(scope="module")
def rank_one(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("rank-one"), _rank_one_rows())


def test_mf_fits_a_rank_one_matrix_and_the_global_mean_does_not(rank_one, tmp_path):
    keys = {"data-dir": str(rank_one), "task": "rating", "split": "random", "model": "mf",
            "factors": 2, "learning-rate": 0.02, "batch-size": 32, "num-server-rounds": 60,
            "num-threads": 1, "output-dir": str(tmp_path)}  # fmt: skip
    cfg = RunConfig.from_mapping(keys)
    path, selected = run_centralized(cfg, log=False)
    results = json.loads(path.read_text())
    assert selected["test"]["rmse"] < 0.1 and selected["test"]["mae"] < 0.1
    # Selected by the lowest validation RMSE, and the round entries hold both metrics.
    vals = [r["val"]["rmse"] for r in results["rounds"]]
    assert selected["by"] == "val-rmse" and selected["round"] == 1 + int(np.argmin(vals))
    assert set(results["rounds"][0]["test"]) == {"rmse", "mae"}
    assert results["protocol"]["task"] == "rating" and "negative-pool" not in results["protocol"]
    # Negative control: predicting the mean training rating for everyone.
    data = prepare_data(cfg.data).client_data()
    r = data.ratings
    users, items, values = r.part("test")
    mean_only = evaluate_ratings(_Constant(0.0), users, items, values, offset=r.mean,
                                 low=r.low, high=r.high, num_users=data.num_users)  # fmt: skip
    assert rating_metrics(mean_only.sums)["rmse"] > 0.3


@pytest.mark.parametrize("model", ["gmf", "mlp", "neumf", "mf"])
def test_every_rating_model_starts_at_the_mean_and_fits_by_mse(rank_one, model):
    keys = {"data-dir": str(rank_one), "task": "rating", "split": "random", "model": model,
            "factors": 8, "mlp-layers": "16,8"}  # fmt: skip
    cfg = RunConfig.from_mapping(keys)
    data = prepare_data(cfg.data).client_data()
    r = data.ratings
    net = cfg.model.build(data.num_users, data.num_items, seed=0)
    values = r.test_ratings
    mean_only = rating_metrics(rating_sums(np.full(len(values), r.mean), values))["rmse"]
    start = rating_metrics(rate_val_test(net, data)[1].sums)["rmse"]
    assert start == pytest.approx(mean_only, rel=0.05)  # output ~0: the offset predicts
    loss = train_rating_epochs(net, data.train_users, data.train_items, r.train_ratings,
                               offset=r.mean, epochs=40, batch_size=32,
                               optimizer=torch.optim.Adam(net.parameters(), lr=0.01),
                               rng=np.random.default_rng(0))  # fmt: skip
    assert loss < 0.01
    assert rating_metrics(rate_val_test(net, data)[1].sums)["rmse"] < 0.1 < mean_only


# --- federated: in-process Flower rounds -----------------------------------------------


def test_federated_rating_run_reports_exact_rmse_and_selects_by_validation(rank_one, tmp_path):
    rc = {"data-dir": str(rank_one), "task": "rating", "split": "kfold", "fold": 1,
          "model": "mf", "factors": 2, "learning-rate": 0.02, "batch-size": 32,
          "local-epochs": 2, "num-server-rounds": 4, "finetune-epochs": 1}  # fmt: skip
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc)
    results = json.loads(run_federated(grid, RunConfig.from_mapping(rc), tmp_path).read_text())
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for entry in rounds:
        for part in ("val", "test", "global-val", "global-test"):
            assert set(entry[part]) == {"rmse", "mae"} and entry[part]["mae"] > 0
        assert entry["val-loss"] == pytest.approx(entry["val"]["rmse"] ** 2)
        assert entry["train-loss"] > 0
    # Learning happens: the global model's validation error falls.
    assert rounds[-1]["global-val"]["rmse"] < rounds[0]["global-val"]["rmse"]
    vals = [r["val"]["rmse"] for r in rounds]
    assert results["selected"]["by"] == "val-rmse"
    assert results["selected"]["round"] == 1 + int(np.argmin(vals))
    # The last round's test RMSE is the pooled one: sum of the nodes' squared
    # errors over the sum of their ratings, from the replies the server got.
    records = [next(iter(m.content.metric_records.values())) for m in grid.replies]
    metrics = [m for m in records if "test-sq-error-sum" in m][-2:]  # round 4's evaluation
    squared = sum(float(m["test-sq-error-sum"]) for m in metrics)
    count = sum(float(m["test-ratings-sum"]) for m in metrics)
    assert count == len(prepare_data(RunConfig.from_mapping(rc).data).ratings.test_ratings)
    assert rounds[-1]["test"]["rmse"] == pytest.approx(math.sqrt(squared / count), rel=1e-12)
    assert results["protocol"]["task"] == "rating"


# --- bad input: one line naming the key or column and the fix ---------------------------


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"task": "rating", "negative-pool": "history"},
         r"^negative-pool='history' with task='rating': .* leave negative-pool='train'$"),
        ({"split": "kfold"}, r"^split='kfold' with task='ranking': .*set task='rating'"),
        ({"task": "rating", "split": "kfold", "fold": 5}, r"^fold=5: must be in 0\.\.4"),
        ({"task": "rating", "split": "random", "fold": 2},
         r"^fold=2 with split='random': it applies only to split='kfold'"),
        ({"task": "rating", "split": "random", "val-fraction": 1.0},
         r"^val-fraction=1: must be in \(0, 1\)$"),
        ({"task": "rating", "test-fraction": 0.3},
         r"^test-fraction=0.3 with split='leave-one-out': .*split='random'"),
        ({"task": "rating", "implicit-threshold": 4},
         r"^implicit-threshold=4 with task='rating': .*set implicit-threshold=0$"),
        ({"task": "rating", "client-mode": "per-user"},
         r"^client-mode='per-user' with task='rating': .*set client-mode='group'$"),
        ({"task": "rating", "finetune-unit": "user"},
         r"^finetune-unit='user' with task='rating': .*set finetune-unit='client'$"),
        ({"task": "rating", "num-negatives": 8},
         r"^num-negatives=8 with task='rating': a ranking key .*leave num-negatives=4$"),
        ({"task": "rating", "num-eval-negatives": 49},
         r"^num-eval-negatives=49 with task='rating': .*leave num-eval-negatives=99$"),
        ({"task": "rating", "top-k": "5,10"},
         r"^top-k='5,10' with task='rating': .*leave top-k='10'$"),
        ({"task": "rating", "model": "hybrid"},
         r"^model='hybrid' with task='rating': .*gmf, mlp, neumf, mf"),
        ({"task": "regression"}, r"^task='regression': unknown; accepted: ranking, rating$"),
    ],
)  # fmt: skip
def test_bad_rating_keys_fail_in_one_line(keys, match):
    with pytest.raises(ConfigError, match=match) as exc:
        RunConfig.from_mapping(keys)
    assert "\n" not in str(exc.value)


def test_a_log_without_ratings_is_refused_naming_the_column(tmp_path):
    log = tmp_path / "clicks.csv"
    rows = [f"{u},{u * 4 + i},{u * 10 + i}\n" for u in range(3) for i in range(4)]
    log.write_text("user,item,timestamp\n" + "".join(rows))
    options = DataOptions(dataset="log", data_dir=str(log), task="rating")
    with pytest.raises(DataFileError, match=r"task='rating' needs a rating column") as exc:
        prepare_data(options)
    assert "log-columns" in str(exc.value) and "\n" not in str(exc.value)
    # The ranking task reads the same log (every row a positive).
    ranking = DataOptions(dataset="log", data_dir=str(log), num_eval_negatives=2)
    assert prepare_data(ranking).num_users == 3


def test_temporal_rating_split_needs_timestamps(tmp_path):
    log = tmp_path / "ratings.csv"
    rows = [f"{u},{i},{1 + (u + i) % 5}\n" for u in range(4) for i in range(5)]
    log.write_text("user,item,rating\n" + "".join(rows))
    with pytest.raises(ValueError, match=r"no timestamp column; split='leave-one-out' needs one"):
        prepare_data(DataOptions(dataset="log", data_dir=str(log), task="rating"))
    options = DataOptions(dataset="log", data_dir=str(log), task="rating", split="random")
    random = prepare_data(options)
    assert len(random.ratings.test_ratings) == 4  # ceil(0.2 * 20)


@pytest.mark.flower
def test_flwr_run_trains_the_rating_task(tmp_path, ml100k_dir):
    """The FAB under `flwr run` (SuperLink, Ray SuperNodes): rating rounds, RMSE/MAE written."""
    from conftest import flwr_run

    out = tmp_path / "results"
    run_config = (
        f"task='rating' model='mf' split='random' num-server-rounds=3 data-dir='{ml100k_dir}' "
        f"output-dir='{out}'"
    )
    code, log, _ = flwr_run(tmp_path, run_config)
    assert code == 0 and (out / "results.json").is_file(), log[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["task"] == "rating"
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["failures"] == 0 and "hr@10" not in r["test"] for r in rounds)
    # Training moves the model: the validation RMSE falls from round 1 to 3.
    assert rounds[-1]["val"]["rmse"] < rounds[0]["val"]["rmse"] < 4
    assert 0 < rounds[-1]["test"]["mae"] <= rounds[-1]["test"]["rmse"]
