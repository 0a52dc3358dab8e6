"""Full-catalogue top-K and full-ranking metrics against brute-force NumPy."""

import math

import numpy as np
import pytest
import torch

from fedrec_flwr.models import ARCHITECTURES, Recommender, build_model
from fedrec_flwr.serving.scoring import full_ranking_sums, full_ranking_sums_of_scores, top_k

NUM_USERS, NUM_ITEMS = 7, 23


def _model(arch: str, seed: int = 0) -> Recommender:
    model = build_model(arch, NUM_USERS, NUM_ITEMS, factors=5, mlp_layers=(8, 6, 4), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return model


def _exclusions(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random seen pairs, repeats included; user 5 has every item but 3 excluded."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, NUM_USERS, 40)
    items = rng.integers(0, NUM_ITEMS, 40)
    full = np.setdiff1d(np.arange(NUM_ITEMS), [2, 9, 17])
    return np.concatenate([users, np.full(full.size, 5)]), np.concatenate([items, full])


def _brute_scores(model: Recommender, users: np.ndarray) -> np.ndarray:
    """Every pair through ``forward``, in float64 for the comparisons."""
    uu, ii = np.meshgrid(users, np.arange(NUM_ITEMS), indexing="ij")
    with torch.no_grad():
        out = model(torch.from_numpy(uu.ravel()), torch.from_numpy(ii.ravel()))
    return out.numpy().reshape(users.size, NUM_ITEMS)


def _eligible(users: np.ndarray, ex_users: np.ndarray, ex_items: np.ndarray) -> np.ndarray:
    mask = np.ones((users.size, NUM_ITEMS), dtype=bool)
    for row, user in enumerate(users):
        mask[row, ex_items[ex_users == user]] = False
    return mask


def _brute_top_k(scores: np.ndarray, eligible: np.ndarray, k: int):
    items = np.full((scores.shape[0], k), -1)
    values = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    for row in range(scores.shape[0]):
        cand = np.flatnonzero(eligible[row])
        # lexsort: last key is primary (score descending), then item ascending.
        order = cand[np.lexsort((cand, -scores[row, cand]))][:k]
        items[row, : order.size] = order
        values[row, : order.size] = scores[row, order]
    return items, values


USERS = np.array([0, 3, 5, 6, 1, 3, 2, 4], dtype=np.int64)  # user 3 twice


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("k", [1, 5, 23])
@pytest.mark.parametrize("max_cells", [2**24, 1, 50])
def test_top_k_matches_brute_force(arch, k, max_cells):
    model = _model(arch)
    ex_users, ex_items = _exclusions()
    items, scores = top_k(
        model, USERS, k, exclude_users=ex_users, exclude_items=ex_items, max_cells=max_cells
    )
    eligible = _eligible(USERS, ex_users, ex_items)
    want_items, want_scores = _brute_top_k(_brute_scores(model, USERS), eligible, k)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert items.shape == scores.shape == (USERS.size, k)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # Excluded pairs never come back; user 5 (row 2) has only 3 eligible items.
    for row, user in enumerate(USERS):
        assert not np.isin(items[row], ex_items[ex_users == user]).any()
    assert (items[2, 3:] == -1).all() and np.isneginf(scores[2, 3:]).all()
    assert np.all(scores[:, :-1] >= scores[:, 1:])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_user_per_chunk_gives_identical_output(arch):
    model = _model(arch, seed=2)
    ex_users, ex_items = _exclusions(seed=3)
    whole = top_k(model, USERS, 7, exclude_users=ex_users, exclude_items=ex_items)
    single = top_k(model, USERS, 7, exclude_users=ex_users, exclude_items=ex_items, max_cells=1)
    np.testing.assert_array_equal(whole[0], single[0])
    # A chunk's width changes the matmul kernel: scores agree to float32 rounding.
    np.testing.assert_allclose(whole[1], single[1], rtol=1e-6, atol=1e-6)
    targets = np.array([2, 0, 9, 1, 4, 22, 3, 8])
    ex_u, ex_i = _drop_targets(ex_users, ex_items, USERS, targets)
    kw = {"exclude_users": ex_u, "exclude_items": ex_i}
    assert full_ranking_sums(model, USERS, targets, [1, 5], **kw) == full_ranking_sums(
        model, USERS, targets, [1, 5], max_cells=1, **kw
    )


def _drop_targets(ex_users, ex_items, users, targets):
    """The exclusions without any (user, target) pair."""
    keep = np.ones(ex_users.size, dtype=bool)
    for user, target in zip(users, targets, strict=True):
        keep &= ~((ex_users == user) & (ex_items == target))
    return ex_users[keep], ex_items[keep]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("max_cells", [2**24, 1])
def test_full_ranking_sums_match_brute_force(arch, max_cells):
    model = _model(arch, seed=5)
    ex_users, ex_items = _exclusions(seed=6)
    targets = np.array([4, 11, 17, 0, 21, 11, 6, 13])
    ex_users, ex_items = _drop_targets(ex_users, ex_items, USERS, targets)
    ks = [1, 3, 10, 23]
    got = full_ranking_sums(
        model,
        USERS,
        targets,
        ks,
        exclude_users=ex_users,
        exclude_items=ex_items,
        max_cells=max_cells,
    )
    scores = _brute_scores(model, USERS)
    eligible = _eligible(USERS, ex_users, ex_items)
    ranks = []
    for row, target in enumerate(targets):
        others = eligible[row].copy()
        others[target] = False
        ranks.append(int((scores[row, others] >= scores[row, target]).sum()))
    want: dict[str, float] = {}
    for k in ks:
        want[f"full-hr@{k}"] = float(sum(r < k for r in ranks))
        want[f"full-recall@{k}"] = want[f"full-hr@{k}"]
        want[f"full-ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert 0 < got["full-hr@3"] < got["full-hr@23"] == USERS.size


class _Constant(Recommender):
    """Scores every pair 0.5: every item ties with every other."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.item_bias = torch.nn.Embedding(num_items, 1)
        torch.nn.init.zeros_(self.item_bias.weight)

    def item_tables(self) -> tuple[str, ...]:
        return ("item_bias.weight",)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.item_bias(items)[:, 0] * 0.0 + 0.5

    def reset_parameters(self, seed: int) -> None:
        pass


@pytest.mark.parametrize("max_cells", [2**24, 1])
def test_ties_favour_lower_items_and_count_against_the_target(max_cells):
    model = _Constant(NUM_ITEMS)
    users = np.arange(4)
    items, scores = top_k(model, users, 6, max_cells=max_cells)
    np.testing.assert_array_equal(items, np.tile(np.arange(6), (4, 1)))
    assert (scores == 0.5).all()
    # With exclusions the lowest eligible codes come first.
    items, _ = top_k(
        model, users, 3, exclude_users=np.array([1, 1]), exclude_items=np.array([0, 2])
    )
    np.testing.assert_array_equal(items[1], [1, 3, 4])
    np.testing.assert_array_equal(items[0], [0, 1, 2])
    # rank = eligible items - 1: every other eligible item ties with the target.
    ex_users, ex_items = np.array([0, 0, 2]), np.array([5, 6, 1])
    sums = full_ranking_sums(
        model,
        users,
        np.array([3, 3, 3, 3]),
        [NUM_ITEMS - 3, NUM_ITEMS - 2, NUM_ITEMS],
        exclude_users=ex_users,
        exclude_items=ex_items,
        max_cells=max_cells,
    )
    # Ranks: user 0 -> 20, user 2 -> 21, users 1 and 3 -> 22.
    assert sums[f"full-hr@{NUM_ITEMS - 3}"] == 0
    assert sums[f"full-hr@{NUM_ITEMS - 2}"] == 1
    assert sums[f"full-hr@{NUM_ITEMS}"] == 4
    assert sums[f"full-ndcg@{NUM_ITEMS}"] == pytest.approx(
        1 / math.log2(22) + 1 / math.log2(23) + 2 / math.log2(24)
    )


def test_excluding_a_target_raises_naming_the_user():
    model = _model("gmf")
    with pytest.raises(ValueError, match=r"user 6: its target item 4 is excluded"):
        full_ranking_sums(
            model,
            np.array([0, 6]),
            np.array([1, 4]),
            [10],
            exclude_users=np.array([0, 6, 6]),
            exclude_items=np.array([2, 3, 4]),
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exclude_users": np.array([0])}, "given together"),
        ({"exclude_users": np.array([0]), "exclude_items": np.array([1, 2])}, "same length"),
        ({"exclude_users": np.array([0]), "exclude_items": np.array([NUM_ITEMS])}, r"\[0, 23\)"),
        ({"max_cells": 0}, "max_cells=0"),
    ],
)
def test_malformed_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_k(_model("gmf"), np.array([0]), 3, **kwargs)


def test_k_beyond_the_catalogue_pads_with_missing_slots():
    items, scores = top_k(_model("neumf"), np.array([1]), NUM_ITEMS + 2)
    assert sorted(items[0, :NUM_ITEMS]) == list(range(NUM_ITEMS))
    assert (items[0, NUM_ITEMS:] == -1).all() and np.isneginf(scores[0, NUM_ITEMS:]).all()


def test_full_ranking_sums_of_scores_match_the_models_and_refuse_bad_shapes():
    # Scores computed elsewhere (a user's own fine-tuned copy) rank as the
    # model's own do; the table must be (users, num_items).
    model = _model("gmf", seed=5)
    ex_users, ex_items = _exclusions(seed=6)
    targets = np.array([4, 11, 17, 0, 21, 11, 6, 13])
    ex_users, ex_items = _drop_targets(ex_users, ex_items, USERS, targets)
    kw = {"exclude_users": ex_users, "exclude_items": ex_items}
    with torch.no_grad():
        table = model.score_all(torch.from_numpy(USERS)).numpy()
    got = full_ranking_sums_of_scores(table, USERS, targets, [1, 3, 10], **kw)
    assert got == full_ranking_sums(model, USERS, targets, [1, 3, 10], **kw)
    assert 0 < got["full-hr@10"] < len(USERS)
    with pytest.raises(ValueError, match=r"scores \(5, \d+\) must be \(n, num_items\) for 8"):
        full_ranking_sums_of_scores(table[:5], USERS, targets, [1])
    with pytest.raises(ValueError, match="its target item 4 is excluded"):
        full_ranking_sums_of_scores(
            table, USERS, targets, [1], exclude_users=USERS[:1], exclude_items=np.array([4])
        )
