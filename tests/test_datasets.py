import hashlib
import io
import json
import urllib.error
import zipfile

import numpy as np
import pandas as pd
import pytest

from fedrec_flwr.datasets import (
    DataFileError,
    DataOptions,
    InteractionSet,
    fetch_movielens,
    load_movielens,
    movielens,
    partition_users,
    prepare_data,
    read_atomic_inter,
    read_u_data,
    sample_eval_negatives,
    sample_train_negatives,
    temporal_leave_one_out,
)


def test_shared_ml100k_counts(ml100k_dir):
    frame = load_movielens("ml-100k", ml100k_dir).interactions
    assert len(frame) == 100_000
    assert frame["user"].nunique() == 943 and frame["item"].nunique() == 1682
    prepared = prepare_data(DataOptions(data_dir=str(ml100k_dir)))
    assert prepared.stats() == {
        "name": "ml-100k",
        "num-users": 943,
        "num-items": 1682,
        "num-interactions": 100_000,
        "num-train-interactions": 100_000 - 2 * 943,
    }


def test_u_data_and_atomic_files_read_identically(ml100k_dir, tmp_path):
    atomic = read_atomic_inter(ml100k_dir / "ml-100k.inter")
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    pd.testing.assert_frame_equal(read_u_data(tmp_path / "u.data"), atomic)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("1\t2\t3\t100\n1\t2\t3\n", r"u\.data:2: malformed row: expected 4 fields, saw 3"),
        ("1\t2\t3\t100\n1\t2\t3\t100\t7\n", r"u\.data:2: malformed row: expected 4 fields, saw 5"),
        ("1\t2\t3\t100\n\t2\t3\t100\n", r"u\.data:2: missing user id"),
        ("1\t2\tfive\t100\n", r"u\.data:1: rating 'five' is not a finite number"),
        ("1\t2\tnan\t100\n1\t3\tnan\t100\n", r"u\.data:1: rating 'nan'.*\(2 such rows"),
        (
            "1\t2\t3\t100\n1\t2\t9\t100\n",
            r"u\.data:2: rating 9 is outside the scale \[1, 5\]",
        ),
        ("", r"u\.data: no interactions found"),
    ],
)
def test_malformed_u_data_names_file_and_line(tmp_path, content, match):
    (tmp_path / "u.data").write_text(content)
    with pytest.raises(DataFileError, match=match):
        read_u_data(tmp_path / "u.data")


def test_atomic_header_errors(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id\titem_id:token\n1\t2\n")
    with pytest.raises(DataFileError, match=r"x\.inter:1: header field 1 'user_id'"):
        read_atomic_inter(path)
    path.write_text("user_id:token\trating:float\n1\t2\n")
    with pytest.raises(DataFileError, match=r"x\.inter:1: header lacks item_id"):
        read_atomic_inter(path)
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tinf\n")
    with pytest.raises(DataFileError, match=r"x\.inter:3: timestamp 'inf'"):
        read_atomic_inter(path)


def test_data_dir_without_known_files(tmp_path):
    with pytest.raises(DataFileError, match=r"neither u\.data nor ml-100k\.inter"):
        load_movielens("ml-100k", tmp_path)
    with pytest.raises(DataFileError, match="not a directory"):
        load_movielens("ml-100k", tmp_path / "nope")


def test_tie_rule_first_row_in_file_is_latest():
    # user 0: rows 0..3; rows 2 and 3 share the latest timestamp.
    users = np.array([0, 0, 0, 0, 1, 1, 1])
    times = np.array([1, 2, 5, 5, 9, 8, 7])
    split = temporal_leave_one_out(users, times)
    # Among the tied rows 2 and 3, row 2 (first in the file) is the test row.
    assert split.test_rows.tolist() == [2, 4]
    assert split.val_rows.tolist() == [3, 5]
    assert sorted(split.train_rows.tolist()) == [0, 1, 6]


def test_split_needs_three_interactions():
    with pytest.raises(ValueError, match="1 users have fewer than 3"):
        temporal_leave_one_out(np.array([0, 0, 1, 1, 1]), np.arange(5))


def test_eval_negatives_exclude_history_distinct_and_seeded():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 10)
    items = rng.integers(0, 50, size=len(users))
    seen = InteractionSet(users, items, 50)
    a = sample_eval_negatives(np.random.default_rng(1), 20, seen, 25, chunk_users=7)
    b = sample_eval_negatives(np.random.default_rng(1), 20, seen, 25)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20, 25)
    assert not seen.contains(np.repeat(np.arange(20), 25), a.reshape(-1)).any()
    assert all(len(set(row)) == 25 for row in a)
    with pytest.raises(ValueError, match="fewer than 45 items"):
        sample_eval_negatives(np.random.default_rng(1), 20, seen, 45)


def test_train_negatives_avoid_training_items_only():
    train = InteractionSet(np.zeros(3, int), np.array([0, 1, 2]), 5)
    draws = sample_train_negatives(np.random.default_rng(0), np.zeros(2000, int), train, 2)
    assert set(np.unique(draws)) == {3, 4}  # everything outside training, nothing else


