"""SASRec: known answers on synthetic sequences, the history rules, reproducibility."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedrec_flwr.datasets.negatives import InteractionSet
from fedrec_flwr.datasets.options import DataOptions
from fedrec_flwr.datasets.prepare import prepare_data
from fedrec_flwr.models import NodeContext, private_arrays, shared_arrays
from fedrec_flwr.models.sasrec import SASRec
from fedrec_flwr.train.evaluate import rank_val_test
from fedrec_flwr.train.metrics import finalize_sums


def make_context(sequences: list[list[int]]) -> NodeContext:
    """Each user's whole sequence; the last two items are validation and test."""
    train = [s[:-2] for s in sequences]
    users = np.repeat(np.arange(len(sequences)), [len(t) for t in train])
    items = np.asarray([i for t in train for i in t], dtype=np.int64)
    return NodeContext(
        num_users=len(sequences),
        train_users=users.astype(np.int64),
        train_items=items,
        val_items=np.asarray([s[-2] for s in sequences], dtype=np.int64),
        test_items=np.asarray([s[-1] for s in sequences], dtype=np.int64),
    )


def exclude_of(context: NodeContext, num_items: int) -> InteractionSet:
    return InteractionSet(context.train_users, context.train_items, num_items)


def cycle_sequences(num_users: int, num_items: int, length: int, seed: int) -> list[list[int]]:
    """Item i is always followed by item i+1 (mod num_items), from random starts."""
    starts = np.random.default_rng(seed).integers(0, num_items, size=num_users)
    return [[(int(s) + t) % num_items for t in range(length)] for s in starts]


def random_sequences(num_users: int, num_items: int, seed: int) -> list[list[int]]:
    """Distinct items per user, lengths 3..14 (some users shorter than the window)."""
    rng = np.random.default_rng(seed)
    return [
        rng.choice(num_items, size=int(rng.integers(3, 15)), replace=False).tolist()
        for _ in range(num_users)
    ]


def train(model: SASRec, context: NodeContext, epochs: int, seed: int, **kw) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=kw.pop("lr", 0.01))
    return model.train_epochs(
        epochs=epochs,
        batch_size=kw.pop("batch_size", 16),
        optimizer=optimizer,
        num_negatives=kw.pop("num_negatives", 2),
        rng=np.random.default_rng(seed),
        exclude=exclude_of(context, model.num_items),
    )


def top_items(model: SASRec, target: str) -> np.ndarray:
    """Each user's best item outside what they already interacted with (the input
    history), as recommendations are ranked."""
    model.eval()
    with model.history_for(target):
        logits = model.score_all(torch.arange(model.num_users))
        history = model._history()
    seen = torch.zeros_like(logits, dtype=torch.bool)
    rows, cols = torch.nonzero(history >= 0, as_tuple=True)
    seen[rows, history[rows, cols]] = True
    return logits.masked_fill(seen, float("-inf")).argmax(dim=1).numpy()


def test_learns_a_cycle_next_item_ranks_first():
    """Item i is always followed by i+1: after training, each user's next item
    (validation, test, then the one after the test item) is its top item."""
    torch.set_num_threads(1)
    num_items = 30
    sequences = cycle_sequences(60, num_items, length=10, seed=0)
    context = make_context(sequences)
    model = SASRec(60, num_items, factors=16, max_len=8, dropout=0.0, seed=3)
    model.bind(context)
    val = np.asarray([s[-2] for s in sequences])
    test = np.asarray([s[-1] for s in sequences])
    after_test = (test + 1) % num_items
    # Negative control: untrained, the next item is rarely the top one.
    assert np.mean(top_items(model, "val") == val) < 0.2
    loss = train(model, context, epochs=60, seed=1)
    assert 0.0 < loss < 0.1
    np.testing.assert_array_equal(top_items(model, "val"), val)
    np.testing.assert_array_equal(top_items(model, "test"), test)  # from train + val
    np.testing.assert_array_equal(top_items(model, "serve"), after_test)
    model.test_input = "train"  # the test item scored from training items only
    np.testing.assert_array_equal(top_items(model, "test"), val)


def scores(model: SASRec, target: str | None) -> torch.Tensor:
    model.eval()
    if target is None:
        return model.score_all(torch.arange(model.num_users))
    with model.history_for(target):
        return model.score_all(torch.arange(model.num_users))


