"""Per-user training inside one node equals a loop of independent users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec_flwr.datasets.negatives import InteractionSet
from fedrec_flwr.models import (
    MODELS,
    NodeContext,
    Recommender,
    build_model,
    load_arrays,
    private_arrays,
    shared_arrays,
)
from fedrec_flwr.train.group import train_epochs
from fedrec_flwr.train.peruser import (
    _adam_step_keeping,
    finetune_users_and_score,
    train_users_independently,
)

NUM_ITEMS = 40
NUM_USERS = 11


class _BiasedMF(Recommender):
    """Test-only model unlike NCF: a dot product of the user vector through a
    tanh layer with the item vector, plus an item bias and a global offset."""

    def __init__(self, num_users: int, num_items: int, dim: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.item_vec = torch.nn.Embedding(num_items, dim)
        self.item_bias = torch.nn.Embedding(num_items, 1)
        self.proj = torch.nn.Linear(dim, dim)
        self.offset = torch.nn.Parameter(torch.zeros(()))
        self.user_vec = torch.nn.Embedding(num_users, dim)
        self.reset_parameters(seed)

    def item_tables(self) -> tuple[str, ...]:
        return ("item_vec.weight", "item_bias.weight")

    def reset_parameters(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-0.5, 0.5, generator=gen)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user = torch.tanh(self.proj(self.user_vec(users)))
        dot = (user * self.item_vec(items)).sum(-1)
        return dot + self.item_bias(items).squeeze(-1) + self.offset


class _WholeTablesMF(_BiasedMF):
    """The same model declaring no item tables: users get whole tables."""

    def item_tables(self) -> tuple[str, ...]:
        return ()


def _side_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """User features for NUM_USERS users, item features for the catalogue."""
    users = pd.DataFrame(
        {
            "age": [str(18 + 7 * u) for u in range(NUM_USERS)],
            "gender": ["F" if u % 2 else "M" for u in range(NUM_USERS)],
            "occupation": [f"job{u % 3}" for u in range(NUM_USERS)],
        }
    )
    items = pd.DataFrame(
        {
            "genres": [
                "A|B" if i % 3 == 0 else ("B" if i % 3 == 1 else "") for i in range(NUM_ITEMS)
            ],
            "release_year": [str(1950 + 5 * i) for i in range(NUM_ITEMS)],
        }
    )
    return users, items


def _bind_rows(model: Recommender, rows) -> Recommender:
    """Bind the side features of users ``rows`` (model row j = user rows[j])."""
    users, items = _side_tables()
    empty = np.zeros(0, dtype=np.int64)
    model.bind(
        NodeContext(
            num_users=len(rows),
            train_users=empty,
            train_items=empty,
            val_items=empty,
            test_items=empty,
            user_table=users.iloc[list(rows)].reset_index(drop=True),
            item_table=items,
        )
    )
    return model


def _factory(name: str):
    """``build(num_users, seed, rows=None)`` for a registered model or a test-only
    one; ``rows`` are the users a model's rows stand for (side features)."""
    if name == "biased-mf":
        return lambda n, seed, rows=None: _BiasedMF(n, NUM_ITEMS, seed=seed)
    if name == "whole-tables-mf":
        return lambda n, seed, rows=None: _WholeTablesMF(n, NUM_ITEMS, seed=seed)

    def build(n: int, seed: int, rows=None) -> Recommender:
        model = build_model(name, n, NUM_ITEMS, factors=8, mlp_layers=(16, 8), seed=seed)
        return _bind_rows(model, range(n) if rows is None else rows)

    return build


# Pairwise families (own-objective ones are trained one by one: tests/test_looped.py).
MODEL_NAMES = [
    *(n for n in MODELS if build_model(n, 1, NUM_ITEMS).pairwise),
    "biased-mf",
    "whole-tables-mf",
]


