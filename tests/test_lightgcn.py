"""LightGCN: known answers for the propagation, the node's graph, training and state split."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data

from fedrec_flwr.datasets import DataOptions, InteractionSet, prepare_data, sample_train_negatives
from fedrec_flwr.models import NodeContext, load_arrays, private_arrays, shared_arrays
from fedrec_flwr.models.lightgcn import LightGCN
from fedrec_flwr.train.evaluate import rank_val_test
from fedrec_flwr.train.group import train_epochs

R2 = 1 / math.sqrt(2)


def _context(num_users, users, items, val=None, test=None):
    n = num_users
    return NodeContext(
        num_users=n,
        train_users=np.asarray(users, dtype=np.int64),
        train_items=np.asarray(items, dtype=np.int64),
        val_items=np.asarray(val if val is not None else [0] * n, dtype=np.int64),
        test_items=np.asarray(test if test is not None else [0] * n, dtype=np.int64),
    )


def _set(model, user_emb, item_emb):
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor(user_emb, dtype=torch.float32))
        model.item_emb.weight.copy_(torch.tensor(item_emb, dtype=torch.float32))


# The hand-made graph: user 0 -> items 0, 1; user 1 -> items 1, 2; item 3 isolated.
# Degrees: users 2, 2; items 1, 2, 1, 0; weight of (u, i) = 1 / sqrt(d_u d_i).
HAND_B = [[R2 / 1, 1 / 2, 0, 0], [0, 1 / 2, R2, 0]]  # 1/sqrt(2*1), 1/sqrt(2*2)
USER_EMB = [[1.0, 0.0], [2.0, -1.0]]
ITEM_EMB = [[1.0, 1.0], [0.0, 2.0], [-1.0, 0.5], [3.0, -2.0]]


@pytest.fixture
def hand():
    def build(layers):
        model = LightGCN(2, 4, factors=2, layers=layers)
        model.bind(_context(2, [0, 0, 1, 1], [0, 1, 1, 2], val=[2, 3], test=[3, 0]))
        _set(model, USER_EMB, ITEM_EMB)
        return model

    return build


def test_adjacency_is_the_symmetric_normalisation(hand):
    model = hand(1)
    np.testing.assert_allclose(model.adjacency().numpy(), HAND_B, rtol=1e-6)
    assert model.num_edges() == 4


def test_one_layer_propagation_known_answer(hand):
    model = hand(1)
    users, items = model.propagate()
    # User 0: (e_u0 + e_i0 / sqrt 2 + e_i1 / 2) / 2, written out.
    expected_u0 = [(1 + R2 * 1 + 0.5 * 0) / 2, (0 + R2 * 1 + 0.5 * 2) / 2]
    np.testing.assert_allclose(users[0].detach().numpy(), expected_u0, rtol=1e-6)
    # Item 1 (both users, weight 1/2 each): (e_i1 + e_u0 / 2 + e_u1 / 2) / 2.
    expected_i1 = [(0 + 0.5 * 1 + 0.5 * 2) / 2, (2 + 0 + 0.5 * -1) / 2]
    np.testing.assert_allclose(items[1].detach().numpy(), expected_i1, rtol=1e-6)
    b, eu, ei = np.array(HAND_B), np.array(USER_EMB), np.array(ITEM_EMB)
    np.testing.assert_allclose(users.detach().numpy(), (eu + b @ ei) / 2, rtol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), (ei + b.T @ eu) / 2, rtol=1e-6)
    logits = model(torch.tensor([0, 1]), torch.tensor([1, 1]))
    np.testing.assert_allclose(
        logits.detach().numpy(),
        [np.dot(expected_u0, expected_i1), users[1].detach().numpy() @ expected_i1],
        rtol=1e-6,
    )


def test_two_layer_propagation_known_answer(hand):
    model = hand(2)
    users, items = model.propagate()
    b, eu, ei = np.array(HAND_B), np.array(USER_EMB), np.array(ITEM_EMB)
    # Layers 0, 1, 2 of the bipartite graph: e, B e', B B^T e.
    want_u = (eu + b @ ei + b @ b.T @ eu) / 3
    want_i = (ei + b.T @ eu + b.T @ b @ ei) / 3
    np.testing.assert_allclose(users.detach().numpy(), want_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), want_i, rtol=1e-5, atol=1e-6)
    # User 0 layer 2 by hand: B B^T row 0 = [1/2 + 1/4, 1/4] -> 0.75 e_u0 + 0.25 e_u1.
    layer2_u0 = 0.75 * eu[0] + 0.25 * eu[1]
    np.testing.assert_allclose(
        users[0].detach().numpy(), (eu[0] + b[0] @ ei + layer2_u0) / 3, rtol=1e-5
    )


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_isolated_item_and_user_keep_only_their_own_term(layers):
    # Item 3 and user 2 have no training interaction on this node.
    model = LightGCN(3, 4, factors=2, layers=layers)
    model.bind(_context(3, [0, 0, 1, 1], [0, 1, 1, 2]))
    users, items = model.propagate()
    scale = 1 / (layers + 1)
    torch.testing.assert_close(items[3], model.item_emb.weight[3] * scale)
    torch.testing.assert_close(users[2], model.user_emb.weight[2] * scale)
    if layers:  # a connected item does mix its users
        assert not torch.allclose(items[1], model.item_emb.weight[1] * scale)


def test_star_graph_is_svdpp_with_tied_item_vectors():
    """One user per node (the module docstring): a candidate j scores
    <e_u + n^-1/2 sum_{i in I_u} e_i, e_j> / 4 with one layer."""
    model = LightGCN(1, 6, factors=3, layers=1, seed=5)
    model.bind(_context(1, [0, 0, 0], [0, 2, 4], val=[1], test=[3]))
    eu, ei = model.user_emb.weight.detach(), model.item_emb.weight.detach()
    user_vec = eu[0] + ei[[0, 2, 4]].sum(0) / math.sqrt(3)
    got = model(torch.tensor([0, 0, 0]), torch.tensor([1, 3, 5])).detach()
    torch.testing.assert_close(got, ei[[1, 3, 5]] @ user_vec / 4)


def test_held_out_items_are_not_edges():
    # Two users whose val/test items are items they never trained on.
    ctx = _context(2, [0, 0, 1], [0, 1, 2], val=[2, 0], test=[3, 3])
    model = LightGCN(2, 4, factors=3)
    model.bind(ctx)
    adjacency = model.adjacency()
    assert adjacency[0, 2] == 0 and adjacency[1, 0] == 0 and adjacency[:, 3].eq(0).all()
    assert model.num_edges() == 3
    # Other held-out items, same graph and the same scores.
    other = LightGCN(2, 4, factors=3)
    other.bind(_context(2, [0, 0, 1], [0, 1, 2], val=[1, 1], test=[2, 2]))
    u, i = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 3, 0, 3])
    torch.testing.assert_close(model(u, i), other(u, i), rtol=0, atol=0)


def test_repeated_pairs_are_one_edge():
    model = LightGCN(1, 3, factors=2)
    model.bind(_context(1, [0, 0, 0], [1, 1, 2]))
    assert model.num_edges() == 2
    np.testing.assert_allclose(model.adjacency()[0].numpy(), [0, R2, R2], rtol=1e-6)


@pytest.fixture(scope="module")
def ml100k_group(ml100k_dir):
    prepared = prepare_data(DataOptions(data_dir=str(ml100k_dir)))
    return prepared.client_data(3, 10)


def test_score_all_equals_forward(ml100k_group):
    data = ml100k_group
    model = LightGCN(data.num_users, data.num_items, factors=16, layers=2, seed=1)
    model.bind(data.context())
    users = torch.arange(data.num_users)
    full = model.score_all(users)
    assert full.shape == (data.num_users, data.num_items)
    pair_u = users.repeat_interleave(data.num_items)
    pair_i = torch.arange(data.num_items).repeat(data.num_users)
    with torch.no_grad():
        torch.testing.assert_close(full.reshape(-1), model(pair_u, pair_i), rtol=1e-5, atol=1e-6)
    some = torch.tensor([5, 0, 77])
    torch.testing.assert_close(model.score_all(users[:4], some), full[:4][:, some])


def _train(data, rng_seed, epochs=2):
    model = LightGCN(data.num_users, data.num_items, factors=8, seed=3)
    model.bind(data.context())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = train_epochs(
        model,
        data.train_users,
        data.train_items,
        data.train_set,
        epochs=epochs,
        batch_size=512,
        optimizer=opt,
        num_negatives=2,
        rng=np.random.default_rng(rng_seed),
    )
    return loss, model.state_dict()


def test_training_is_a_function_of_the_rng(ml100k_group):
    loss_a, state_a = _train(ml100k_group, 7)
    loss_b, state_b = _train(ml100k_group, 7)
    loss_c, state_c = _train(ml100k_group, 8)
    assert math.isfinite(loss_a) and loss_a == loss_b
    assert list(state_a) == ["item_emb.weight", "user_emb.weight"]  # no graph buffers
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert loss_c != loss_a and not torch.equal(
        state_a["item_emb.weight"], state_c["item_emb.weight"]
    )


def test_bpr_objective_known_answer(hand):
    """With a frozen model, the returned loss is the mean of -log sigmoid(s(u,i) - s(u,j))
    over the triples, the negatives being the pairwise trainer's draws."""
    model = hand(1)
    users, items = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2])
    exclude = InteractionSet(users, items, 4)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = model.train_epochs(
        epochs=1,
        batch_size=3,
        optimizer=frozen,
        num_negatives=2,
        rng=np.random.default_rng(4),
        exclude=exclude,
    )
    negatives = sample_train_negatives(np.random.default_rng(4), users, exclude, 2)
    with torch.no_grad():
        pos = model(torch.from_numpy(users), torch.from_numpy(items))
        neg = model(
            torch.from_numpy(users).repeat_interleave(2), torch.from_numpy(negatives).flatten()
        )
    want = torch.nn.functional.softplus(-(pos.repeat_interleave(2) - neg)).mean()
    assert loss == pytest.approx(float(want), rel=1e-6)