def bound(sequences: list[list[int]], num_items: int, **kw) -> SASRec:
    model = SASRec(len(sequences), num_items, factors=8, max_len=kw.pop("max_len", 6), **kw)
    model.bind(make_context(sequences))
    return model


def test_history_for_switches_the_input_sequence():
    num_items = 40
    sequences = random_sequences(12, num_items, seed=5)
    model = bound(sequences, num_items, seed=1)
    val = scores(model, "val")
    torch.testing.assert_close(scores(model, None), val, rtol=0, atol=0)  # default: training
    # The same user with the validation item appended to training: the paper's test input.
    appended = bound([[*s[:-2], s[-2], s[-1], s[-1]] for s in sequences], num_items, seed=1)
    torch.testing.assert_close(scores(model, "test"), scores(appended, "val"), rtol=0, atol=0)
    # And with the test item too: what recommendations read.
    served = bound([[*s, s[-1], s[-1]] for s in sequences], num_items, seed=1)
    torch.testing.assert_close(scores(model, "serve"), scores(served, "val"), rtol=0, atol=0)
    assert (scores(model, "test") != val).any(dim=1).all()  # every user's input grew
    assert (scores(model, "serve") != scores(model, "test")).any(dim=1).all()
    model.test_input = "train"  # the test item from training items only, read at scoring time
    torch.testing.assert_close(scores(model, "test"), val, rtol=0, atol=0)
    with model.history_for("serve"):
        with model.history_for("val"):
            torch.testing.assert_close(scores(model, None), val, rtol=0, atol=0)
        torch.testing.assert_close(scores(model, None), scores(served, "val"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="target='train'"), model.history_for("train"):
        pass


def test_only_the_last_max_len_items_count():
    """An item before the window changes nothing; one inside it changes the scores."""
    num_items, max_len = 50, 4
    base = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]  # training 1..8: window 5..8
    model = bound(base, num_items, max_len=max_len, seed=2)
    outside = bound([[11, *base[0][1:]]], num_items, max_len=max_len, seed=2)
    inside = bound([[*base[0][:4], 11, *base[0][5:]]], num_items, max_len=max_len, seed=2)
    torch.testing.assert_close(scores(outside, "val"), scores(model, "val"), rtol=0, atol=0)
    assert not torch.equal(scores(inside, "val"), scores(model, "val"))
    # The test input (train + val) drops the oldest item of the window: item 5.
    drop5 = bound([[*base[0][:4], 11, *base[0][5:]]], num_items, max_len=max_len, seed=2)
    torch.testing.assert_close(scores(drop5, "test"), scores(model, "test"), rtol=0, atol=0)


def test_padding_does_not_change_a_representation():
    """A short window encodes the same, whatever the padding in front of it."""
    model = SASRec(0, 20, factors=8, max_len=10, blocks=2, heads=2, seed=4).eval()
    window = torch.tensor([[3, 7, 1]])
    padded = torch.cat([torch.full((1, 7), -1), window], dim=1)
    with torch.no_grad():
        short, long = model.encode(window), model.encode(padded)
    torch.testing.assert_close(long[:, -3:], short)
    assert torch.all(long[:, :7] == 0)


def test_training_pairs_are_next_items_at_every_position():
    model = bound([[4, 5, 6, 7, 8], [9, 10, 11]], 20, max_len=4, seed=0)
    # User 0 trains on 4, 5, 6: input 4, 5 -> targets 5, 6; user 1 has one training item.
    assert model.train_inputs.tolist() == [[-1, -1, 4, 5]]  # user 1 has no pair: no window
    assert model.train_targets.tolist() == [[-1, -1, 5, 6]]
    assert model.train_owner.tolist() == [0]
    assert model.history_train.tolist() == [[-1, 4, 5, 6], [-1, -1, -1, 9]]
    assert model.history_train_val.tolist() == [[4, 5, 6, 7], [-1, -1, 9, 10]]
    assert model.history_all.tolist() == [[5, 6, 7, 8], [-1, 9, 10, 11]]


def trained_state(rng_seed: int) -> tuple[dict[str, torch.Tensor], float]:
    sequences = random_sequences(20, 30, seed=7)
    model = bound(sequences, 30, dropout=0.5, seed=0)
    loss = train(model, make_context(sequences), epochs=3, seed=rng_seed, batch_size=6)
    return {k: v.clone() for k, v in model.state_dict().items()}, loss


