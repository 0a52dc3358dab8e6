"""``embedding-l2`` on the ranking task: a penalty on the rows each sample reads.

The known answer is one plain-SGD step computed by hand (``2 * lambda * row *
reads / batch``); the negative control is Adam-style weight decay, which also
moves the rows nobody read.
"""

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data

from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import prepare_data
from fedrec_flwr.datasets.negatives import InteractionSet, sample_train_negatives
from fedrec_flwr.errors import ConfigError
from fedrec_flwr.models import build_model
from fedrec_flwr.runs import centralized
from fedrec_flwr.train import trainer as trainer_module
from fedrec_flwr.train.group import train_epochs
from fedrec_flwr.train.trainer import GroupTrainer, round_seed

NUM_ITEMS, LR, L2 = 10, 0.5, 0.2
USERS, ITEMS = np.array([0, 1, 1]), np.array([0, 1, 2])


def _one_step(name, embedding_l2=0.0, weight_decay=0.0):
    """One SGD step over the whole batch (3 positives + 3 negatives) from a seeded model."""
    model = build_model(name, 2, NUM_ITEMS, seed=0, factors=3, mlp_layers=(6, 3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    exclude = InteractionSet(USERS, ITEMS, NUM_ITEMS)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=weight_decay)
    train_epochs(
        model,
        USERS,
        ITEMS,
        exclude,
        epochs=1,
        batch_size=64,
        optimizer=optimizer,
        num_negatives=1,
        rng=np.random.default_rng(7),
        embedding_l2=embedding_l2,
    )
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, before, after


@pytest.mark.parametrize("name", ["mf", "neumf"])
def test_the_penalty_moves_each_read_row_by_its_hand_computed_gradient(name):
    model, before, plain = _one_step(name)
    _, _, penalised = _one_step(name, embedding_l2=L2)
    # The rows read: each positive's and each negative's (train_epochs draws the
    # negatives first from its rng, so the same draw gives them here).
    negatives = sample_train_negatives(
        np.random.default_rng(7), USERS, InteractionSet(USERS, ITEMS, NUM_ITEMS), 1
    )
    user_reads = np.bincount(np.concatenate([USERS, USERS]), minlength=2)
    item_reads = np.bincount(np.concatenate([ITEMS, negatives.ravel()]), minlength=NUM_ITEMS)
    batch = 2 * len(USERS)
    tables = {n: user_reads for n in before if model.is_private(n)}
    tables |= {n: item_reads for n in model.item_tables()}
    assert len(tables) >= 4  # user and item vectors (and biases / both towers)
    for n in before:
        diff = (penalised[n] - plain[n]).numpy()
        if n not in tables:  # the MLP tower, the output layer, the global bias
            np.testing.assert_array_equal(diff, 0, err_msg=n)
            continue
        reads = tables[n].astype(np.float32).reshape(-1, 1)
        want = -LR * L2 * 2 * before[n].numpy() * reads / batch
        np.testing.assert_allclose(diff, want, rtol=1e-4, atol=1e-7, err_msg=n)
    unread = item_reads == 0
    assert unread.any() and (item_reads > 1).any()  # both cases are exercised
    for n in model.item_tables():
        np.testing.assert_array_equal(penalised[n][unread], before[n][unread])
    # Negative control: weight decay moves the unread rows as well.
    _, _, decayed = _one_step(name, weight_decay=L2)
    emb = model.item_tables()[0]
    assert not torch.equal(decayed[emb][unread], before[emb][unread])


def test_a_model_with_its_own_objective_refuses_the_penalty():
    model = build_model("lightgcn", 2, NUM_ITEMS, seed=0, factors=3)
    with pytest.raises(ValueError, match=r"own objective.*embedding-l2=0"):
        train_epochs(
            model,
            USERS,
            ITEMS,
            InteractionSet(USERS, ITEMS, NUM_ITEMS),
            epochs=1,
            batch_size=4,
            optimizer=torch.optim.SGD(model.parameters(), lr=LR),
            num_negatives=1,
            rng=np.random.default_rng(0),
            embedding_l2=L2,
        )


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"model": "sasrec"}, r"^embedding-l2=0.1 with model='sasrec': the model trains its own"),
        ({"model": "lightgcn"}, r"^embedding-l2=0.1 with model='lightgcn': .*embedding-l2=0$"),
        ({"client-mode": "per-user"}, r"^client-mode='per-user' supports .*reset embedding-l2"),
        (
            {"finetune-unit": "user", "finetune-epochs": 1},
            r"^embedding-l2=0.1 with finetune-unit='user': .*finetune-unit='client'",
        ),
    ],
)  # fmt: skip
def test_combinations_without_a_penalty_term_are_refused_in_one_line(keys, match):
    with pytest.raises(ConfigError, match=match) as exc:
        RunConfig.from_mapping({"model": "mf", "embedding-l2": 0.1, **keys})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("model", ["mf", "hybrid", "gmf"])