def _log(seed: int = 0, num_users: int = NUM_USERS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        if u == 3:
            continue  # a user with no training interaction is skipped, not an error
        k = int(rng.integers(2, 25))
        users += [u] * k
        items += list(rng.choice(NUM_ITEMS, size=k, replace=False))
    return np.array(users), np.array(items)


def _one_user(build, model, u: int):
    """User ``u``'s own one-user client model: global shared arrays, its rows."""
    one = build(1, 0, rows=[u])
    load_arrays(one, shared_arrays(model), private=False)
    load_arrays(one, {k: v[u : u + 1] for k, v in private_arrays(model).items()}, private=True)
    return one


def _train_alone(one, items_u, seed, *, epochs, batch, lr, wd, negs, params=None):
    n = len(items_u)
    opt = torch.optim.Adam(one.parameters() if params is None else params, lr=lr, weight_decay=wd)
    train_epochs(
        one,
        np.zeros(n, dtype=np.int64),
        items_u,
        InteractionSet(np.zeros(n), items_u, NUM_ITEMS),
        epochs=epochs,
        batch_size=batch,
        optimizer=opt,
        num_negatives=negs,
        rng=np.random.default_rng(seed),
    )


def _loop(build, model, users, items, seeds, **settings):
    """The reference: every user its own client, trained alone, then FedAvg."""
    acc = {k: np.zeros(v.shape) for k, v in shared_arrays(model).items()}
    out_private = {k: v.copy() for k, v in private_arrays(model).items()}
    total = 0
    for u in range(NUM_USERS):
        mask = users == u
        if not mask.any():
            continue
        one = _one_user(build, model, u)
        _train_alone(one, items[mask], seeds[u], **settings)
        n = int(mask.sum())
        total += n
        for k, v in shared_arrays(one).items():
            acc[k] += n * v.astype(np.float64)
        for k, v in private_arrays(one).items():
            out_private[k][u] = v[0]
    return {k: v / total for k, v in acc.items()}, out_private, total


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_matches_independent_users(name: str, wd: float) -> None:
    build = _factory(name)
    users, items = _log()
    model = build(NUM_USERS, 3)
    model.reset_private(7)
    seeds = [100 + u for u in range(NUM_USERS)]
    exclude = InteractionSet(users, items, NUM_ITEMS)
    settings = dict(epochs=2, batch=8, lr=0.01, wd=wd, negs=3)
    want_shared, want_private, want_total = _loop(build, model, users, items, seeds, **settings)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = train_users_independently(
        model,
        users,
        items,
        exclude,
        seeds,
        epochs=2,
        batch_size=8,
        learning_rate=0.01,
        num_negatives=3,
        weight_decay=wd,
        chunk_users=4,  # several chunks, with uneven step counts inside each
    )
    assert got.weight == want_total == len(users)
    assert set(got.shared) == set(want_shared)
    for name_, want in want_shared.items():
        np.testing.assert_allclose(got.shared[name_], want, rtol=0, atol=2e-6, err_msg=name_)
    for name_, want in want_private.items():
        np.testing.assert_allclose(got.private[name_], want, rtol=0, atol=2e-6, err_msg=name_)
    # Training moved the model: the comparison above is not trivially true.
    moved = max(float(np.abs(got.shared[k] - v).max()) for k, v in shared_arrays(model).items())
    assert moved > 1e-3
    assert np.isfinite(got.loss)
    # The model passed in is only read.
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("scope", "wd"), [("private", 0.0), ("all", 0.0), ("all", 1e-3)])
def test_finetune_scores_match_independent_users(name: str, scope: str, wd: float) -> None:
    build = _factory(name)
    users, items = _log()
    model = build(NUM_USERS, 3)
    model.reset_private(7)
    seeds = [200 + u for u in range(NUM_USERS)]
    candidates = np.random.default_rng(1).integers(0, NUM_ITEMS, size=(NUM_USERS, 6))
    settings = dict(epochs=2, batch=8, lr=0.05, wd=wd, negs=2)
    want = np.zeros(candidates.shape, dtype=np.float32)
    for u in range(NUM_USERS):
        one = _one_user(build, model, u)
        mask = users == u
        if mask.any():
            params = [p for n, p in one.named_parameters() if scope == "all" or one.is_private(n)]
            _train_alone(one, items[mask], seeds[u], params=params, **settings)
        with torch.no_grad():
            want[u] = one(torch.zeros(6, dtype=torch.int64), torch.from_numpy(candidates[u]))
    got = finetune_users_and_score(
        model,
        users,
        items,
        InteractionSet(users, items, NUM_ITEMS),
        seeds,
        candidates,
        scope=scope,
        epochs=2,
        batch_size=8,
        learning_rate=0.05,
        num_negatives=2,
        weight_decay=wd,
        chunk_users=4,
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # Fine-tuning changed the scores: the comparison above is not trivially true.
    with torch.no_grad():
        plain = model(
            torch.arange(NUM_USERS).repeat_interleave(6), torch.from_numpy(candidates.ravel())
        ).reshape(candidates.shape)
    assert float(np.abs(got - plain.numpy()).max()) > 1e-3
    np.testing.assert_allclose(got[3], plain[3].numpy(), rtol=0, atol=2e-6)  # nothing to train


def test_exhausted_users_are_left_exactly_unchanged() -> None:
    param = torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4))
    opt = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones_like(param)
    opt.step()  # every user has moments now
    before = param.detach().clone()
    moments = {k: opt.state[param][k].clone() for k in ("exp_avg", "exp_avg_sq")}
    param.grad = torch.full_like(param, 0.5)
    keep = torch.tensor([False, True, False])
    _adam_step_keeping(opt, [param], keep)
    assert torch.equal(param[1], before[1])
    for k, v in moments.items():
        assert torch.equal(opt.state[param][k][1], v[1])
        assert not torch.equal(opt.state[param][k][0], v[0])  # the others did step
    assert not torch.equal(param[0], before[0])


