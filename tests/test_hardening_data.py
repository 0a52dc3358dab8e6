"""Issue 12, data half: every hostile input gets a clear error, and none changes a result.

Each test pins one case reproduced on the old code (ids past int64 wrapping,
a non-numeric id turning a column into strings, a short row counted as a bad
timestamp, hints naming ``lenient=True``, a damaged partition cache trusted).
"""

import dataclasses
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import checkerboard_rows, write_u_data

from fedrec_flwr.datasets import (
    DROP_KINDS,
    DataFileError,
    DataOptions,
    build_partition_cache,
    cache,
    load_client_data,
    load_movielens,
    prepare_data,
    read_atomic,
    read_atomic_table,
    read_log,
    read_u_data,
    stream_log_to_parquet,
)
from fedrec_flwr.datasets.local import load_local_client_data

FIX = "or set validation='lenient' to drop and count such rows"
BIG = "9223372036854775808"  # 2**63: one past the int64 maximum

# --- case 6: ids beyond int64 ------------------------------------------------------


def _big_id_log(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user,item,timestamp\n"
        "1,1,1\n"
        f"{BIG},2,2\n"  # line 3
        "9223372036854775809,3,3\n"
        "-9223372036854775809,3,4\n"
        "9223372036854775807,4,5\n"  # the int64 maximum itself is fine
        "2,5,6\n"
        "-9223372036854775808,6,7\n"  # and so is the minimum
    )
    return path


def test_id_beyond_int64_is_a_strict_error_naming_file_and_line(tmp_path):
    path = _big_id_log(tmp_path)
    with pytest.raises(
        DataFileError,
        match=rf"events\.csv:3: user id '{BIG}' is an integer beyond the int64 range "
        rf"\(3 such rows in all\); fix the id, {FIX}$",
    ):
        read_log(path)


def test_id_beyond_int64_is_a_counted_drop_in_lenient_mode(tmp_path):
    assert "bad-id" in DROP_KINDS
    data = read_log(_big_id_log(tmp_path), lenient=True)
    assert data.report.dropped["bad-id"] == 3 and data.report.first_line["bad-id"] == 3
    assert data.report.rows_read == 7 and data.report.rows_kept == 4
    assert data.interactions["user"].tolist() == [1, 2**63 - 1, 2, -(2**63)]
    assert data.interactions["user"].dtype == np.int64