def test_ranking_models_trained_pairwise_accept_it(model):
    assert (
        RunConfig.from_mapping({"model": model, "embedding-l2": 0.1}).training.embedding_l2 == 0.1
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())


def test_a_federated_group_round_trains_with_the_penalty(data_dir):
    """GroupTrainer's round equals train_epochs with the penalty, and not without it."""
    rc = {"data-dir": str(data_dir), "model": "mf", "factors": 8, "batch-size": 32}
    rc |= {"num-eval-negatives": 20, "local-epochs": 1, "learning-rate": 0.01, "seed": 3}
    cfg = RunConfig.from_mapping({**rc, "embedding-l2": L2})
    data = prepare_data(cfg.data).client_data(0, 2)

    def fresh():
        m = cfg.model.build(data.num_users, data.num_items, seed=3)
        m.bind(data.context())
        GroupTrainer(cfg.training, 3).init_private(m, data)
        return m

    got = fresh()
    exclude = data.negative_pool("train")
    GroupTrainer(cfg.training, 3).train(
        got, data, exclude, server_round=1, knobs=cfg.round_knobs({}), anchor={}
    )
    results = {}
    for l2 in (L2, 0.0):
        ref = fresh()
        train_epochs(
            ref,
            data.train_users,
            data.train_items,
            exclude,
            epochs=1,
            batch_size=32,
            optimizer=torch.optim.Adam(ref.parameters(), lr=0.01),
            num_negatives=cfg.training.num_negatives,
            rng=np.random.default_rng(round_seed(3, data.partition_id, 1)),
            embedding_l2=l2,
        )
        results[l2] = ref.state_dict()
    for n, value in got.state_dict().items():
        assert torch.equal(value, results[L2][n]), n
    assert any(not torch.equal(v, results[0.0][n]) for n, v in got.state_dict().items())


@pytest.mark.parametrize("where", ["centralised", "fine-tuning"])
def test_every_group_training_path_passes_the_penalty_on(data_dir, tmp_path, monkeypatch, where):
    seen = []
    module = centralized if where == "centralised" else trainer_module
    real = module.train_epochs

    def spy(*args, **kwargs):
        seen.append(kwargs.get("embedding_l2"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "train_epochs", spy)
    rc = {"data-dir": str(data_dir), "model": "mf", "factors": 4, "num-eval-negatives": 20}
    rc |= {"embedding-l2": L2, "num-server-rounds": 1, "output-dir": str(tmp_path / "run")}
    cfg = RunConfig.from_mapping(rc | ({"finetune-epochs": 1} if where == "fine-tuning" else {}))
    if where == "centralised":
        centralized.run_centralized(cfg, log=False)
    else:
        data = prepare_data(cfg.data).client_data(0, 2)
        model = cfg.model.build(data.num_users, data.num_items, seed=0)
        model.bind(data.context())
        knobs = cfg.round_knobs({})
        assert knobs.finetune_epochs == 1
        GroupTrainer(cfg.training, 0).personalised_rank(
            model, data, data.negative_pool("train"), server_round=1, knobs=knobs, personal=()
        )
    assert seen and set(seen) == {L2}