def test_item_tables_must_be_shared_entries() -> None:
    class Wrong(_BiasedMF):
        def item_tables(self) -> tuple[str, ...]:
            return ("user_vec.weight",)

    users, items = _log()
    with pytest.raises(ValueError, match=r"Wrong.item_tables\(\) names \['user_vec.weight'\]"):
        train_users_independently(
            Wrong(NUM_USERS, NUM_ITEMS),
            users,
            items,
            InteractionSet(users, items, NUM_ITEMS),
            list(range(NUM_USERS)),
            epochs=1,
            batch_size=8,
            learning_rate=0.01,
            num_negatives=2,
        )


def test_user_without_interactions_keeps_its_embedding() -> None:
    users, items = _log()
    model = _factory("neumf")(NUM_USERS, 3)
    before = private_arrays(model)
    got = train_users_independently(
        model,
        users,
        items,
        InteractionSet(users, items, NUM_ITEMS),
        list(range(NUM_USERS)),
        epochs=1,
        batch_size=8,
        learning_rate=0.01,
        num_negatives=2,
    )
    for name, table in before.items():
        np.testing.assert_array_equal(got.private[name][3], table[3])
        assert not np.array_equal(got.private[name][0], table[0])


def test_seed_count_must_match_users() -> None:
    users, items = _log()
    model = _factory("gmf")(NUM_USERS, 0)
    with pytest.raises(ValueError, match="1 user seeds for 11 users"):
        train_users_independently(
            model,
            users,
            items,
            InteractionSet(users, items, NUM_ITEMS),
            [0],
            epochs=1,
            batch_size=8,
            learning_rate=0.01,
            num_negatives=2,
        )


def _random_log(num_users: int = 12, num_items: int = 40, seed: int = 5):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        k = int(rng.integers(6, 20))
        for t, i in enumerate(rng.choice(num_items, size=k, replace=False)):
            rows.append((u + 1, int(i) + 1, 4, 1_000 + t))
    return rows


_BASE = {
    "num-server-rounds": 2,
    "local-epochs": 2,
    "batch-size": 16,
    "learning-rate": 0.01,
    "factors": 8,
    "mlp-layers": "16,8",
    "num-eval-negatives": 10,
    "top-k": "5",
    "min-nodes": 1,
}


def _run_grid(rc, nodes, out):
    """A federated run in process; its results.json and final model."""
    import json
    import logging

    from fedrec_flwr.app.client_app import app as client_app
    from fedrec_flwr.config import RunConfig
    from fedrec_flwr.runs.federated import run_federated
    from fedrec_flwr.testing.inprocess import InProcessGrid

    logging.getLogger("flwr").setLevel(logging.WARNING)
    grid = InProcessGrid(
        client_app, [{"partition-id": p, "num-partitions": nodes} for p in range(nodes)], rc
    )
    path = run_federated(grid, RunConfig.from_mapping(rc), out)
    return json.loads(path.read_text()), torch.load(out / "model.pt")["state_dict"]


def _assert_same_metrics(a, b):
    for x, y in zip(a["rounds"], b["rounds"], strict=True):
        for part in ("val", "test"):
            for k, v in x[part].items():
                assert y[part][k] == pytest.approx(v, abs=1e-9), (part, k)
        assert y["val-loss"] == pytest.approx(x["val-loss"], abs=1e-6)


