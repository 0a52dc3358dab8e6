"""The hybrid model and its hashed side features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.feature_extraction import FeatureHasher

from fedrec_flwr.datasets.features import feature_tokens, hash_features
from fedrec_flwr.datasets.negatives import InteractionSet
from fedrec_flwr.models import Hybrid, NodeContext, load_arrays, private_arrays, shared_arrays
from fedrec_flwr.train.group import train_epochs

USERS = pd.DataFrame(
    {
        "age": ["17", "24", "25", "56", None],
        "gender": ["F", "M", "F", "M", "F"],
        "occupation": ["writer", "other", "writer", "", "doctor"],
    }
)


def test_tokens_follow_the_documented_rules():
    tokens = feature_tokens(USERS, ("age", "gender", "occupation"))
    assert tokens[0] == ["age=0", "gender=F", "occupation=writer"]  # under 18
    assert tokens[1][0] == "age=1" and tokens[2][0] == "age=2"  # 18-24 | 25-34
    assert tokens[3] == ["age=6", "gender=M"]  # 56+, empty occupation: no token
    assert tokens[4] == ["gender=F", "occupation=doctor"]  # missing age: no token
    items = pd.DataFrame({"genres": ["Action|Comedy", ""], "release_year": ["1995", "1969"]})
    assert feature_tokens(items, ("genres", "release_year")) == [
        ["genres=Action", "genres=Comedy", "release_year=1990s"],
        ["release_year=1960s"],
    ]
    with pytest.raises(KeyError, match="zip"):
        feature_tokens(USERS, ("zip",))


def test_codes_are_sklearns_hash_and_agree_across_nodes():
    hashed = hash_features(USERS, ("gender", "occupation"), 64)
    hasher = FeatureHasher(n_features=64, input_type="string", alternate_sign=False)
    want = hasher.transform([["occupation=writer"]]).indices[0]
    assert hashed.codes[0, 1] == want
    # Another node holding the users in another order gets the same codes per user.
    other = hash_features(USERS.iloc[::-1].reset_index(drop=True), ("gender", "occupation"), 64)
    np.testing.assert_array_equal(other.codes[::-1], hashed.codes)
    assert hashed.codes[3, 1] == -1  # padding: user 3 has one value fewer
    # One bucket: every distinct token but one collides.
    assert hash_features(USERS, ("gender",), 1).collisions == 1
    assert hash_features(USERS, ("gender",), 1 << 20).collisions == 0


_NONE = np.zeros(0, np.int64)


def _context(user_table, item_table, users=_NONE, items=_NONE):
    n = 0 if user_table is None else len(user_table)
    return NodeContext(
        n, users, items, np.zeros(n, np.int64), np.zeros(n, np.int64), user_table, item_table
    )


def test_split_keeps_ids_and_feature_codes_private_and_feature_tables_shared():
    model = Hybrid(5, 4, factors=3, feature_buckets=16)
    items = pd.DataFrame({"genres": ["A", "B", "A|B", ""], "release_year": ["1990"] * 4})
    model.bind(_context(USERS, items))
    private, shared = private_arrays(model), shared_arrays(model)
    assert set(private) == {"user_emb.weight", "user_bias.weight"}
    assert {"user_feature_emb.weight", "item_feature_emb.weight", "global_bias"} <= set(shared)
    # The codes are the node's data: in the state_dict (per-user slicing), never sent.
    assert {"user_features", "item_features"} <= set(model.state_dict())
    assert not {"user_features", "item_features"} & (set(private) | set(shared))
    small = Hybrid(1, 4, factors=3, feature_buckets=16, seed=4)
    big = Hybrid(50, 4, factors=3, feature_buckets=16, seed=4)
    for name, value in shared_arrays(small).items():
        np.testing.assert_array_equal(value, shared_arrays(big)[name], err_msg=name)


def test_score_all_equals_forward():
    model = Hybrid(5, 4, factors=3, feature_buckets=16, seed=1)
    items = pd.DataFrame({"genres": ["A", "B", "A|B", ""], "release_year": ["1990"] * 4})
    model.bind(_context(USERS, items))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    users = torch.arange(5)
    pairs = model(users.repeat_interleave(4), torch.arange(4).repeat(5)).reshape(5, 4)
    torch.testing.assert_close(model.score_all(users), pairs, rtol=1e-5, atol=1e-5)


def _taste_log(num_users: int = 40):
    """Gender decides taste: F users take genre A items (0-9), M users genre B (10-19)."""
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"gender": ["F" if u % 2 else "M" for u in range(num_users)]})
    items = pd.DataFrame({"genres": ["A"] * 10 + ["B"] * 10})
    pairs_u, pairs_i = [], []
    for u in range(num_users):
        liked = np.arange(10) if u % 2 else np.arange(10, 20)
        chosen = rng.choice(liked, size=6, replace=False)
        pairs_u += [u] * 6
        pairs_i += chosen.tolist()
    return users, items, np.array(pairs_u), np.array(pairs_i)


def _trained(user_features, item_features):
    users, items, pu, pi = _taste_log()
    model = Hybrid(
        len(users),
        20,
        factors=8,
        user_features=user_features,
        item_features=item_features,
        feature_buckets=64,
        seed=0,
    )
    model.bind(_context(users, items, pu, pi))
    train_epochs(
        model,
        pu,
        pi,
        InteractionSet(pu, pi, 20),
        epochs=30,
        batch_size=64,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
        num_negatives=2,
        rng=np.random.default_rng(1),
    )
    return model, users, items


def _cold_margins(model, users, items):
    """Mean score of genre A minus genre B for a new F user (id row zero), and
    for item 0 made new (id row and bias zeroed) against the B items."""
    cold = Hybrid(
        1,
        20,
        factors=8,
        user_features=model.user_columns,
        item_features=model.item_columns,
        feature_buckets=64,
    )
    load_arrays(cold, shared_arrays(model), private=False)  # the global model, no user
    cold.bind(_context(pd.DataFrame({"gender": ["F"]}), items))
    scores = cold.score_all(torch.tensor([0]))[0]
    user_margin = float(scores[:10].mean() - scores[10:].mean())
    with torch.no_grad():
        cold.item_emb.weight[0] = 0.0
        cold.item_bias.weight[0] = 0.0
    scores = cold.score_all(torch.tensor([0]))[0]
    item_margin = float(scores[0] - scores[10:].max())
    return user_margin, item_margin


def test_cold_start_users_and_items_are_scored_from_features():
    model, users, items = _trained(("gender",), ("genres",))
    user_margin, item_margin = _cold_margins(model, users, items)
    assert user_margin > 1.0  # a new F user prefers A items: its id row is all zero
    assert item_margin > 0.0  # a new A item outranks every B item for that user
    # Negative control: without features a new user has nothing to go on.
    bare, users, items = _trained((), ())
    user_margin, _ = _cold_margins(bare, users, items)
    assert abs(user_margin) < 0.5


def test_missing_side_data_is_one_line_naming_model_column_and_fix():
    model = Hybrid(5, 4)
    with pytest.raises(
        ValueError, match=r"model='hybrid' needs user features .*no user table.*user-features=''"
    ):
        model.bind(_context(None, None))
    items = pd.DataFrame({"genres": ["A"] * 4})
    with pytest.raises(ValueError, match=r"item table has no column 'release_year'.*item-features"):
        model.bind(_context(USERS, items))
    # Asking for no features needs no tables.
    Hybrid(0, 4, user_features=(), item_features=()).bind(_context(None, None))