def test_checkerboard_held_out_item_ranks_in_its_half(tmp_path):
    """Each user rated all of its block; every eval negative lies in the other block."""
    data_dir = write_u_data(tmp_path / "checkerboard", checkerboard_rows())
    data = prepare_data(DataOptions(data_dir=str(data_dir), num_eval_negatives=20)).client_data()
    model = LightGCN(data.num_users, data.num_items, factors=16, layers=1, seed=0)
    model.bind(data.context())
    before = rank_val_test(model, data, (1,))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train_epochs(
        model,
        data.train_users,
        data.train_items,
        data.train_set,
        epochs=8,
        batch_size=64,
        optimizer=opt,
        num_negatives=4,
        rng=np.random.default_rng(0),
    )
    after = rank_val_test(model, data, (1,))
    n = data.num_users
    for result in after:
        assert result.sums["hr@1"] / n >= 0.9
    # Negative control: one layer from random embeddings carries no block structure.
    for result in before:
        assert result.sums["hr@1"] / n <= 0.25


def test_state_split_and_shapes_independent_of_user_count():
    models = [LightGCN(n, 9, factors=4, layers=2, seed=11) for n in (0, 1, 50)]
    for model in models:
        assert list(shared_arrays(model)) == ["item_emb.weight"]
        assert list(private_arrays(model)) == ["user_emb.weight"]
        assert model.item_tables() == ("item_emb.weight",) and model.catalogue_size() == 9
        assert private_arrays(model)["user_emb.weight"].shape == (model.num_users, 4)
    first = shared_arrays(models[0])["item_emb.weight"]
    for model in models[1:]:
        np.testing.assert_array_equal(shared_arrays(model)["item_emb.weight"], first)
    other_seed = shared_arrays(LightGCN(1, 9, factors=4, seed=12))["item_emb.weight"]
    assert not np.array_equal(other_seed, first)
    # The server's user-less, unbound model scores nothing but loads and sends.
    server = models[0]
    assert server.score_all(torch.zeros(0, dtype=torch.int64)).shape == (0, 9)
    node = models[2]
    node.bind(_context(50, np.arange(50) % 50, np.arange(50) % 9))
    load_arrays(node, shared_arrays(server), private=False)
    assert set(node.state_dict()) == {"item_emb.weight", "user_emb.weight"}  # graph not sent
    twin = copy.deepcopy(node)
    torch.testing.assert_close(twin.score_all(torch.arange(3)), node.score_all(torch.arange(3)))