def test_same_rng_same_bits_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, loss_a = trained_state(11)
    assert torch.equal(torch.get_rng_state(), before)
    second, loss_b = trained_state(11)
    other, _ = trained_state(12)
    assert loss_a == loss_b
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_dropout_only_in_training():
    sequences = random_sequences(6, 30, seed=8)
    model = bound(sequences, 30, dropout=0.5, seed=0).eval()
    users, items = torch.tensor([0, 1, 2, 0]), torch.tensor([3, 4, 5, 6])
    torch.testing.assert_close(model(users, items), model(users, items), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(users, items), model(users, items))


def test_no_private_arrays_and_shapes_independent_of_users():
    arrays = [shared_arrays(SASRec(n, 17, factors=8, max_len=5, seed=9)) for n in (0, 1, 40)]
    for model_arrays in arrays[1:]:
        assert list(model_arrays) == list(arrays[0])
        for name, value in model_arrays.items():
            np.testing.assert_array_equal(value, arrays[0][name], err_msg=name)
    model = SASRec(40, 17, factors=8, max_len=5, seed=9)
    assert not private_arrays(model)
    assert set(shared_arrays(model)) == set(model.state_dict())
    assert not any("history" in n or "train_" in n for n in model.state_dict())  # node data
    assert model.item_tables() == ("item_emb.weight",)
    assert model.state_dict()["item_emb.weight"].shape == (17, 8)  # no padding row
    assert model.catalogue_size() == 17
    other = shared_arrays(SASRec(0, 17, factors=8, max_len=5, seed=10))
    assert not np.array_equal(other["item_emb.weight"], arrays[0]["item_emb.weight"])


def test_score_all_equals_forward():
    sequences = random_sequences(9, 25, seed=3)
    model = bound(sequences, 25, heads=2, seed=5).eval()
    users = torch.tensor([4, 0, 8])
    with model.history_for("test"):
        full = model.score_all(users)
        pairs = model(users.repeat_interleave(25), torch.arange(25).repeat(3)).reshape(3, 25)
        some = model.score_all(users, torch.tensor([7, 2]))
        alone = model(torch.tensor([0]), torch.tensor([2]))  # batch-independent
    torch.testing.assert_close(full, pairs)
    torch.testing.assert_close(some, full[:, [7, 2]])
    torch.testing.assert_close(alone, full[1, [2]])


def test_zero_and_one_user():
    server = SASRec(0, 12, factors=8, max_len=5)
    empty = make_context([])
    server.bind(empty)
    before = shared_arrays(server)
    assert train(server, empty, epochs=2, seed=0) == 0.0
    for name, value in shared_arrays(server).items():
        np.testing.assert_array_equal(value, before[name])
    assert server.score_all(torch.zeros(0, dtype=torch.int64)).shape == (0, 12)
    one = bound([[1, 2, 3, 4, 5]], 12, seed=0)
    assert np.isfinite(train(one, make_context([[1, 2, 3, 4, 5]]), epochs=2, seed=0))
    assert scores(one, "serve").shape == (1, 12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_users": -1}, "num_users"),
        ({"num_items": 0}, "num_items"),
        ({"factors": 0}, "factors"),
        ({"max_len": 0}, "max_len"),
        ({"blocks": 0}, "blocks"),
        ({"heads": 0}, "heads"),
        ({"heads": 3}, "heads"),  # does not divide factors=64
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"test_input": "val"}, "test_input"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {"num_users": 2, "num_items": 5, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}="):
        SASRec(**args)


def test_bind_rejects_a_foreign_context():
    model = SASRec(3, 10, factors=8)
    with pytest.raises(ValueError, match="num_users"):
        model.bind(make_context([[1, 2, 3]]))
    with pytest.raises(ValueError, match="train_items"):
        SASRec(1, 3, factors=8).bind(make_context([[1, 7, 2, 0]]))