def test_a_column_of_ids_mostly_beyond_int64_is_read_as_text(tmp_path):
    """Negative control: such ids are not integers here, and are kept exactly."""
    path = tmp_path / "events.csv"
    path.write_text(f"user,item\n{BIG},1\n9223372036854775809,1\n5,1\n")
    data = read_log(path)
    assert data.interactions["user"].tolist() == [BIG, "9223372036854775809", "5"]


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("u.data", f"1\t1\t5\t1\n{BIG}\t2\t5\t2\n", r"u\.data:2"),
        ("toy.inter", f"user_id:token\titem_id:token\n1\t1\n2\t{BIG}\n3\t1\n", r"toy\.inter:3"),
    ],
)
def test_id_beyond_int64_in_u_data_and_atomic_files(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    read = read_u_data if name == "u.data" else read_atomic
    with pytest.raises(
        DataFileError, match=rf"{where}: (user|item) id '{BIG}' is an integer beyond"
    ):
        read(tmp_path / name)


def test_parquet_ids_beyond_int64(tmp_path):
    path = tmp_path / "e.parquet"
    pd.DataFrame({"user": np.array([1, 2**63 + 5], dtype=np.uint64), "item": [1, 2]}).to_parquet(
        path
    )
    with pytest.raises(DataFileError, match=r"e\.parquet:2: user id '9223372036854775813' is an"):
        read_log(path)
    pd.DataFrame({"user": [1.0, 2.5, 1e19], "item": [1, 2, 3]}).to_parquet(path)
    data = read_log(path, lenient=True)
    assert data.report.dropped["bad-id"] == 2 and data.interactions["user"].tolist() == [1]


# --- case 7: a non-numeric id in an integer-id file ---------------------------------


def test_non_numeric_id_is_a_strict_error_and_a_lenient_drop(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item,timestamp\n1,1,1\ntwo,2,2\n3,3,3\n")
    with pytest.raises(
        DataFileError,
        match=rf"events\.csv:3: user id 'two' is not an integer, while this column's ids are "
        rf"\(1 such rows in all\); fix the id, {FIX}$",
    ):
        read_log(path)
    data = read_log(path, lenient=True)
    assert data.report.dropped["bad-id"] == 1
    assert data.interactions["user"].tolist() == [1, 3]
    assert data.interactions["user"].dtype == np.int64


def test_string_id_columns_stay_strings(tmp_path):
    """Negative control: mostly non-integer ids make a text column, kept verbatim."""
    path = tmp_path / "events.csv"
    path.write_text("user,item,timestamp\nu1,a,1\nu2,b,2\n3,c,3\n007,d,4\n")
    data = read_log(path)
    assert data.interactions["user"].tolist() == ["u1", "u2", "3", "007"]
    assert data.report.total_dropped == 0


def test_id_type_is_decided_once_for_the_whole_file(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item\n1,1\n2,2\nx,3\n4,4\n")  # "x" falls in the second chunk
    with pytest.raises(DataFileError, match=r"events\.csv:4: user id 'x' is not an integer"):
        read_log(path, chunksize=2)
    data = read_log(path, chunksize=2, lenient=True)
    assert data.interactions["user"].tolist() == [1, 2, 4]
    with pytest.raises(DataFileError, match=r"events\.csv:4: user id 'x'.*id_type='str'"):
        stream_log_to_parquet(path, tmp_path / "e.parquet", chunksize=2)


@pytest.mark.parametrize(
    ("ratings", "where"),
    [
        ("1::10::5::1\ntwo::10::5::2\n", r"ratings\.dat:2: user id 'two'"),
        ("1::10::5::1\n1::1.5::5::2\n", r"ratings\.dat:2: item id '1\.5'"),
    ],
)
def test_movielens_dat_ids_are_integers(tmp_path, ratings, where):
    (tmp_path / "ratings.dat").write_text(ratings)
    (tmp_path / "movies.dat").write_text("10::A (1990)::Drama\n")
    with pytest.raises(DataFileError, match=where + r" is not an integer"):
        load_movielens("ml-1m", tmp_path)
    data = load_movielens("ml-1m", tmp_path, lenient=True)
    assert data.report.dropped["bad-id"] == 1 and data.interactions["user"].tolist() == [1]


def test_movielens_csv_and_side_table_ids(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,1\n1,x,4,2\n")
    with pytest.raises(DataFileError, match=r"ratings\.csv:3: item id 'x' is not an integer"):
        load_movielens("ml-20m", tmp_path)
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,1\n")
    (tmp_path / "movies.csv").write_text(f"movieId,title,genres\n10,A,Drama\n{BIG},B,Drama\n")
    with pytest.raises(
        DataFileError, match=rf"movies\.csv:3: item id '{BIG}' is an integer beyond"
    ):
        load_movielens("ml-20m", tmp_path)


def test_atomic_declared_types(tmp_path):
    inter = tmp_path / "toy.inter"
    # A float-declared id field holds numbers: "u1" is an error even though it is the majority.
    inter.write_text("user_id:float\titem_id:token\nu1\ti1\nu2\ti2\n3\ti1\n")
    with pytest.raises(DataFileError, match=r"toy\.inter:2: user id 'u1' is not an integer"):
        read_atomic(inter)
    # token ids decide by their content: here they are text, "3" included.
    inter.write_text("user_id:token\titem_id:token\nu1\ti1\nu2\ti2\n3\ti1\n")
    assert read_atomic(inter).interactions["user"].tolist() == ["u1", "u2", "3"]


def test_side_table_ids_follow_the_interactions(tmp_path):
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\n1\t1\n2\t2\n3\t1\n")
    (tmp_path / "toy.user").write_text(
        "user_id:token\tregion:token\n1\tEU\ntwo\tUS\n3\tUS\n"  # line 3 is bad
    )
    with pytest.raises(
        DataFileError, match=rf"toy\.user:3: user id 'two' is not an integer, while .*{FIX}$"
    ):
        read_atomic(tmp_path / "toy.inter")
    data = read_atomic(tmp_path / "toy.inter", lenient=True)
    assert data.users["user"].tolist() == [1, 3] and data.users["user"].dtype == np.int64
    side = data.report.to_dict()["side-tables"]
    assert side == [
        {
            "source": str(tmp_path / "toy.user"),
            "rows-read": 3,
            "rows-kept": 2,
            "dropped": {**dict.fromkeys(DROP_KINDS, 0), "bad-id": 1},
            "first-line": {"bad-id": 3},
        }
    ]
    with pytest.raises(DataFileError, match=r"toy\.user:3: user id 'two' is not an integer"):
        read_atomic_table(tmp_path / "toy.user", "user_id", id_type="int")


def test_u_user_ids_are_integers(tmp_path):
    write_u_data(tmp_path, [(1, 1, 5, 1), (2, 1, 5, 2)])
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2.5|53|F|other|94043\n")
    with pytest.raises(DataFileError, match=r"u\.user:2: user id '2\.5' is not an integer"):
        load_movielens("ml-100k", tmp_path)


@pytest.fixture(scope="module")
def ml100k_with_a_word_id(ml100k_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml100k-two")
    for suffix in ("user", "item"):
        shutil.copy(ml100k_dir / f"ml-100k.{suffix}", folder / f"ml-100k.{suffix}")
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines(keepends=True)
    user, rest = lines[1].split("\t", 1)
    assert user == "196"
    lines[1] = "two\t" + rest  # line 2: user 196's first rating
    (folder / "ml-100k.inter").write_text("".join(lines))
    return folder


def test_word_id_in_ml100k_keeps_the_occupation_partitions(ml100k_with_a_word_id):
    options = DataOptions(data_dir=str(ml100k_with_a_word_id), partitioner="occupation")
    with pytest.raises(DataFileError, match=r"ml-100k\.inter:2: user id 'two' is not an integer"):
        prepare_data(options)
    lenient = DataOptions(
        data_dir=str(ml100k_with_a_word_id), partitioner="occupation", validation="lenient"
    )
    prepared = prepare_data(lenient)
    assert (
        prepared.num_users == 943 and prepared.preparation["validation"]["dropped"]["bad-id"] == 1
    )
    meta = cache.read_cache_meta(build_partition_cache(lenient, None))
    assert meta["num-partitions"] == 21  # was 1 partition of 944 users: "(missing)"


# --- case 8: short rows, and every strict error names the fix ------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1\t2\t3\t100\n1\t3\t4\n", r"u\.data:2: malformed row: expected 4 fields, saw 3"),
        ("1\t2\t3\t100\n7\n", r"u\.data:2: malformed row: expected 4 fields, saw 1"),
    ],
)
def test_a_missing_field_is_a_malformed_row(tmp_path, text, match):
    (tmp_path / "u.data").write_text(text)
    with pytest.raises(DataFileError, match=rf"{match} \(separator '\\t'\); fix the row, {FIX}$"):
        read_u_data(tmp_path / "u.data")
    from fedrec_flwr.datasets import ValidationReport

    report = ValidationReport("u.data")
    read_u_data(tmp_path / "u.data", lenient=True, report=report)
    assert report.dropped["malformed-row"] == 1 and report.dropped["bad-timestamp"] == 0


def test_an_empty_field_is_still_a_missing_value(tmp_path):
    """Negative control: four fields, the last empty, is a missing timestamp."""
    (tmp_path / "u.data").write_text("1\t2\t3\t100\n1\t3\t4\t\n")
    with pytest.raises(DataFileError, match=rf"u\.data:2: timestamp is missing .*{FIX}$"):
        read_u_data(tmp_path / "u.data")


@pytest.mark.parametrize(
    "row",
    [
        "1\t3\tnan\t5",  # NaN rating
        "1\t3\tinf\t5",
        "1\t3\t4\tinf",  # inf timestamp
        "1\t3\t4\t1e309",  # overflows to inf
        "1\t3\t9\t5",  # out of scale
        "1\t3\t4",  # missing field
        "1\t3\t4\t5\t6",  # extra field
        "\t3\t4\t5",  # missing id
        "x\t3\t4\t5",  # bad id
    ],
)
def test_every_strict_error_is_one_line_with_file_line_and_fix(tmp_path, row):
    (tmp_path / "u.data").write_text(f"1\t2\t3\t100\n{row}\n")
    with pytest.raises(DataFileError) as info:
        read_u_data(tmp_path / "u.data")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'u.data'}:2: ")
    assert message.endswith(FIX) and "lenient=True" not in message and "\n" not in message


def test_not_utf8_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"user,item\n1,1\n2,caf\xe9\n")
    with pytest.raises(DataFileError, match=r"events\.csv:3: not valid utf-8 text.*save the file"):
        read_log(path)


def test_header_errors_are_data_file_errors(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("customer,sku\n1,1\n")
    with pytest.raises(DataFileError, match=r"events\.csv:1: no 'user' column .*log-columns"):
        read_log(path)
    path.write_bytes(b"\xef\xbb\xbfuser,item\n1,1\n")  # a UTF-8 byte-order mark
    assert read_log(path).interactions["user"].tolist() == [1]


# --- case 9: the partition cache is verified ----------------------------------------


@pytest.fixture
def small_options(tmp_path):
    write_u_data(tmp_path / "data", checkerboard_rows(users_per_group=6, items_per_group=12))
    return DataOptions(data_dir=str(tmp_path / "data"), num_eval_negatives=5)


FIELDS = ("users", "train_users", "train_items", "val_items", "test_items", "eval_negatives")


def _same(a, b) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def _reverse_train_items(folder):
    path = folder / "train_items.npy"
    array = np.load(path)
    np.save(path, array[::-1].copy())


def _zero_test_items(folder):
    path = folder / "test_items.npy"
    np.save(path, np.zeros_like(np.load(path)))


def _truncate(name):
    def damage(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _old_version(folder):
    meta = json.loads((folder / "meta.json").read_text())
    for key in ("checksums", "meta-sha256"):
        meta.pop(key)
    meta["format"] = 1
    (folder / "meta.json").write_text(json.dumps(meta))


def _edit_meta(folder):
    """Same size, one digit changed: the item count the model is sized by."""
    text = (folder / "meta.json").read_text()
    edited = text.replace('"num-items": 24', '"num-items": 25')
    assert edited != text and len(edited) == len(text)
    (folder / "meta.json").write_text(edited)


@pytest.mark.parametrize(
    "damage",
    [
        _truncate("train_items.npy"),
        _truncate("meta.json"),
        _reverse_train_items,
        _zero_test_items,
        _old_version,
        _edit_meta,
        _truncate("catalogue.txt"),
    ],
    ids=["npy", "meta", "reversed", "zeroed", "old-format", "meta-edit", "catalogue"],
)
def test_a_damaged_cache_is_rebuilt_with_a_warning(small_options, damage, caplog):
    folder = build_partition_cache(small_options, 2)
    good = [load_client_data(small_options, p, 2) for p in range(2)]
    damage(folder)
    load_client_data.cache_clear()  # as in a new process
    with caplog.at_level(logging.WARNING, logger="fedrec_flwr.datasets.cache"):
        again = [load_client_data(small_options, p, 2) for p in range(2)]
    for a, b in zip(good, again, strict=True):
        _same(a, b)
    assert f"partition cache {folder}" in caplog.text and "rebuilding" in caplog.text
    assert cache.read_cache_meta(folder)["checksums"]  # the rebuilt copy is verified again
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # nothing left


def test_a_damaged_cache_that_cannot_be_rebuilt_is_one_clear_line(small_options):
    folder = build_partition_cache(small_options, 2)
    _zero_test_items(folder)
    with pytest.raises(DataFileError) as info:
        cache._read_partition(folder, 0)
    message = str(info.value)
    assert message.startswith(f"partition cache {folder}: ") and "\n" not in message
    assert f"delete the folder ({folder})" in message


def test_node_local_cache_is_verified_too(tmp_path, caplog):
    (tmp_path / "catalogue.txt").write_text("".join(f"{i}\n" for i in range(1, 7)))
    log = tmp_path / "site.csv"
    log.write_text("user,item,timestamp\n7,1,1\n7,2,2\n7,3,3\n8,4,1\n8,5,2\n8,6,3\n")
    options = DataOptions(num_eval_negatives=2)
    good = load_local_client_data(str(log), str(tmp_path / "catalogue.txt"), options, 0, 1)
    load_local_client_data.cache_clear()
    local = dataclasses.replace(options, dataset="log", data_dir=str(log), partitioner="random")
    extra = {"catalogue": cache._fingerprint(tmp_path / "catalogue.txt"), "partition-id": 0}
    folder = cache._cache_dir_for(local, 1, extra=extra)
    _zero_test_items(folder)
    with caplog.at_level(logging.WARNING, logger="fedrec_flwr.datasets.cache"):
        again = load_local_client_data(str(log), str(tmp_path / "catalogue.txt"), options, 0, 1)
    _same(good, again)
    assert "rebuilding" in caplog.text


def test_checksums_are_recorded_for_every_file(small_options):
    folder = build_partition_cache(small_options, 2)
    meta = cache.read_cache_meta(folder)
    files = {p.name for p in folder.iterdir()} - {"meta.json"}
    assert set(meta["checksums"]["files"]) == files
    assert len(meta["checksums"]["partitions"]) == 2


# --- bugs the fuzzer (tests/test_fuzz_loaders.py) found -------------------------------


@pytest.mark.parametrize("end", ["", "\n"])
def test_a_quote_never_closed_on_the_last_line_is_an_error_in_both_modes(tmp_path, end):
    """Arrow took the rest of the file as the field's value (a lenient load
    then "succeeded" with one bad-timestamp row), unlike the same quote on any
    other line."""
    path = tmp_path / "events.csv"
    path.write_text(f'user,item,rating,timestamp\n1,1,1,5\n1,2,1,",0{end}')
    for lenient in (False, True):
        with pytest.raises(
            DataFileError,
            match=r"events\.csv:3: a quoted field opened on this line is never closed",
        ):
            read_log(path, lenient=lenient)
    path.write_text('user,item,rating,timestamp\n1,1,1,5\n1,2,1,"6"\n')  # closed: fine
    assert read_log(path).interactions["timestamp"].tolist() == [5.0, 6.0]


def test_one_columns_bad_ids_do_not_tip_the_other_columns_type(tmp_path):
    """The item column was typed after the user column had dropped its bad-id
    rows, so 1 of the 2 items left being an integer made the column text."""
    path = tmp_path / "toy.inter"
    path.write_text(
        "user_id:token\titem_id:token\n"
        '1\t"1"\n'  # a quoted item: not an integer
        "two\t1\n"  # a bad user id: the row still counts towards the item type
        "1\t1\n"
    )
    data = read_atomic(path, lenient=True)
    assert data.report.dropped["bad-id"] == 2
    assert data.interactions["item"].tolist() == [1] and data.interactions["item"].dtype == np.int64


def test_catalogue_ids_beyond_int64_stay_text(tmp_path):
    from fedrec_flwr.datasets import read_catalogue

    (tmp_path / "catalogue.txt").write_text(f"1\n2\n{BIG}\n")
    assert read_catalogue(tmp_path / "catalogue.txt").tolist() == ["1", "2", BIG]
    (tmp_path / "catalogue.txt").write_text("1\n2\n30\n")
    assert read_catalogue(tmp_path / "catalogue.txt").dtype == np.int64


def test_parquet_datetime_timestamps_are_seconds_and_nat_is_missing(tmp_path):
    """NaT used to pass as the finite number -9223372036854775808 (and the unit
    followed pandas' datetime resolution)."""
    path = tmp_path / "e.parquet"
    stamps = pd.to_datetime(["2020-01-01", None, "2021-01-01"]).tz_localize("UTC")
    pd.DataFrame({"user": [1, 2, 3], "item": [1, 2, 3], "timestamp": stamps}).to_parquet(path)
    with pytest.raises(DataFileError, match=rf"e\.parquet:2: timestamp is missing .*{FIX}$"):
        read_log(path)
    data = read_log(path, lenient=True)
    assert data.interactions["timestamp"].tolist() == [1577836800.0, 1609459200.0]
    pd.DataFrame({"user": [[1]], "item": [1]}).to_parquet(path)
    with pytest.raises(DataFileError, match=r"column 'user' \(user\) has type list"):
        read_log(path)
