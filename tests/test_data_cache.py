"""Partition cache, node-local data, run-config wiring and the `fedrec data` CLI."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedrec_flwr.app import client_app
from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.datasets import (
    DataFileError,
    DataOptions,
    build_partition_cache,
    cache,
    load_client_data,
    prepare_data,
    read_cache_meta,
    read_catalogue,
)
from fedrec_flwr.datasets.local import load_local_client_data
from fedrec_flwr.ops.cli import main as fedrec_main

FIELDS = ("users", "train_users", "train_items", "val_items", "test_items", "eval_negatives")


@pytest.fixture(autouse=True)
def _fresh_reads():
    """load_client_data memoizes per process; each test here reads the disk."""
    load_client_data.cache_clear()


def test_client_data_is_memoized_per_process(ml100k_dir):
    options = DataOptions(data_dir=str(ml100k_dir))
    first = load_client_data(options, 1, 3)
    assert load_client_data(options, 1, 3) is first  # a client built every round
    assert load_client_data(options, 2, 3) is not first  # negative control
    with pytest.raises(ValueError, match=r"partition-id=3: must be in \[0, num-partitions=3\)"):
        load_client_data(options, 3, 3)


def _same(a, b) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.num_items == b.num_items and a.partition_id == b.partition_id


def test_default_cache_reproduces_the_random_groups_bit_for_bit(ml100k_dir, monkeypatch):
    options = DataOptions(data_dir=str(ml100k_dir))
    prepared = prepare_data(options)
    for pid in range(4):
        _same(load_client_data(options, pid, 4), prepared.client_data(pid, 4))

    # A later process reads the cache only: preparing again would fail.
    def no_prepare(_options):
        raise AssertionError("prepared again")

    monkeypatch.setattr(cache, "prepare_data", no_prepare)
    load_client_data.cache_clear()  # as in a new process
    _same(load_client_data(options, 2, 4), prepared.client_data(2, 4))
    meta = read_cache_meta(build_partition_cache(options, 4))
    assert meta["dataset"]["num-users"] == 943 and meta["num-items"] == 1682
    assert sum(p["users"] for p in meta["partition-stats"]["partitions"]) == 943


def test_cache_key_follows_options_and_source(ml100k_dir, tmp_path):
    base = DataOptions(data_dir=str(ml100k_dir))
    a = cache._cache_dir_for(base, 4)
    assert cache._cache_dir_for(base, 4) == a
    assert cache._cache_dir_for(base, 5) != a
    assert cache._cache_dir_for(dataclasses.replace(base, seed=1), 4) != a
    assert cache._cache_dir_for(dataclasses.replace(base, k_core=5), 4) != a
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\n1,1,1\n")
    opts = DataOptions(dataset="log", data_dir=str(log))
    before = cache._cache_dir_for(opts, 1)
    log.write_text("user,item,timestamp\n1,1,1\n1,2,2\n")  # the data changed
    assert cache._cache_dir_for(opts, 1) != before


def test_attribute_partitions_through_the_cache(ml100k_dir, monkeypatch):
    options = DataOptions(data_dir=str(ml100k_dir), partitioner="occupation")
    build_partition_cache(options, None)  # as `fedrec data stats` does

    def no_prepare(_options):
        raise AssertionError("prepared again")

    # Clients naming num-partitions=21 reuse the cache built without a number.
    monkeypatch.setattr(cache, "prepare_data", no_prepare)
    parts = [load_client_data(options, p, 21) for p in range(21)]
    assert sum(p.num_users for p in parts) == 943
    assert len({int(u) for p in parts for u in p.users}) == 943
    with pytest.raises(ValueError, match=r"makes 21 partitions, but num-partitions=10"):
        load_client_data(options, 0, 10)


def test_preparation_options_change_the_data(ml100k_dir):
    strict = prepare_data(DataOptions(data_dir=str(ml100k_dir), implicit_threshold=4, k_core=10))
    prep = strict.preparation
    # ML-100K has 55,375 ratings of 4 or 5.
    assert prep["rows-below-threshold"] == 100_000 - 55_375
    assert prep["rows-removed-by-k-core"] > 0
    assert strict.num_users < 943 and strict.num_items < 1682
    counts = np.bincount(strict.train_users) + 2  # + validation and test item
    assert counts.min() >= 10
    assert strict.protocol()["feedback"] == "implicit: ratings >= 4 are positives, the rest dropped"


def _site_log(path, prepared, users):
    """Write the raw interactions of ``users`` (global codes) as a CSV log."""
    rows = []
    for u in users:
        items = np.r_[
            prepared.train_items[prepared.train_users == u],
            prepared.val_items[u],
            prepared.test_items[u],
        ]
        # Training rows first, then validation, then test: timestamps in that order.
        for t, i in enumerate(items):
            rows.append((prepared.user_ids[u], prepared.item_ids[i], 1.0, float(t)))
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(path, index=False)
    return path


def test_node_local_file_uses_the_shared_catalogue(ml100k_dir, tmp_path):
    options = DataOptions(data_dir=str(ml100k_dir))
    prepared = prepare_data(options)
    assert fedrec_main(["data", "catalogue", "ml-100k", "--data-dir", str(ml100k_dir),
                        "--out", str(tmp_path / "catalogue.txt")]) == 0  # fmt: skip
    catalogue = read_catalogue(tmp_path / "catalogue.txt")
    np.testing.assert_array_equal(catalogue, prepared.item_ids)
    site = _site_log(tmp_path / "site.csv", prepared, users=[0, 5, 9])
    data = load_local_client_data(
        str(site), str(tmp_path / "catalogue.txt"), options, partition_id=3, num_partitions=4
    )
    assert data.num_items == 1682 and data.num_users == 3
    assert (data.partition_id, data.num_partitions) == (3, 4)
    # Item codes agree with the centrally prepared data.
    np.testing.assert_array_equal(data.test_items, prepared.test_items[[0, 5, 9]])
    np.testing.assert_array_equal(data.val_items, prepared.val_items[[0, 5, 9]])
    assert not data.train_set.contains(np.arange(3), data.test_items).any()


def test_node_local_items_outside_the_catalogue(tmp_path):
    (tmp_path / "catalogue.txt").write_text("1\n2\n3\n4\n5\n6\n")
    log = tmp_path / "site.csv"
    log.write_text("user,item,timestamp\n7,1,1\n7,2,2\n7,3,3\n7,99,4\n")
    with pytest.raises(DataFileError, match=r"1 rows name items outside the catalogue .*99"):
        load_local_client_data(str(log), str(tmp_path / "catalogue.txt"), DataOptions(
            num_eval_negatives=2), 0, 1)  # fmt: skip
    lenient = DataOptions(num_eval_negatives=2, validation="lenient")
    data = load_local_client_data(str(log), str(tmp_path / "catalogue.txt"), lenient, 0, 1)
    assert data.num_items == 6 and data.test_items.tolist() == [2]  # item "3", code 2
    with pytest.raises(DataFileError, match="must be absolute paths"):
        load_local_client_data("site.csv", str(tmp_path / "catalogue.txt"), lenient, 0, 1)
    (tmp_path / "bad.txt").write_text("3\n1\n")
    with pytest.raises(DataFileError, match="distinct and sorted"):
        read_catalogue(tmp_path / "bad.txt")


def test_client_app_reads_node_config_data_file(ml100k_dir, tmp_path):
    prepared = prepare_data(DataOptions(data_dir=str(ml100k_dir)))
    (tmp_path / "cat.txt").write_text("".join(f"{i}\n" for i in prepared.item_ids))
    site = _site_log(tmp_path / "site.csv", prepared, users=[1, 2])
    run_config = {"data-dir": str(ml100k_dir), "num-eval-negatives": 99}
    node = {"partition-id": 0, "num-partitions": 2, "data-file": str(site),
            "item-catalogue": str(tmp_path / "cat.txt")}  # fmt: skip
    client = client_app.client_fn(Context(1, 1, node, RecordDict(), run_config))
    assert client.data.num_users == 2 and client.data.num_items == 1682
    del node["item-catalogue"]
    with pytest.raises(ConfigError, match="data-file and item-catalogue go together"):
        client_app.client_fn(Context(1, 1, node, RecordDict(), run_config))


def test_client_app_partitioner_from_run_config(ml100k_dir):
    run_config = {"data-dir": str(ml100k_dir), "partitioner": "occupation"}
    node = {"partition-id": 18, "num-partitions": 21}
    client = client_app.client_fn(Context(1, 1, node, RecordDict(), run_config))
    assert client.data.num_users == 196  # the students


def test_run_config_data_keys():
    cfg = RunConfig.from_mapping(
        {"partitioner": "dirichlet", "dirichlet-alpha": 0.1, "k-core": 5, "validation": "lenient"}
    )
    opts = cfg.data
    assert (opts.partitioner, opts.dirichlet_alpha, opts.k_core, opts.lenient) == (
        "dirichlet",
        0.1,
        5,
        True,
    )
    assert RunConfig().data == DataOptions()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"partitioner": "metis"}, r"partitioner='metis': unknown; accepted: random, natural"),
        ({"split": "random-ratio"}, r"split='random-ratio': unknown; accepted: leave-one-out"),
        ({"validation": "loose"}, r"validation='loose': unknown; accepted: strict, lenient"),
        ({"duplicates": "newest"}, r"duplicates='newest': unknown"),
        ({"dirichlet-alpha": 0.0}, r"dirichlet-alpha=0.0: must be > 0"),
        ({"k-core": -1}, r"k-core=-1: must be >= 0"),
        ({"dataset": "log"}, r"dataset=log: data-dir must name the file"),
        ({"log-columns": "who=uid"}, r"log-columns='who=uid': expected role=column pairs"),
    ],
)
def test_bad_data_keys_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_mapping(override)


def test_cli_stats_occupation(ml100k_dir, capsys, tmp_path):
    figure = tmp_path / "occ.png"
    code = fedrec_main(["data", "stats", "ml-100k", "--data-dir", str(ml100k_dir),
                        "--partitioner", "occupation", "--figure", str(figure)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "dataset ml-100k: 943 users, 1682 items, 100000 interactions" in out
    assert "21 partitions" in out and "student" in out
    assert figure.stat().st_size > 1000


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert fedrec_main(["data", "stats", "ml-1m", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data-dir") and "\n" not in err


def test_custom_log_partitioned_by_one_of_its_columns(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{int(i)}", t, ["north", "south", "east"][u % 3])
        for u in range(30)
        for t, i in enumerate(rng.choice(40, size=6, replace=False))
    ]
    log = tmp_path / "clinics.csv"
    pd.DataFrame(rows, columns=["patient", "drug", "ts", "region"]).to_csv(log, index=False)
    options = DataOptions(
        dataset="log",
        data_dir=str(log),
        log_columns="user=patient,item=drug,timestamp=ts",
        partitioner="attribute",
        partition_by="region",
        num_eval_negatives=5,
    )
    parts = [load_client_data(options, p, 3) for p in range(3)]
    assert [p.num_users for p in parts] == [10, 10, 10]
    meta = read_cache_meta(build_partition_cache(options, 3))
    assert meta["labels"] == ["east", "north", "south"]


def test_server_with_only_the_catalogue(ml100k_dir, tmp_path, monkeypatch):
    """Deployment with node-local logs: the server reads the catalogue, no data."""
    import json
    import logging

    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.runs import federated
    from fedrec_flwr.testing.inprocess import InProcessGrid

    logging.getLogger("flwr").setLevel(logging.WARNING)
    prepared = prepare_data(DataOptions(data_dir=str(ml100k_dir)))
    catalogue = tmp_path / "cat.txt"
    catalogue.write_text("".join(f"{i}\n" for i in prepared.item_ids))
    sites = [
        _site_log(tmp_path / f"site{k}.csv", prepared, users=list(range(k, 40, 2))) for k in (0, 1)
    ]
    nodes = [
        {
            "partition-id": k,
            "num-partitions": 2,
            "data-file": str(site),
            "item-catalogue": str(catalogue),
        }
        for k, site in enumerate(sites)
    ]

    def no_data(*args, **kwargs):
        raise AssertionError("the server must not read interaction data")

    monkeypatch.setattr(federated, "prepare_data", no_data)
    rc = {"item-catalogue": str(catalogue), "num-server-rounds": 1, "local-epochs": 1}
    path = federated.run_federated(
        InProcessGrid(client_app.app, nodes, rc), RunConfig.from_mapping(rc), tmp_path / "out"
    )
    results = json.loads(path.read_text())
    assert results["dataset"] == {"item-catalogue": str(catalogue), "num-items": 1682}
    assert results["protocol"]["negative-pool"] == "train"
    assert results["rounds"][0]["replies"] == 4 and results["rounds"][0]["failures"] == 0
    assert 0 < results["rounds"][0]["test"]["hr@10"] <= 1
    with pytest.raises(ValueError, match=r"item-catalogue='cat\.txt' is a relative path"):
        federated.run_federated(
            InProcessGrid(client_app.app, nodes, rc),
            RunConfig.from_mapping({**rc, "item-catalogue": "cat.txt"}),
            tmp_path / "out2",
        )