def test_ml100k_partition_trains_and_ranks(ml100k_dir):
    """A node's group of ML-100K: a few epochs lift validation HR@10 well above chance."""
    torch.set_num_threads(1)
    prepared = prepare_data(DataOptions(dataset="ml-100k", data_dir=str(ml100k_dir)))
    data = prepared.client_data(1, 3)
    model = SASRec(data.num_users, data.num_items, seed=0)
    model.bind(data.context())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    loss = model.train_epochs(
        epochs=8,
        batch_size=64,
        optimizer=optimizer,
        num_negatives=1,
        rng=np.random.default_rng(0),
        exclude=data.train_set,
    )
    assert 0.0 < loss < 0.7
    val, test = rank_val_test(model, data, (10,))
    assert val.num_users == test.num_users == data.num_users
    assert finalize_sums(val.sums, val.num_users)["hr@10"] > 0.3  # chance: 0.1


def test_long_sequences_are_cut_into_windows_so_every_item_is_a_target():
    # User 0 trains on 1..7 (8, 9 held out): 6 pairs in windows of 3, from the end.
    model = bound([[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13]], 20, max_len=3, seed=0)
    assert model.train_inputs.tolist() == [[4, 5, 6], [1, 2, 3], [-1, -1, 10]]
    assert model.train_targets.tolist() == [[5, 6, 7], [2, 3, 4], [-1, -1, 11]]
    assert model.train_owner.tolist() == [0, 0, 1]


def test_one_evaluation_reports_both_test_input_rules():
    """With test_input='train+val' the test result also holds the train-only rule's
    metrics: exactly what a second evaluation with test_input='train' gives."""
    sequences = random_sequences(40, 30, seed=2)
    model = bound(sequences, 30, seed=1, dropout=0.0)
    train(model, make_context(sequences), epochs=3, seed=0)
    rng = np.random.default_rng(0)
    negatives = np.stack(
        [rng.choice(np.setdiff1d(np.arange(30), s), 10, replace=False) for s in sequences]
    )
    data = SimpleNamespace(
        num_users=40,
        val_items=np.array([s[-2] for s in sequences]),
        test_items=np.array([s[-1] for s in sequences]),
        eval_negatives=negatives,
    )
    _, both = rank_val_test(model, data, (1, 5))
    model.test_input = "train"
    _, only = rank_val_test(model, data, (1, 5))
    assert set(only.sums) == {"hr@1", "ndcg@1", "hr@5", "ndcg@5"}
    assert {k.removeprefix("from-train-"): v for k, v in both.sums.items() if "from" in k} == (
        only.sums
    )
    assert both.sums["ndcg@5"] != only.sums["ndcg@5"]  # the rules differ on this log


def test_overlapping_windows_give_every_target_context_and_each_target_once():
    # User 0 trains on 1..7: pairs (1->2) .. (6->7). Windows of 3 every 2 pairs,
    # each trained on its last 2 positions: every target once, with >= 1 item before it.
    model = bound([[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13]], 20, max_len=3, stride=2)
    assert model.train_inputs.tolist() == [[4, 5, 6], [2, 3, 4], [-1, 1, 2], [-1, -1, 10]]
    assert model.train_targets.tolist() == [[-1, 6, 7], [-1, 4, 5], [-1, 2, 3], [-1, -1, 11]]
    assert model.train_owner.tolist() == [0, 0, 0, 1]
    # stride 1: one window per target, each with all the context max_len allows (RecBole).
    every = bound([[1, 2, 3, 4, 5, 6, 7, 8, 9]], 20, max_len=3, stride=1)
    assert every.train_inputs.tolist() == [
        [4, 5, 6],
        [3, 4, 5],
        [2, 3, 4],
        [1, 2, 3],
        [-1, 1, 2],
        [-1, -1, 1],
    ]
    assert every.train_targets[:, :-1].eq(-1).all()
    assert every.train_targets[:, -1].tolist() == [7, 6, 5, 4, 3, 2]
    with pytest.raises(ValueError, match=r"^stride=4: must be in \[1, max_len=3\]"):
        SASRec(1, 20, max_len=3, stride=4)


def test_cross_entropy_objective_trains_and_is_reproducible():
    sequences = random_sequences(12, 30, seed=3)
    states = []
    for _ in range(2):
        model = bound(sequences, 30, loss="ce", seed=0)
        loss = train(model, make_context(sequences), epochs=2, seed=5, batch_size=4)
        states.append(model.state_dict())
    assert np.isfinite(loss) and loss > 0
    for name, value in states[0].items():
        torch.testing.assert_close(value, states[1][name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="loss='mse'"):
        SASRec(0, 5, loss="mse")
