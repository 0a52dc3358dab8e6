"""Partitioners: seeded, every user exactly once, and the skew each promises."""

import numpy as np
import pandas as pd
import pytest

from fedrec_flwr.datasets import (
    AttributePartitioner,
    DataOptions,
    DirichletPartitioner,
    HashPartitioner,
    NaturalPartitioner,
    PowerLawPartitioner,
    RandomPartitioner,
    RangePartitioner,
    gini,
    make_partitioner,
    partition_stats,
    partition_users,
    prepare_data,
)
from fedrec_flwr.datasets.partitioners import dominant_genre, power_law_sizes

# Synthetic frames with side tables have no file format: build them the way
# prepare_data does after loading.
from fedrec_flwr.datasets.prepare import _prepare_frame

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]


def _synthetic(num_users: int = 300, seed: int = 0, extra_user: bool = False):
    """Users who each mostly watch one genre, with demographics."""
    rng = np.random.default_rng(seed)
    items_per_genre = 20
    rows = []
    n = num_users + (1 if extra_user else 0)
    for u in range(n):
        favourite = u % len(GENRES)
        for t in range(6):
            genre = favourite if t < 4 else int(rng.integers(len(GENRES)))
            item = genre * items_per_genre + int(rng.integers(items_per_genre))
            rows.append((u + 1000, item, 4.0, float(t)))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    frame = frame.drop_duplicates(["user", "item"]).reset_index(drop=True)
    users = pd.DataFrame(
        {
            "user": np.arange(n) + 1000,
            "age": rng.choice([15, 20, 30, 40, 47, 52, 60], size=n),
            "gender": rng.choice(["F", "M"], size=n),
            "zip": rng.choice(["10001", "94110", "60601", "T8H1N"], size=n),
            "region": rng.choice(["north", "south", "east"], size=n),
        }
    )
    items = pd.DataFrame(
        {
            "item": np.arange(len(GENRES) * items_per_genre),
            "genres": [GENRES[i // items_per_genre] for i in range(len(GENRES) * items_per_genre)],
        }
    )
    return _prepare_frame(
        frame, name="toy", seed=seed, num_eval_negatives=5, users=users, items=items
    )


@pytest.fixture(scope="module")
def toy():
    return _synthetic()


ALL = [
    lambda seed: RandomPartitioner(7, seed),
    lambda seed: NaturalPartitioner(None, seed),
    lambda seed: AttributePartitioner("region", None, seed),
    lambda seed: HashPartitioner(7, seed),
    lambda seed: RangePartitioner(7, seed),
    lambda seed: DirichletPartitioner(7, seed, alpha=0.5),
    lambda seed: PowerLawPartitioner(7, seed, exponent=1.0),
]


@pytest.mark.parametrize("make", ALL, ids=lambda m: type(m(0)).__name__)
def test_every_partitioner_is_deterministic_and_covers_every_user_once(toy, make):
    a = make(3).fit(toy)
    b = make(3).fit(toy)
    np.testing.assert_array_equal(a.assignment_, b.assignment_)
    assignment = a.assignment_
    assert assignment.shape == (toy.num_users,) and assignment.dtype == np.int64
    sizes = np.bincount(assignment, minlength=a.num_partitions_)
    assert len(sizes) == a.num_partitions_ == len(a.labels_)
    assert sizes.sum() == toy.num_users and sizes.min() >= 1
    stats = partition_stats(toy, assignment, a.labels_)
    assert stats.users.sum() == toy.num_users
    assert stats.interactions.sum() == len(toy.train_items)


@pytest.mark.parametrize(
    "make",
    [ALL[0], ALL[3], ALL[5], ALL[6]],
    ids=["random", "hash", "dirichlet", "power-law"],
)
def test_seeded_partitioners_change_with_the_seed(toy, make):
    assert not np.array_equal(make(1).fit(toy).assignment_, make(2).fit(toy).assignment_)


def test_random_partitioner_is_the_core_random_groups(toy):
    ml = RandomPartitioner(10, 42).fit(toy)
    np.testing.assert_array_equal(ml.assignment_, partition_users(toy.num_users, 10, 42))


def test_gini_known_values():
    assert gini([5, 5, 5, 5]) == 0.0
    assert gini([0, 0, 0, 1]) == pytest.approx(0.75)
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)  # sum (2i-5) x_i = 10, / (4 * 10)
    assert gini([]) == 0.0


def test_dirichlet_small_alpha_is_more_skewed_than_large(toy):
    genre, names = dominant_genre(toy)
    assert names == GENRES
    # Each synthetic user watches its favourite genre 4 times out of 6.
    np.testing.assert_array_equal(genre, (toy.user_ids - 1000) % len(GENRES))
    for seed in range(5):
        skewed = DirichletPartitioner(6, seed, alpha=0.1).fit(toy)
        even = DirichletPartitioner(6, seed, alpha=100.0).fit(toy)
        s = partition_stats(toy, skewed.assignment_, skewed.labels_)
        e = partition_stats(toy, even.assignment_, even.labels_)
        assert s.gini_users > 5 * e.gini_users and s.gini_users > 0.15
        assert e.gini_users < 0.05
        # Label skew: with alpha=0.1 a partition is dominated by few genres.
        share_s = _top_genre_share(genre, skewed.assignment_)
        share_e = _top_genre_share(genre, even.assignment_)
        assert share_s > share_e


def _top_genre_share(genre, assignment):
    """Mean over partitions of the share of its most common genre."""
    shares = []
    for p in np.unique(assignment):
        counts = np.bincount(genre[assignment == p])
        shares.append(counts.max() / counts.sum())
    return float(np.mean(shares))


def test_dirichlet_errors(toy):
    with pytest.raises(ValueError, match=r"dirichlet-alpha=0: must be > 0"):
        DirichletPartitioner(3, 0, alpha=0).fit(toy)
    with pytest.raises(ValueError, match=r"no draw in 2 gave every one of 300 partitions"):
        DirichletPartitioner(300, 0, alpha=0.01, max_attempts=2).fit(toy)


def test_power_law_sizes_known_answer():
    # weights 1, 1/2, 1/3 over 7 spare users: exact 3.82, 1.91, 1.27 -> 3, 1, 1 and the
    # two largest remainders (1.91, 3.82) get one more -> 4, 2, 1; plus one each.
    np.testing.assert_array_equal(power_law_sizes(10, 3, 1.0), [5, 3, 2])
    np.testing.assert_array_equal(power_law_sizes(9, 3, 0.0), [3, 3, 3])


def test_power_law_skew_grows_with_the_exponent(toy):
    ginis = [
        partition_stats(toy, PowerLawPartitioner(10, 0, exponent=x).fit(toy).assignment_,
                        [str(i) for i in range(10)]).gini_users
        for x in (0.0, 0.5, 1.0, 2.0)
    ]  # fmt: skip
    assert ginis[0] < 0.01 and ginis == sorted(ginis) and ginis[-1] > 0.5


def test_attribute_partitioner_buckets_and_prefixes(toy):
    ages = AttributePartitioner("age-bucket").fit(toy)
    assert ages.labels_ == ["18-24", "25-34", "35-44", "45-49", "50-55", "56+", "under-18"]
    raw_age = toy.user_table["age"].to_numpy()
    labels = np.array(ages.labels_)[ages.assignment_]
    assert set(labels[raw_age == 47]) == {"45-49"} and set(labels[raw_age == 15]) == {"under-18"}
    zips = AttributePartitioner("zip-prefix").fit(toy)
    assert zips.labels_ == ["1", "6", "9", "T"]
    two = AttributePartitioner("zip-prefix", zip_prefix_length=2).fit(toy)
    assert two.labels_ == ["10", "60", "94", "T8"]
    assert AttributePartitioner("gender").fit(toy).labels_ == ["F", "M"]
    with pytest.raises(ValueError, match=r"makes 3 partitions, but num-partitions=4"):
        AttributePartitioner("region", 4).fit(toy)
    with pytest.raises(ValueError, match=r"the users table has no 'hospital' column"):
        AttributePartitioner("hospital").fit(toy)


def test_attribute_missing_values_form_their_own_group():
    data = _synthetic(20)
    table = data.user_table.copy()
    table.loc[:4, "region"] = None
    import dataclasses

    data = dataclasses.replace(data, user_table=table)
    part = AttributePartitioner("region").fit(data)
    assert "(missing)" in part.labels_
    assert np.bincount(part.assignment_)[part.labels_.index("(missing)")] == 5


def test_hash_partition_is_stable_when_users_join():
    before = _synthetic(100)
    after = _synthetic(100, extra_user=True)
    a = HashPartitioner(5, 9).fit(before).assignment_
    b = HashPartitioner(5, 9).fit(after).assignment_
    np.testing.assert_array_equal(a, b[:100])


def test_range_and_natural(toy):
    ranges = RangePartitioner(4).fit(toy).assignment_
    assert (np.diff(ranges) >= 0).all()  # contiguous blocks in id order
    np.testing.assert_array_equal(np.bincount(ranges), [75, 75, 75, 75])
    natural = NaturalPartitioner().fit(toy)
    np.testing.assert_array_equal(natural.assignment_, np.arange(toy.num_users))
    with pytest.raises(ValueError, match=r"one partition per user \(300\)"):
        NaturalPartitioner(10).fit(toy)


def test_partitioners_need_their_side_tables():
    frame = pd.DataFrame(
        {"user": [1, 1, 1, 2, 2, 2], "item": [1, 2, 3, 2, 3, 4], "timestamp": [1.0, 2, 3, 1, 2, 3]}
    )
    bare = _prepare_frame(frame, name="bare", seed=0, num_eval_negatives=1)
    with pytest.raises(ValueError, match="needs a users table; bare has none"):
        AttributePartitioner("occupation").fit(bare)
    with pytest.raises(ValueError, match="needs item genres; bare has no items table"):
        DirichletPartitioner(1).fit(bare)
    with pytest.raises(ValueError, match="num-partitions=3: must be between 1 and the number"):
        RandomPartitioner(3).fit(bare)
    with pytest.raises(ValueError, match="partitioner='metis': unknown"):
        make_partitioner("metis", 2, 0)


def test_stats_table_and_figure(toy, tmp_path):
    part = AttributePartitioner("region").fit(toy)
    stats = partition_stats(toy, part.assignment_, part.labels_, "by region")
    table = stats.table()
    assert table.splitlines()[0].startswith("by region: 3 partitions, Gini users")
    assert "north" in table and f"{toy.num_users:>8}" in table.splitlines()[-1]
    record = stats.to_dict()
    assert [p["label"] for p in record["partitions"]] == ["east", "north", "south"]
    assert type(stats).from_dict(record).to_dict() == record
    path = stats.plot(tmp_path / "fig" / "parts.png")
    assert path.stat().st_size > 1000


def test_ml100k_occupations_give_21_groups(ml100k_dir):
    prepared = prepare_data(DataOptions(data_dir=str(ml100k_dir)))
    assert (prepared.num_users, prepared.num_items) == (943, 1682)
    part = make_partitioner("occupation", None, 42).fit(prepared)
    assert part.num_partitions_ == 21
    stats = partition_stats(prepared, part.assignment_, part.labels_)
    by_label = dict(zip(part.labels_, stats.users.tolist(), strict=True))
    assert by_label["student"] == 196 and by_label["doctor"] == 7
    assert stats.users.sum() == 943
    assert make_partitioner("gender", None, 42).fit(prepared).num_partitions_ == 2
    assert make_partitioner("age-bucket", None, 42).fit(prepared).num_partitions_ == 7