def test_partitions_cover_every_user_once_and_are_seeded():
    a = partition_users(943, 10, seed=3)
    np.testing.assert_array_equal(a, partition_users(943, 10, seed=3))
    assert not np.array_equal(a, partition_users(943, 10, seed=4))
    sizes = np.bincount(a)
    assert len(sizes) == 10 and sizes.sum() == 943 and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(np.sort(partition_users(5, 5, 0)), np.arange(5))
    with pytest.raises(ValueError, match="num-partitions=0"):
        partition_users(5, 0, 0)


def test_client_data_is_the_users_slice(ml100k_dir):
    prepared = prepare_data(DataOptions(data_dir=str(ml100k_dir)))
    parts = [prepared.client_data(p, 4) for p in range(4)]
    assert sum(c.num_users for c in parts) == 943
    assert sum(c.num_train for c in parts) == len(prepared.train_items)
    c = parts[1]
    np.testing.assert_array_equal(c.test_items, prepared.test_items[c.users])
    # Held-out items never sit in a client's training set.
    assert not c.train_set.contains(np.arange(c.num_users), c.test_items).any()


def test_prepare_requires_timestamps(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,rating\n1,1,1\n1,2,1\n1,3,1\n")
    with pytest.raises(
        ValueError,
        match=r"^log: no timestamp column; the temporal split needs one .*model='sasrec'.*"
        r"add a timestamp column, or name yours in log-columns",
    ):
        prepare_data(DataOptions(dataset="log", data_dir=str(log), num_eval_negatives=1))
    # Negative control: the same log with timestamps prepares.
    log.write_text(
        "user,item,rating,timestamp\n"
        + "".join(f"{u},{u * 3 + t},1,{t}\n" for u in (0, 1) for t in (1, 2, 3))
    )
    prepared = prepare_data(DataOptions(dataset="log", data_dir=str(log), num_eval_negatives=1))
    assert prepared.test_items.tolist() == [2, 5]  # each user's latest item, as a code


# --- lazy download with checksums (network replaced by local fakes) ----------


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


U_DATA = b"1\t1\t5\t10\n1\t2\t4\t11\n1\t3\t3\t12\n"


def test_fetch_prefers_grouplens_and_checks_md5(tmp_path, monkeypatch):
    archive = _zip_bytes({f"ml-100k/u.{x}": U_DATA for x in ("data", "user", "item")})

    def fake_download(workdir, url, timeout):
        (workdir / "ml-100k.zip").write_bytes(archive)
        return workdir / "ml-100k.zip"

    monkeypatch.setattr(movielens, "_download_grouplens", fake_download)
    with pytest.raises(DataFileError, match=r"md5 .* does not match .*0e33842e"):
        fetch_movielens("ml-100k", tmp_path / "a")
    # Nothing half-written is left, as the cache or beside it.
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(movielens, "ML100K_MD5", hashlib.md5(archive).hexdigest())
    target = fetch_movielens("ml-100k", tmp_path / "b")
    assert json.loads((target / "SOURCE.json").read_text())["source"] == movielens.ML100K_URL
    assert len(read_u_data(target / "u.data")) == 3
    # A second call uses the cache and downloads nothing.
    monkeypatch.setattr(movielens, "_download_grouplens", None)
    assert fetch_movielens("ml-100k", tmp_path / "b") == target


def test_fetch_falls_back_to_recbole_wheel_and_checks_sha256(tmp_path, monkeypatch):
    inter = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
    wheel = _zip_bytes({m: inter for m in movielens._WHEEL_MEMBERS})

    def unreachable(workdir, url, timeout):
        raise urllib.error.URLError("no route to host")

    def fake_pip(workdir):
        (workdir / "recbole-1.2.1-py3-none-any.whl").write_bytes(wheel)
        return workdir / "recbole-1.2.1-py3-none-any.whl"

    monkeypatch.setattr(movielens, "_download_grouplens", unreachable)
    monkeypatch.setattr(movielens, "_download_recbole_wheel", fake_pip)
    with pytest.raises(DataFileError, match=r"sha256 .* recbole==1\.2\.1"):
        fetch_movielens("ml-100k", tmp_path / "a")
    monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    target = fetch_movielens("ml-100k", tmp_path / "b")
    assert json.loads((target / "SOURCE.json").read_text())["source"] == "recbole==1.2.1"
    assert read_atomic_inter(target / "ml-100k.inter")["item"].tolist() == [1, 2, 3]


def test_download_copies_the_bytes_and_shows_progress(tmp_path, capsys):
    source = tmp_path / "ml-100k.zip"
    source.write_bytes(bytes(range(256)) * 10_000)  # 2.56 MB: three 1 MiB blocks
    dest = tmp_path / "copy.zip"
    movielens._download(source.as_uri(), dest, timeout=5)
    assert dest.read_bytes() == source.read_bytes()
    assert capsys.readouterr().err.splitlines() == [
        "downloading copy.zip: 1,048,576/2,560,000 bytes (41%)",
        "downloading copy.zip: 2,097,152/2,560,000 bytes (82%)",
        "downloading copy.zip: 2,560,000/2,560,000 bytes (100%)",
    ]
