"""Per-user training of own-objective models equals one-user clients, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedrec_flwr.datasets.negatives import InteractionSet, sample_train_negatives
from fedrec_flwr.models import NodeContext, Recommender, load_arrays, private_arrays, shared_arrays
from fedrec_flwr.train.group import train_epochs
from fedrec_flwr.train.looped import finetune_users_looped, train_users_looped
from fedrec_flwr.train.peruser import UserLevelDP

NUM_ITEMS, NUM_USERS = 12, 5


class _BagModel(Recommender):
    """Test-only own-objective model: a user is the mean of its bound training
    items' vectors plus its own row; trained on its whole bag at once."""

    pairwise = False

    def __init__(self, num_users: int, seed: int = 0) -> None:
        super().__init__()
        self.item_vec = nn.Embedding(NUM_ITEMS, 4)
        self.user_vec = nn.Embedding(num_users, 4)
        self.register_buffer("bags", torch.zeros(num_users, NUM_ITEMS), persistent=False)
        self.users = np.zeros(0, dtype=np.int64)
        self.items = np.zeros(0, dtype=np.int64)
        self.reset_parameters(seed)

    def item_tables(self) -> tuple[str, ...]:
        return ("item_vec.weight",)

    def reset_parameters(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.3, generator=gen)

    def bind(self, context: NodeContext) -> None:
        bags = torch.zeros(context.num_users, NUM_ITEMS)
        bags[context.train_users, context.train_items] = 1.0
        self.bags = bags / bags.sum(1, keepdim=True).clamp(min=1)
        self.users, self.items = context.train_users, context.train_items

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user = self.user_vec(users) + self.bags[users] @ self.item_vec.weight
        return (user * self.item_vec(items)).sum(-1)

    def train_epochs(self, *, epochs, batch_size, optimizer, num_negatives, rng, exclude):
        loss = float("nan")
        for _ in range(epochs):
            neg = sample_train_negatives(rng, self.users, exclude, num_negatives).reshape(-1)
            users = torch.from_numpy(np.concatenate([self.users, self.users.repeat(num_negatives)]))
            items = torch.from_numpy(np.concatenate([self.items, neg]))
            labels = torch.cat([torch.ones(len(self.users)), torch.zeros(len(neg))])
            optimizer.zero_grad()
            out = nn.functional.binary_cross_entropy_with_logits(self(users, items), labels)
            out.backward()
            optimizer.step()
            loss = float(out.detach())
        return loss


