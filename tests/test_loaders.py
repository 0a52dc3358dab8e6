"""Loaders on small files the tests write, malformed rows and lenient counts included."""

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec_flwr.datasets import (
    DataFileError,
    IdEncoder,
    InteractionSet,
    ValidationReport,
    apply_duplicate_policy,
    filter_k_core,
    grouplens,
    load_movielens,
    read_atomic,
    read_log,
    sample_eval_negatives,
    stream_log_to_parquet,
    to_implicit,
)

# --- MovieLens 1M / 10M (::-separated, latin-1) -------------------------------


def _write_ml1m(folder, ratings: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    (folder / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_bytes(
        "10::Amélie (2001)::Comedy|Romance\n11::Heat (1995)::Action|Crime|Thriller\n".encode(
            "latin-1"
        )
    )


def test_ml1m_reads_ratings_users_and_movies(tmp_path):
    _write_ml1m(tmp_path / "ml-1m", "1::10::5::978300760\n1::11::3::978302109\n2::10::4::9\n")
    data = load_movielens("ml-1m", tmp_path)  # the zip's ml-1m/ folder is found too
    assert data.interactions.to_dict("list") == {
        "user": [1, 1, 2],
        "item": [10, 11, 10],
        "rating": [5.0, 3.0, 4.0],
        "timestamp": [978300760.0, 978302109.0, 9.0],
    }
    assert data.users.to_dict("list") == {
        "user": [1, 2],
        "age": [1, 56],
        "gender": ["F", "M"],
        "occupation": ["K-12 student", "self-employed"],  # codes 10 and 16 of the README
        "zip": ["48067", "70072"],
    }
    assert data.items["title"].tolist() == ["Amélie (2001)", "Heat (1995)"]
    assert data.items["genres"].tolist() == ["Comedy|Romance", "Action|Crime|Thriller"]
    assert data.report.rows_read == 3 and data.report.total_dropped == 0


@pytest.mark.parametrize(
    ("ratings", "match"),
    [
        (
            "1::10::5::1\n1::11::5::2::9\n",
            r"ratings\.dat:2: malformed row: expected 4 fields, saw 5",
        ),
        ("1::10::5::1\n1::11::5\n", r"ratings\.dat:2: malformed row: expected 4 fields, saw 3"),
        ("1::10::5::1\n1::11::0::2\n", r"ratings\.dat:2: rating 0 is outside the scale \[1, 5\]"),
        ("1::10::5::1\n::11::5::2\n", r"ratings\.dat:2: missing user id"),
    ],
)
def test_ml1m_malformed_rows_name_file_and_line(tmp_path, ratings, match):
    _write_ml1m(tmp_path, ratings)
    with pytest.raises(DataFileError, match=match):
        load_movielens("ml-1m", tmp_path)


def test_ml10m_half_stars_and_no_users(tmp_path):
    folder = tmp_path / "ml-10M100K"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::4.5::5\n2::10::0.5::6\n")
    (folder / "movies.dat").write_text("10::X (1990)::(no genres listed)\n")
    data = load_movielens("ml-10m", tmp_path)
    assert data.interactions["rating"].tolist() == [4.5, 0.5]
    assert data.users is None and data.items["genres"].tolist() == [""]


# --- MovieLens CSV releases (20M, 25M, 32M, latest-small) ---------------------


def test_csv_release_with_quoted_titles(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.5,100\n1,11,0.5,101\n2,11,3.0,102\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "11,Heat (1995),Action\n"
    )
    for name in ("ml-20m", "ml-25m", "ml-32m", "ml-latest-small"):
        data = load_movielens(name, tmp_path)
        assert data.interactions["rating"].tolist() == [4.5, 0.5, 3.0]
        assert data.items["title"].iloc[0] == "American President, The (1995)"


def test_csv_release_errors(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,1\n1,11,6,2\n")
    with pytest.raises(DataFileError, match=r"ratings\.csv:3: rating 6 is outside the scale"):
        load_movielens("ml-20m", tmp_path)
    (tmp_path / "ratings.csv").write_text("user,movieId,rating,timestamp\n1,10,4.5,1\n")
    with pytest.raises(DataFileError, match=r"ratings\.csv:1: header lacks userId"):
        load_movielens("ml-20m", tmp_path)
    with pytest.raises(DataFileError, match=r"no ratings\.dat found"):
        load_movielens("ml-1m", tmp_path)
    with pytest.raises(ValueError, match=r"dataset='ml-2m': unknown; accepted: ml-100k, ml-1m"):
        load_movielens("ml-2m", tmp_path)


# --- lenient validation: exact counts per kind --------------------------------

BAD_LOG = (
    "user\titem\trating\ttimestamp\n"  # line 1
    "1\t10\t4\t100\n"  # 2 ok
    "1\t11\t4\t100\t7\n"  # 3 malformed: 5 fields
    "\t12\t4\t100\n"  # 4 missing user id
    "2\t\t4\t100\n"  # 5 missing item id
    "2\t10\tfive\t100\n"  # 6 bad rating
    "2\t11\t9\t100\n"  # 7 out of scale
    "2\t12\t3\tinf\n"  # 8 bad timestamp
    "1\t10\t2\t50\n"  # 9 duplicate of line 2, older: dropped under keep-latest
    "2\t13\t1\t100\n"  # 10 ok
    "\n"  # 11 blank line: missing ids
    "3\t10\t5\t100\n"  # 12 ok
)


def test_lenient_mode_drops_and_counts_each_kind_exactly(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text(BAD_LOG)
    data = read_log(path, rating_range=(1, 5), lenient=True, chunksize=3)
    assert data.report.dropped == {
        "malformed-row": 1,
        "missing-id": 3,
        "bad-id": 0,
        "bad-rating": 1,
        "rating-out-of-scale": 1,
        "bad-timestamp": 1,
        "duplicate": 1,
    }
    assert data.report.first_line == {
        "malformed-row": 3,
        "missing-id": 4,
        "bad-rating": 6,
        "rating-out-of-scale": 7,
        "bad-timestamp": 8,
        "duplicate": 9,
    }
    assert data.report.rows_read == 11 and data.report.rows_kept == 3
    assert data.interactions[["user", "item"]].values.tolist() == [[1, 10], [2, 13], [3, 10]]
    assert "kept 3; dropped 1 malformed-row (first at line 3)" in data.report.summary()


def test_strict_mode_stops_at_the_first_bad_line(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text(BAD_LOG)
    with pytest.raises(DataFileError, match=r"log\.tsv:3: malformed row: expected 4 fields, saw 5"):
        read_log(path, chunksize=3)
    path.write_text(BAD_LOG.replace("1\t11\t4\t100\t7\n", ""))
    with pytest.raises(DataFileError, match=r"log\.tsv:3: missing user id \(2 rows in all\)"):
        read_log(path)


def test_lenient_mode_with_nothing_valid_is_still_an_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\n1,2,x\n,3,1\n")
    with pytest.raises(DataFileError, match=r"no interactions found.*1 missing-id.*1 bad-rating"):
        read_log(path, lenient=True)


# --- duplicates policy ----------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kept_ratings"),
    [
        ("keep-latest", [3.0, 5.0, 4.0]),  # (1,10): t=9 wins; (2,10): tie at t=5 -> later row
        ("keep-first", [1.0, 2.0, 4.0]),
        ("keep-all", [1.0, 2.0, 3.0, 4.0, 5.0]),
    ],
)
def test_duplicate_policies(policy, kept_ratings):
    frame = pd.DataFrame(
        {
            "user": [1, 2, 1, 3, 2],
            "item": [10, 10, 10, 10, 10],
            "rating": [1.0, 2.0, 3.0, 4.0, 5.0],
            "timestamp": [1.0, 5.0, 9.0, 1.0, 5.0],
        }
    )
    report = ValidationReport("x")
    out = apply_duplicate_policy(frame, policy, report=report)
    assert sorted(out["rating"].tolist()) == sorted(kept_ratings)
    assert out["rating"].tolist() == sorted(kept_ratings, key=frame["rating"].tolist().index)
    assert report.dropped["duplicate"] == 5 - len(kept_ratings)


def test_duplicate_policy_error_names_the_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,10,1\n2,10,1\n1,10,2\n")
    with pytest.raises(DataFileError, match=r"log\.csv:4: duplicate \(user, item\) pair \(1, 10\)"):
        read_log(path, duplicates="error")
    with pytest.raises(ValueError, match="duplicates='newest': unknown"):
        read_log(path, duplicates="newest")


# --- generic CSV / TSV / Parquet with a column mapping ---------------------------


def _events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer": ["c1", "c2", "c1", "c3", "c2"],
            "sku": ["a", "a", "b", "c", "c"],
            "stars": [5, 3, 4, 2, 1],
            "ts": [10, 11, 12, 13, 14],
            "region": ["north", "south", "north", "east", "south"],
        }
    )


def test_csv_tsv_and_parquet_read_identically(tmp_path):
    events = _events()
    events.to_csv(tmp_path / "e.csv", index=False)
    events.to_csv(tmp_path / "e.tsv", index=False, sep="\t")
    events.to_parquet(tmp_path / "e.parquet", index=False)
    mapping = {"user": "customer", "item": "sku", "rating": "stars", "timestamp": "ts"}
    frames = [
        read_log(tmp_path / f"e.{ext}", mapping, chunksize=2, user_columns=("region",))
        for ext in ("csv", "tsv", "parquet")
    ]
    for data in frames:
        pd.testing.assert_frame_equal(data.interactions, frames[0].interactions)
        assert data.users.to_dict("list") == {
            "user": ["c1", "c2", "c3"],
            "region": ["north", "south", "east"],
        }
    assert frames[0].interactions.to_dict("list") == {
        "user": ["c1", "c2", "c1", "c3", "c2"],
        "item": ["a", "a", "b", "c", "c"],
        "rating": [5.0, 3.0, 4.0, 2.0, 1.0],
        "timestamp": [10.0, 11.0, 12.0, 13.0, 14.0],
    }


def test_log_mapping_errors(tmp_path):
    _events().to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(DataFileError, match=r"e\.csv:1: column\(s\) item='item' not in the header"):
        read_log(tmp_path / "e.csv", {"user": "customer", "item": "item"})
    with pytest.raises(ValueError, match=r"no 'item' column named"):
        read_log(tmp_path / "e.csv", {"user": "customer"})
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(DataFileError, match=r"cannot tell the format from the suffix '\.json'"):
        read_log(tmp_path / "e.json")


def test_parquet_errors_name_the_row(tmp_path):
    frame = pd.DataFrame({"user": [1, 2, None], "item": [1, 2, 3], "rating": [1.0, np.nan, 2.0]})
    frame.to_parquet(tmp_path / "e.parquet")
    # Ids are checked before ratings, so the missing user of row 3 is reported first.
    with pytest.raises(DataFileError, match=r"e\.parquet:3: missing user id"):
        read_log(tmp_path / "e.parquet")
    frame.iloc[:2].to_parquet(tmp_path / "e.parquet")
    with pytest.raises(DataFileError, match=r"e\.parquet:2: rating is missing"):
        read_log(tmp_path / "e.parquet")
    frame.to_parquet(tmp_path / "e.parquet")
    data = read_log(tmp_path / "e.parquet", lenient=True)
    assert data.report.dropped["bad-rating"] == 1 and data.report.dropped["missing-id"] == 1


def test_streaming_into_parquet_matches_direct_reading(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    log = pd.DataFrame(
        {
            "u": rng.integers(0, 50, n),
            "i": rng.integers(0, 80, n),
            "t": rng.integers(0, 10**6, n),
        }
    )
    log.to_csv(tmp_path / "big.csv", index=False)
    mapping = {"user": "u", "item": "i", "timestamp": "t"}
    report = stream_log_to_parquet(
        tmp_path / "big.csv", tmp_path / "big.parquet", mapping, chunksize=97
    )
    assert report.rows_read == n and report.total_dropped == 0
    streamed = read_log(tmp_path / "big.parquet")
    direct = read_log(tmp_path / "big.csv", mapping)
    pd.testing.assert_frame_equal(streamed.interactions, direct.interactions)
    assert direct.report.dropped["duplicate"] == n - len(direct.interactions) > 0


def test_streaming_refuses_ids_that_change_type(tmp_path):
    (tmp_path / "e.csv").write_text("user,item\n1,1\n2,2\nx,3\n")
    with pytest.raises(DataFileError, match="id_type='str'"):
        stream_log_to_parquet(tmp_path / "e.csv", tmp_path / "e.parquet", chunksize=2)
    stream_log_to_parquet(tmp_path / "e.csv", tmp_path / "e.parquet", chunksize=2, id_type="str")
    assert read_log(tmp_path / "e.parquet").interactions["user"].tolist() == ["1", "2", "x"]


# --- RecBole atomic files ---------------------------------------------------------


def test_atomic_files_with_side_tables(tmp_path):
    (tmp_path / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti1\t5\t1\nu1\ti2\t3\t2\nu2\ti1\t4\t3\n"
    )
    (tmp_path / "toy.user").write_text("user_id:token\tage:token\tregion:token\nu1\t30\tEU\n")
    (tmp_path / "toy.item").write_text("item_id:token\tclass:token_seq\ni1\tSci-Fi Drama\n")
    data = read_atomic(tmp_path)
    assert data.interactions["user"].tolist() == ["u1", "u1", "u2"]
    assert data.users.to_dict("list") == {"user": ["u1"], "age": ["30"], "region": ["EU"]}
    assert data.items.to_dict("list") == {"item": ["i1"], "genres": ["Sci-Fi|Drama"]}
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\nu1\ti1\nu1\ti2\textra\n")
    with pytest.raises(DataFileError, match=r"toy\.inter:3: malformed row"):
        read_atomic(tmp_path / "toy.inter")
    assert read_atomic(tmp_path / "toy.inter", lenient=True).report.dropped["malformed-row"] == 1


def test_shared_ml100k_loads_with_side_tables(ml100k_dir):
    data = load_movielens("ml-100k", ml100k_dir)
    frame = data.interactions
    assert len(frame) == 100_000
    assert frame["user"].nunique() == 943 and frame["item"].nunique() == 1682
    assert data.report.total_dropped == 0
    assert len(data.users) == 943 and data.users["occupation"].nunique() == 21
    assert data.items.set_index("item").loc[1, "genres"] == "Animation|Children's|Comedy"


# --- lazy download with checksums (network replaced by a local fake) -------------


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


ML1M_ZIP = _zip(
    {
        "ml-1m/ratings.dat": b"1::10::5::1\n1::11::4::2\n",
        "ml-1m/users.dat": b"1::F::1::10::48067\n",
        "ml-1m/movies.dat": b"10::A (1990)::Drama\n11::B (1991)::Comedy\n",
    }
)


def test_fetch_movielens_checks_the_pinned_md5(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest, timeout):
        calls.append(url)
        dest.write_bytes(ML1M_ZIP)

    monkeypatch.setattr(grouplens, "_download", fake_download)
    with pytest.raises(DataFileError, match=r"md5 .* does not match the expected c4d9eecf"):
        grouplens.fetch_movielens("ml-1m", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    release = grouplens.RELEASES["ml-1m"]
    patched = dict(grouplens.RELEASES)
    patched["ml-1m"] = grouplens.MovieLensRelease(
        **{**release.__dict__, "md5": hashlib.md5(ML1M_ZIP).hexdigest()}
    )
    monkeypatch.setattr(grouplens, "RELEASES", patched)
    target = grouplens.fetch_movielens("ml-1m", tmp_path / "b")
    assert json.loads((target / "SOURCE.json").read_text())["source"] == release.url
    assert load_movielens("ml-1m", target).interactions["item"].tolist() == [10, 11]
    calls.clear()
    assert grouplens.fetch_movielens("ml-1m", tmp_path / "b") == target  # cached
    assert calls == []


def test_unpinned_release_checks_the_published_md5(tmp_path, monkeypatch):
    archive = _zip(
        {
            "ml-latest-small/ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,9\n",
            "ml-latest-small/movies.csv": b"movieId,title,genres\n1,A,Drama\n",
        }
    )
    published = {"digest": hashlib.md5(b"something else").hexdigest()}

    def fake_download(url, dest, timeout):
        if url.endswith(".md5"):
            dest.write_text(f"MD5 (ml-latest-small.zip) = {published['digest']}\n")
        else:
            dest.write_bytes(archive)

    monkeypatch.setattr(grouplens, "_download", fake_download)
    with pytest.raises(DataFileError, match="does not match"):
        grouplens.fetch_movielens("ml-latest-small", tmp_path / "a")
    published["digest"] = hashlib.md5(archive).hexdigest()
    target = grouplens.fetch_movielens("ml-latest-small", tmp_path / "b")
    assert json.loads((target / "SOURCE.json").read_text())["md5"] == published["digest"]
    assert len(load_movielens("ml-latest-small", target).interactions) == 1


def test_default_location_is_the_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_FLWR_HOME", str(tmp_path))
    monkeypatch.setattr(
        grouplens, "_download", lambda url, dest, timeout: dest.write_bytes(ML1M_ZIP)
    )
    release = grouplens.RELEASES["ml-1m"]
    monkeypatch.setitem(
        grouplens.RELEASES,
        "ml-1m",
        grouplens.MovieLensRelease(
            **{**release.__dict__, "md5": hashlib.md5(ML1M_ZIP).hexdigest()}
        ),
    )
    data = load_movielens("ml-1m")
    assert (tmp_path / "data" / "ml-1m" / "ratings.dat").is_file()
    assert len(data.interactions) == 2


# --- preparation ----------------------------------------------------------------


def test_id_encoder_is_sklearn_style_and_sorted():
    enc = IdEncoder()
    assert enc.fit(["b", "a", "c", "a"]) is enc
    np.testing.assert_array_equal(enc.classes_, ["a", "b", "c"])
    np.testing.assert_array_equal(enc.transform(["c", "a"]), [2, 0])
    np.testing.assert_array_equal(enc.inverse_transform([1, 2]), ["b", "c"])
    ids = np.array([30, 10, 20, 10])
    np.testing.assert_array_equal(IdEncoder().fit_transform(ids), pd.factorize(ids, sort=True)[0])
    with pytest.raises(ValueError, match=r"1 ids are not in the fitted catalogue \(e\.g\. 'z'\)"):
        enc.transform(["a", "z"])
    np.testing.assert_array_equal(IdEncoder("ignore").fit(["a"]).transform(["a", "z"]), [0, -1])
    with pytest.raises(RuntimeError, match="not fitted"):
        IdEncoder().transform([1])
    with pytest.raises(ValueError, match="sorted ascending"):
        IdEncoder().fit_from_classes([3, 1])


def test_implicit_threshold_and_k_core():
    frame = pd.DataFrame(
        {
            "user": [1, 1, 1, 2, 2, 3, 3, 3],
            "item": [1, 2, 3, 1, 2, 1, 2, 4],
            "rating": [5, 4, 1, 5, 3, 4, 4, 5],
            "timestamp": np.arange(8.0),
        }
    )
    assert to_implicit(frame, 0.0) is frame
    assert to_implicit(frame, 4.0)["rating"].tolist() == [5, 4, 5, 4, 4, 5]
    # 2-core: items 3 and 4 have one interaction each; after removing them every
    # user keeps 2 and items 1, 2 keep 3 each.
    core = filter_k_core(frame, 2)
    assert core[["user", "item"]].values.tolist() == [
        [1, 1],
        [1, 2],
        [2, 1],
        [2, 2],
        [3, 1],
        [3, 2],
    ]
    # 3-core cascades: user 2 has only 2 items -> removed -> items 1, 2 keep 2 -> all gone.
    with pytest.raises(ValueError, match="k-core=3: no interactions left"):
        filter_k_core(frame, 3)


def test_sparse_eval_negatives_are_uniform_distinct_and_seeded():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 10)
    seen = InteractionSet(users, rng.integers(0, 50, size=len(users)), 50)
    a = sample_eval_negatives(np.random.default_rng(1), 20, seen, 25, method="sparse")
    b = sample_eval_negatives(np.random.default_rng(1), 20, seen, 25, method="sparse")
    np.testing.assert_array_equal(a, b)
    assert not seen.contains(np.repeat(np.arange(20), 25), a.reshape(-1)).any()
    assert all(len(set(row)) == 25 for row in a)
    # One user who holds items 0-2 of 10: each of the 7 others is drawn with
    # probability 2/7 when taking 2 without replacement.
    one = InteractionSet(np.zeros(3, int), np.array([0, 1, 2]), 10)
    draws = np.concatenate(
        [sample_eval_negatives(np.random.default_rng(s), 1, one, 2, method="sparse")[0]
         for s in range(4000)]
    )  # fmt: skip
    freq = np.bincount(draws, minlength=10) / 4000
    assert freq[:3].sum() == 0
    np.testing.assert_allclose(freq[3:], 2 / 7, atol=0.03)
    # "auto" keeps the dense draw (and so ML-100K's published negatives) for small data.
    np.testing.assert_array_equal(
        sample_eval_negatives(np.random.default_rng(1), 20, seen, 25),
        sample_eval_negatives(np.random.default_rng(1), 20, seen, 25, method="dense"),
    )
    with pytest.raises(ValueError, match="method='fast'"):
        sample_eval_negatives(np.random.default_rng(1), 20, seen, 25, method="fast")


def test_log_with_a_separate_users_table_and_default_stream_target(tmp_path):
    events = _events()
    events.to_csv(tmp_path / "e.csv", index=False)
    pd.DataFrame({"customer": ["c1", "c2"], "clinic": ["A", "B"]}).to_csv(
        tmp_path / "users.csv", index=False
    )
    data = read_log(
        tmp_path / "e.csv", {"user": "customer", "item": "sku"}, users_path=tmp_path / "users.csv"
    )
    assert data.users.to_dict("list") == {"user": ["c1", "c2"], "clinic": ["A", "B"]}
    stream_log_to_parquet(tmp_path / "e.csv", columns={"user": "customer", "item": "sku"})
    home = Path(os.environ["FEDREC_FLWR_HOME"])  # set per session by conftest
    streamed = read_log(home / "data" / "logs" / "e.parquet")
    assert streamed.interactions["user"].tolist() == events["customer"].tolist()


def test_grouplens_ml100k_layout_side_tables(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t10\n1\t2\t4\t11\n2\t1\t3\t12\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    flags = ["0"] * 19
    action_comedy = flags.copy()
    action_comedy[1] = action_comedy[5] = "1"
    unknown = flags.copy()
    unknown[0] = "1"
    (folder / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(action_comedy) + "\n"
            "2|Café (1996)|01-Jan-1996||http://y|" + "|".join(unknown) + "\n"
        ).encode("latin-1")
    )
    data = load_movielens("ml-100k", tmp_path)
    assert data.users.to_dict("list") == {
        "user": [1, 2],
        "age": [24, 53],
        "gender": ["M", "F"],
        "occupation": ["technician", "other"],
        "zip": ["85711", "T8H1N"],
    }
    assert data.items.to_dict("list") == {
        "item": [1, 2],
        "title": ["Toy Story (1995)", "Café (1996)"],
        "release_year": ["1995", "1996"],  # from the release date, as RecBole's copy has it
        "genres": ["Action|Comedy", "unknown"],
    }


def test_fast_parser_hands_over_mid_file_with_exact_lines(tmp_path, monkeypatch):
    from fedrec_flwr.datasets import _frame

    # Tiny Arrow blocks: the bad rows sit blocks after the first, so some chunks
    # were already yielded by the fast path when pandas takes over.
    monkeypatch.setattr(_frame, "_ARROW_BLOCK_BYTES", 64)
    rows = [f"{u}\t{u % 7}\t3\t{u}" for u in range(1, 200)]
    rows[120] = "121\t1\t3\t121\t9"  # line 122 of the file (header is line 1)
    rows[150] = ""  # line 152: blank
    path = tmp_path / "log.tsv"
    path.write_text("user\titem\trating\ttimestamp\n" + "\n".join(rows) + "\n")
    data = read_log(path, lenient=True, chunksize=10)
    assert data.report.dropped["malformed-row"] == 1 and data.report.dropped["missing-id"] == 1
    assert data.report.first_line == {"malformed-row": 122, "missing-id": 152}
    assert len(data.interactions) == 197
    assert data.interactions["user"].tolist() == [u for u in range(1, 200) if u not in (121, 151)]
    with pytest.raises(DataFileError, match=r"log\.tsv:122: malformed row"):
        read_log(path, chunksize=10)
