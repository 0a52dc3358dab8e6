"""``optimizer-state='keep'``: a node's Adam goes on across rounds, and only on the node."""

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data

from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import prepare_data
from fedrec_flwr.errors import ConfigError
from fedrec_flwr.train.group import train_epochs
from fedrec_flwr.train.trainer import GroupTrainer, load_adam_state, round_seed

SEED = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())


def _setup(data_dir, model, state):
    cfg = RunConfig.from_mapping(
        {
            "data-dir": str(data_dir),
            "model": model,
            "factors": 8,
            "mlp-layers": "16,8",
            "batch-size": 32,
            "num-eval-negatives": 20,
            "local-epochs": 1,
            "learning-rate": 0.01,
            "seed": SEED,
            "optimizer-state": state,
        }
    )
    data = prepare_data(cfg.data).client_data(0, 2)
    trainer = GroupTrainer(cfg.training, SEED)

    def fresh():
        m = cfg.model.build(data.num_users, data.num_items, seed=SEED)
        m.bind(data.context())
        trainer.init_private(m, data)
        return m

    return cfg, data, trainer, fresh


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _two_rounds(trainer, model, data, cfg, kept):
    """Rounds 1 and 2 on one node (the global model is the node's own)."""
    exclude, knobs = data.negative_pool("train"), cfg.round_knobs({})
    first = trainer.train(model, data, exclude, server_round=1, knobs=knobs, anchor={})
    state = first.optimizer_state if kept else None
    trainer.train(
        model, data, exclude, server_round=2, knobs=knobs, anchor={}, optimizer_state=state
    )
    return first


@pytest.mark.parametrize("model", ["gmf", "mf", "sasrec"])
def test_kept_adam_is_one_optimizer_over_both_rounds(data_dir, model):
    cfg, data, trainer, fresh = _setup(data_dir, model, "keep")
    kept = fresh()
    first = _two_rounds(trainer, kept, data, cfg, kept=True)
    # The known answer: one Adam stepping through round 1's then round 2's batches.
    reference = fresh()
    t = cfg.training
    adam = torch.optim.Adam(reference.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    for rnd in (1, 2):
        train_epochs(
            reference,
            data.train_users,
            data.train_items,
            data.negative_pool("train"),
            epochs=1,
            batch_size=t.batch_size,
            optimizer=adam,
            num_negatives=t.num_negatives,
            rng=np.random.default_rng(round_seed(SEED, data.partition_id, rnd)),
        )
    got, want = _params(kept), _params(reference)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # The kept state holds every trained parameter's moments and round 1's step
    # count, half the reference's after two equal rounds.
    steps = {k: float(v) for k, v in first.optimizer_state.items() if k.endswith("/step")}
    assert steps and {k.rsplit("/", 1)[0] for k in first.optimizer_state} == {
        k.rsplit("/", 1)[0] for k in steps
    }
    total = {float(s["step"]) for s in adam.state.values()}
    assert set(steps.values()) == {total.pop() / 2} and not total
    # Negative control: a fresh Adam in round 2 lands elsewhere.
    _, _, fresh_trainer, fresh_model = _setup(data_dir, model, "fresh")
    restarted = fresh_model()
    _two_rounds(fresh_trainer, restarted, data, cfg, kept=False)
    assert any(not torch.equal(p, want[n]) for n, p in _params(restarted).items())


def test_fresh_mode_returns_no_optimizer_state(data_dir):
    cfg, data, trainer, fresh = _setup(data_dir, "gmf", "fresh")
    assert _two_rounds(trainer, fresh(), data, cfg, kept=False).optimizer_state is None


def test_a_stored_state_for_another_model_is_refused_by_name(data_dir):
    *_, fresh = _setup(data_dir, "gmf", "keep")
    model = fresh()
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"lacks: \['mlp.0.weight'\]"):
        load_adam_state(model, adam, {"mlp.0.weight/exp_avg": np.zeros((2, 2), np.float32)})
    name = next(n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match=rf"{name}/exp_avg has shape \(1, 1\)"):
        load_adam_state(model, adam, {f"{name}/exp_avg": np.zeros((1, 1), np.float32)})


def test_per_user_mode_refuses_a_kept_optimizer():
    with pytest.raises(ConfigError, match=r"client-mode='per-user'.*reset optimizer-state"):
        RunConfig.from_mapping({"client-mode": "per-user", "optimizer-state": "keep"})


def test_an_unknown_optimizer_state_names_the_choices():
    with pytest.raises(ConfigError, match=r"optimizer-state.*fresh.*keep"):
        RunConfig.from_mapping({"optimizer-state": "warm"})