def _context() -> NodeContext:
    rng = np.random.default_rng(3)
    users, items = [], []
    for u in range(NUM_USERS):
        if u == 2:
            continue  # no training interaction: skipped in training, scored by the global model
        chosen = rng.choice(NUM_ITEMS, size=int(rng.integers(2, 6)), replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
    # Held-out items are items the user did not train on, as leave-one-out makes them.
    held = [
        rng.choice(
            np.setdiff1d(
                np.arange(NUM_ITEMS), [i for v, i in zip(users, items, strict=True) if v == u]
            ),
            2,
            replace=False,
        )
        for u in range(NUM_USERS)
    ]
    val, test = np.array([h[0] for h in held]), np.array([h[1] for h in held])
    return NodeContext(NUM_USERS, np.array(users), np.array(items), val, test)


def _alone(model: _BagModel, ctx: NodeContext, u: int, seed: int, params: str) -> _BagModel:
    """User ``u``'s own one-user client: the global shared arrays and its row."""
    one = _BagModel(1)
    load_arrays(one, shared_arrays(model), private=False)
    load_arrays(one, {k: v[u : u + 1] for k, v in private_arrays(model).items()}, private=True)
    rows = ctx.train_users == u
    own = NodeContext(
        1,
        ctx.train_users[rows] * 0,
        ctx.train_items[rows],
        ctx.val_items[u : u + 1],
        ctx.test_items[u : u + 1],
    )
    one.bind(own)
    chosen = [p for n, p in one.named_parameters() if params == "all" or one.is_private(n)]
    one.train_epochs(
        epochs=3,
        batch_size=8,
        optimizer=torch.optim.Adam(chosen, lr=0.05),
        num_negatives=2,
        rng=np.random.default_rng(seed),
        exclude=InteractionSet(own.train_users, own.train_items, NUM_ITEMS),
    )
    return one


def test_looped_training_equals_one_user_clients():
    ctx = _context()
    model = _BagModel(NUM_USERS, seed=1)
    model.bind(ctx)
    exclude = InteractionSet(ctx.train_users, ctx.train_items, NUM_ITEMS)
    seeds = [50 + u for u in range(NUM_USERS)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = train_users_looped(
        model, ctx, exclude, seeds, epochs=3, batch_size=8, learning_rate=0.05, num_negatives=2
    )
    counts = np.bincount(ctx.train_users, minlength=NUM_USERS)
    acc = 0.0
    for u in np.flatnonzero(counts):
        one = _alone(model, ctx, int(u), seeds[u], "all")
        acc = acc + counts[u] * shared_arrays(one)["item_vec.weight"].astype(np.float64)
        np.testing.assert_allclose(
            got.private["user_vec.weight"][u], private_arrays(one)["user_vec.weight"][0], atol=1e-6
        )
    want = acc / counts.sum()
    np.testing.assert_allclose(got.shared["item_vec.weight"], want, atol=1e-6)
    assert got.weight == counts.sum()
    # Not trivially true: training moved the items; user 2 kept its row.
    assert np.abs(want - shared_arrays(model)["item_vec.weight"]).max() > 1e-2
    np.testing.assert_array_equal(
        got.private["user_vec.weight"][2], private_arrays(model)["user_vec.weight"][2]
    )
    for k, v in model.state_dict().items():  # the node's model is only read
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def _looped(model, ctx, seeds, dp):
    exclude = InteractionSet(ctx.train_users, ctx.train_items, NUM_ITEMS)
    return train_users_looped(
        model,
        ctx,
        exclude,
        seeds,
        epochs=3,
        batch_size=8,
        learning_rate=0.05,
        num_negatives=2,
        dp=dp,
    )


@pytest.mark.parametrize("clip", [1e6, 0.05])
def test_user_level_dp_is_the_clipped_unweighted_mean_of_one_user_clients(clip):
    ctx = _context()
    model = _BagModel(NUM_USERS, seed=1)
    model.bind(ctx)
    seeds = [50 + u for u in range(NUM_USERS)]
    sent = shared_arrays(model)["item_vec.weight"].astype(np.float64)
    counts = np.bincount(ctx.train_users, minlength=NUM_USERS)
    deltas = {
        int(u): shared_arrays(_alone(model, ctx, int(u), seeds[u], "all"))["item_vec.weight"] - sent
        for u in np.flatnonzero(counts)
    }
    norms = {u: float(np.linalg.norm(d)) for u, d in deltas.items()}
    if clip < 1:  # every user is clipped: the bound is what is tested
        assert min(norms.values()) > clip
    # Equal weights over all NUM_USERS users (user 2, with no data, counts as a zero).
    want = sent + sum(d * min(1.0, clip / norms[u]) for u, d in deltas.items()) / NUM_USERS
    got = _looped(model, ctx, seeds, UserLevelDP(clip, 0.0, 0))
    np.testing.assert_allclose(got.shared["item_vec.weight"], want, atol=1e-6)
    assert got.weight == NUM_USERS
    assert all(v.dtype == np.float32 for v in got.shared.values())  # as sent on the wire
    # Negative control: without DP the interaction-weighted mean is another answer.
    plain = _looped(model, ctx, seeds, None)
    assert np.abs(plain.shared["item_vec.weight"] - got.shared["item_vec.weight"]).max() > 1e-3


def test_user_level_dp_noise_is_seeded_and_of_the_stated_size():
    ctx = _context()
    model = _BagModel(NUM_USERS, seed=1)
    model.bind(ctx)
    seeds = [50 + u for u in range(NUM_USERS)]
    clean = _looped(model, ctx, seeds, UserLevelDP(0.5, 0.0, 1))
    a, b, c = (_looped(model, ctx, seeds, UserLevelDP(0.5, 40.0, s)) for s in (1, 1, 2))
    key = "item_vec.weight"
    np.testing.assert_array_equal(a.shared[key], b.shared[key])  # same seed, same bits
    noise, other = a.shared[key] - clean.shared[key], c.shared[key] - clean.shared[key]
    assert not np.allclose(noise, other)
    # std = noise_multiplier * clip / users on every element; 48 draws: a loose band.
    assert 0.6 < np.std(noise) / (40.0 * 0.5 / NUM_USERS) < 1.4
    assert np.count_nonzero(noise) == noise.size  # untouched item rows too
    # The users' own rows are their training, untouched by the noise.
    np.testing.assert_array_equal(a.private["user_vec.weight"], clean.private["user_vec.weight"])


@pytest.mark.parametrize("scope", ["private", "all"])
@pytest.mark.parametrize("full", [False, True])
def test_looped_finetuning_scores_with_each_users_own_copy(scope, full):
    ctx = _context()
    model = _BagModel(NUM_USERS, seed=1)
    model.bind(ctx)
    exclude = InteractionSet(ctx.train_users, ctx.train_items, NUM_ITEMS)
    seeds = [70 + u for u in range(NUM_USERS)]
    negatives = np.stack([np.arange(6) + u for u in range(NUM_USERS)])
    val, test = finetune_users_looped(
        model,
        ctx,
        exclude,
        seeds,
        negatives,
        (1, 3),
        scope=scope,
        epochs=3,
        batch_size=8,
        learning_rate=0.05,
        num_negatives=2,
        full=full,
    )
    # The reference: each user's own fine-tuned one-user copy ranks its val item
    # among the negatives and, brute force, its test item over the catalogue
    # minus its training items.
    ranks, full_ranks = [], []
    for u in range(NUM_USERS):
        if u == 2:
            one, row = model, u  # no training data: the global model
        else:
            one, row = _alone(model, ctx, u, seeds[u], scope), 0
        cands = torch.from_numpy(np.concatenate([[ctx.val_items[u]], negatives[u]]))
        with torch.no_grad():
            scores = one(torch.full((7,), row), cands).numpy()
            every = one(torch.full((NUM_ITEMS,), row), torch.arange(NUM_ITEMS)).numpy()
        ranks.append(int((scores[1:] >= scores[0]).sum()))
        eligible = np.ones(NUM_ITEMS, dtype=bool)
        eligible[ctx.train_items[ctx.train_users == u]] = False
        eligible[ctx.test_items[u]] = False
        full_ranks.append(int((every[eligible] >= every[ctx.test_items[u]]).sum()))
    assert val.sums["hr@3"] == sum(r < 3 for r in ranks)
    assert val.num_users == test.num_users == NUM_USERS
    if full:
        assert test.sums["full-hr@3"] == sum(r < 3 for r in full_ranks)
        want = sum(1 / np.log2(r + 2) for r in full_ranks if r < 3)
        assert test.sums["full-ndcg@3"] == pytest.approx(want, abs=1e-12)
        assert 0 < test.sums["full-hr@3"] < NUM_USERS  # neither all hits nor none
    else:
        assert not any(k.startswith("full-") for k in test.sums)


def test_group_path_calls_the_models_own_objective_and_refuses_fedprox():
    ctx = _context()
    model = _BagModel(NUM_USERS)
    model.bind(ctx)
    exclude = InteractionSet(ctx.train_users, ctx.train_items, NUM_ITEMS)
    args = dict(epochs=1, batch_size=8, num_negatives=1, rng=np.random.default_rng(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = train_epochs(model, ctx.train_users, ctx.train_items, exclude, optimizer=opt, **args)
    assert np.isfinite(loss)
    with pytest.raises(ValueError, match=r"own objective.*proximal-mu=0"):
        train_epochs(
            model, ctx.train_users, ctx.train_items, exclude, optimizer=opt, proximal_mu=0.1, **args
        )