@pytest.mark.parametrize(
    "finetune",
    [
        {},
        {"finetune-epochs": 2, "finetune-scope": "all"},
        {"finetune-epochs": 1, "finetune-scope": "private"},
    ],
    ids=["fedavg", "finetune-all", "finetune-private"],
)
def test_per_user_mode_in_groups_equals_one_user_per_client(tmp_path, finetune):
    """3 nodes in per-user mode give the model and metrics of 12 one-user nodes.

    This is the equivalence the speed benchmark relies on: the same FedAvg,
    with one message per group instead of one per user. With fine-tuning, the
    personalised metrics are those of 12 one-user clients each fine-tuning
    its own copy.
    """
    from conftest import write_u_data

    # Full ranking too: with fine-tuning, each user's own copy ranks the catalogue.
    base = {
        **_BASE,
        "data-dir": str(write_u_data(tmp_path / "log", _random_log())),
        "full-ranking": True,
        **finetune,
    }
    one_each, model_a = _run_grid({**base, "partitioner": "natural"}, 12, tmp_path / "natural")
    grouped, model_b = _run_grid({**base, "client-mode": "per-user"}, 3, tmp_path / "per-user")
    assert one_each["num-clients"] == 12 and grouped["num-clients"] == 3
    for name, value in model_a.items():
        torch.testing.assert_close(model_b[name], value, rtol=0, atol=1e-5, msg=name)
    _assert_same_metrics(one_each, grouped)
    if finetune:
        # The global model's metrics come along, and are those of the same run
        # without fine-tuning, whose val loss differs: fine-tuning did move it.
        plain, _ = _run_grid(
            {**base, "finetune-epochs": 0, "client-mode": "per-user"}, 3, tmp_path / "g"
        )
        for a, b in zip(plain["rounds"], grouped["rounds"], strict=True):
            assert b["global-test"] == pytest.approx(a["test"], abs=1e-9)
            assert any(k.startswith("full-") for k in b["test"])
            assert abs(b["val-loss"] - a["val-loss"]) > 1e-4
    # A group trained as one client is a different computation: the check above
    # is not met by any two runs.
    _, model_c = _run_grid(base, 3, tmp_path / "groups")
    assert max(float((model_c[k] - model_a[k]).abs().max()) for k in model_a) > 1e-3


def test_finetune_unit_user_personalises_each_user_of_a_group(tmp_path):
    """``finetune-unit=user`` in group mode: each user fine-tunes alone.

    With one user per client the two units are the same computation (the
    user's seed is the one-user client's), so the batched per-user path is
    checked against ``train_epochs`` on a one-user model; on groups the units
    differ while the global model, and so its metrics, are the same.
    """
    from conftest import write_u_data

    base = {
        **_BASE,
        "data-dir": str(write_u_data(tmp_path / "log", _random_log())),
        "finetune-epochs": 2,
        "finetune-scope": "all",
        "full-ranking": True,
    }
    natural = {**base, "partitioner": "natural"}
    as_client, _ = _run_grid(natural, 12, tmp_path / "nc")
    as_user, _ = _run_grid({**natural, "finetune-unit": "user"}, 12, tmp_path / "nu")
    _assert_same_metrics(as_client, as_user)

    groups_client, model_a = _run_grid(base, 3, tmp_path / "gc")
    groups_user, model_b = _run_grid({**base, "finetune-unit": "user"}, 3, tmp_path / "gu")
    for name, value in model_a.items():
        torch.testing.assert_close(model_b[name], value, rtol=0, atol=0, msg=name)
    for a, b in zip(groups_client["rounds"], groups_user["rounds"], strict=True):
        assert b["global-test"] == a["global-test"]
        assert abs(b["val-loss"] - a["val-loss"]) > 1e-4

    # finetune-learning-rate: 0 means learning-rate; another value moves only
    # the personalised copies.
    user = {**base, "finetune-unit": "user"}
    same, _ = _run_grid({**user, "finetune-learning-rate": 0.01}, 3, tmp_path / "lr1")
    _assert_same_metrics(groups_user, same)
    faster, _ = _run_grid({**user, "finetune-learning-rate": 0.05}, 3, tmp_path / "lr5")
    for a, b in zip(groups_user["rounds"], faster["rounds"], strict=True):
        assert b["global-test"] == a["global-test"]
        assert abs(b["val-loss"] - a["val-loss"]) > 1e-4


def test_per_user_finetuning_refuses_personal_layers() -> None:
    from fedrec_flwr.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="personal layers belong to a client"):
        RunConfig.from_mapping({"finetune-unit": "user", "private-layers": "output"})


def test_finetune_scope_must_be_known() -> None:
    users, items = _log()
    model = _factory("gmf")(NUM_USERS, 0)
    with pytest.raises(ValueError, match="scope='rows': expected 'private' or 'all'"):
        finetune_users_and_score(
            model,
            users,
            items,
            InteractionSet(users, items, NUM_ITEMS),
            list(range(NUM_USERS)),
            np.zeros((NUM_USERS, 3), dtype=np.int64),
            scope="rows",
            epochs=1,
            batch_size=8,
            learning_rate=0.01,
            num_negatives=2,
        )