def test_reset_private_redraws_only_user_rows():
    model = LightGCN(4, 6, factors=3, seed=2)
    items, users = model.item_emb.weight.detach().clone(), model.user_emb.weight.detach().clone()
    model.reset_private(99)
    assert torch.equal(model.item_emb.weight, items)
    assert not torch.equal(model.user_emb.weight, users)
    again = LightGCN(4, 6, factors=3, seed=7)
    again.reset_private(99)
    assert torch.equal(again.user_emb.weight, model.user_emb.weight)
    assert float(LightGCN(400, 600, seed=0).item_emb.weight.detach().std()) == pytest.approx(
        0.1, rel=0.05
    )


def test_one_user_node_trains():
    model = LightGCN(1, 5, factors=4)
    model.bind(_context(1, [0, 0], [1, 3], val=[2], test=[4]))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = model.train_epochs(
        epochs=2,
        batch_size=4,
        optimizer=opt,
        num_negatives=2,
        rng=np.random.default_rng(0),
        exclude=InteractionSet(np.array([0, 0]), np.array([1, 3]), 5),
    )
    assert math.isfinite(loss)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_users": -1}, "num_users"),
        ({"num_items": 0}, "num_items"),
        ({"factors": 0}, "factors"),
        ({"factors": 2.5}, "factors"),
        ({"layers": -1}, "layers"),
        ({"layers": True}, "layers"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {"num_users": 2, "num_items": 3, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}="):
        LightGCN(**args)


def test_bad_bind_and_training_arguments():
    model = LightGCN(2, 3, factors=2)
    with pytest.raises(ValueError, match="num_users=3"):
        model.bind(_context(3, [0], [0]))
    with pytest.raises(ValueError, match="train_items"):
        model.bind(_context(2, [0], [3]))
    with pytest.raises(ValueError, match="train_users"):
        model.bind(_context(2, [2], [0]))
    exclude = InteractionSet(np.array([0]), np.array([0]), 3)
    opt = torch.optim.Adam(model.parameters())
    common = {"epochs": 1, "optimizer": opt, "rng": np.random.default_rng(0)}
    with pytest.raises(ValueError, match="bind"):  # nothing bound yet
        model.train_epochs(batch_size=4, num_negatives=1, exclude=exclude, **common)
    model.bind(_context(2, [0, 1], [0, 2]))
    with pytest.raises(ValueError, match=r"^batch_size=0"):
        model.train_epochs(batch_size=0, num_negatives=1, exclude=exclude, **common)
    with pytest.raises(ValueError, match=r"^num_negatives=-1"):
        model.train_epochs(batch_size=4, num_negatives=-1, exclude=exclude, **common)
    with pytest.raises(ValueError, match="exclude"):
        wrong = InteractionSet(np.array([0]), np.array([0]), 4)
        model.train_epochs(batch_size=4, num_negatives=1, exclude=wrong, **common)
    with pytest.raises(ValueError, match="proximal"):
        train_epochs(
            model, np.array([0]), np.array([0]), exclude, batch_size=4, num_negatives=1,
            proximal_mu=0.1, **common,
        )  # fmt: skip
