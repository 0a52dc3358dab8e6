"""User-level DP in per-user mode, its accounting, local DP and the config checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from test_peruser import NUM_ITEMS, NUM_USERS, _log, _one_user, _train_alone

from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.datasets.negatives import InteractionSet
from fedrec_flwr.models import build_model, private_arrays, shared_arrays
from fedrec_flwr.privacy.accounting import epsilons, noise_for_target
from fedrec_flwr.privacy.local import perturb_item_update
from fedrec_flwr.train.peruser import UserLevelDP, train_users_independently

SETTINGS = {"epochs": 2, "batch": 8, "lr": 0.01, "wd": 0.0, "negs": 2}


def _build(n: int, seed: int, rows=None):
    return build_model("neumf", n, NUM_ITEMS, factors=8, mlp_layers=(16, 8), seed=seed)


def _setup():
    users, items = _log()
    model = _build(NUM_USERS, 3)
    model.reset_private(7)
    seeds = [100 + u for u in range(NUM_USERS)]
    return model, users, items, seeds


def _user_updates(model, users, items, seeds):
    """Each user trained alone: its update w_u - w over all shared arrays."""
    sent = {k: v.astype(np.float64) for k, v in shared_arrays(model).items()}
    out = {}
    for u in range(NUM_USERS):
        mask = users == u
        if not mask.any():
            continue
        one = _one_user(_build, model, u)
        _train_alone(one, items[mask], seeds[u], **SETTINGS)
        out[u] = {k: v.astype(np.float64) - sent[k] for k, v in shared_arrays(one).items()}
    return sent, out


def _run(model, users, items, seeds, dp):
    return train_users_independently(
        model,
        users,
        items,
        InteractionSet(users, items, NUM_ITEMS),
        seeds,
        epochs=SETTINGS["epochs"],
        batch_size=SETTINGS["batch"],
        learning_rate=SETTINGS["lr"],
        num_negatives=SETTINGS["negs"],
        dp=dp,
    )


def _norm(update):
    return math.sqrt(sum(float((v**2).sum()) for v in update.values()))


@pytest.mark.parametrize("clip", [1e6, 0.05])
def test_clipped_unweighted_mean_matches_hand_computation(clip: float) -> None:
    model, users, items, seeds = _setup()
    sent, updates = _user_updates(model, users, items, seeds)
    norms = {u: _norm(d) for u, d in updates.items()}
    if clip < 1:  # the test means something: every user is clipped
        assert min(norms.values()) > clip
    expected = {
        k: sent[k] + sum(d[k] * min(1.0, clip / norms[u]) for u, d in updates.items()) / NUM_USERS
        for k in sent
    }
    got = _run(model, users, items, seeds, UserLevelDP(clip, 0.0, 0))
    assert got.weight == NUM_USERS  # every user weighs the same: the weight is the count
    for k in sent:
        np.testing.assert_allclose(got.shared[k], expected[k], atol=2e-6, err_msg=k)
    # Negative control: the interaction-weighted mean (no DP) is a different answer.
    plain = _run(model, users, items, seeds, None)
    assert max(np.abs(plain.shared[k] - got.shared[k]).max() for k in sent) > 1e-4


def test_noise_is_seeded_everywhere_and_of_the_stated_size() -> None:
    model, users, items, seeds = _setup()
    clean = _run(model, users, items, seeds, UserLevelDP(0.5, 0.0, 1))
    a = _run(model, users, items, seeds, UserLevelDP(0.5, 2.0, 1))
    b = _run(model, users, items, seeds, UserLevelDP(0.5, 2.0, 1))
    c = _run(model, users, items, seeds, UserLevelDP(0.5, 2.0, 2))
    for k in clean.shared:
        assert np.array_equal(a.shared[k], b.shared[k])  # same seed, same bits
    noise = np.concatenate([(a.shared[k] - clean.shared[k]).ravel() for k in clean.shared])
    other = np.concatenate([(c.shared[k] - clean.shared[k]).ravel() for k in clean.shared])
    assert not np.allclose(noise, other)
    # std = noise_multiplier * clip / users, on every element (untouched rows too).
    assert np.std(noise) == pytest.approx(2.0 * 0.5 / NUM_USERS, rel=0.05)
    assert np.count_nonzero(noise) == noise.size
    # The private rows are the users' own training, untouched by the noise.
    for k, v in private_arrays(model).items():
        assert np.array_equal(a.private[k], clean.private[k])
        assert v.shape == a.private[k].shape


def test_epsilon_is_dp_accountings_rdp_and_the_target_is_met() -> None:
    import dp_accounting
    from dp_accounting import rdp

    eps = epsilons(3.0, 25, 1e-5)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(3.0), 25)
    assert eps[-1] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert all(x < y for x, y in itertools.pairwise(eps))  # composition grows
    sigma = noise_for_target(8.0, 25, 1e-5)
    assert epsilons(sigma, 25, 1e-5)[-1] == pytest.approx(8.0, abs=1e-3)
    assert epsilons(sigma * 0.98, 25, 1e-5)[-1] > 8.0  # the smallest such noise
    assert epsilons(0.0, 3, 1e-5) == [math.inf] * 3


_PER_USER = {"client-mode": "per-user", "weight-key": "users", "dp": "user"}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({**_PER_USER, "dp-noise-multiplier": 1.0}, "dp-clip must be > 0"),
        ({**_PER_USER, "dp-clip": -1.0, "dp-noise-multiplier": 1.0}, "dp-clip"),
        ({**_PER_USER, "dp-clip": 1.0, "dp-noise-multiplier": -1.0}, "dp-noise-multiplier"),
        ({**_PER_USER, "dp-clip": 1.0}, "set dp-noise-multiplier > 0 or dp-target-epsilon"),
        (
            {**_PER_USER, "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "dp-target-epsilon": 8.0},
            "set one of them",
        ),
        ({**_PER_USER, "dp-clip": 1.0, "dp-target-epsilon": 1e-6}, "cannot be met"),
        ({"dp": "user", "dp-clip": 1.0, "dp-noise-multiplier": 1.0}, "client-mode='per-user'"),
        (
            {"dp": "node-client", "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "strategy": "krum"},
            "strategy='krum'",
        ),
        ({"secure-aggregation": "secaggplus", "strategy": "fedmedian"}, "strategy='fedmedian'"),
        (
            {
                "secure-aggregation": "secaggplus",
                "dp": "node-server",
                "dp-clip": 1.0,
                "dp-noise-multiplier": 1.0,
            },
            "dp='node-server'",
        ),
        ({"dp-delta": 0.0}, "dp-delta"),
        ({"pseudo-items": 5, "item-aggregation": "rowwise"}, "item-counts in the clear"),
        ({"ldp-noise": 0.1}, "set ldp-clip > 0"),
        ({"privacy-audit": "maybe"}, "expected true or false"),
    ],
)
def test_bad_privacy_settings_are_one_line_naming_the_keys(values, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        RunConfig.from_mapping(values)
    assert "\n" not in str(err.value)


def test_a_target_epsilon_picks_the_noise_for_the_rounds() -> None:
    cfg = RunConfig.from_mapping(
        {**_PER_USER, "dp-clip": 1.0, "dp-target-epsilon": 8.0, "num-server-rounds": 25}
    )
    assert cfg.noise_multiplier() == pytest.approx(noise_for_target(8.0, 25, 1e-5))
    fewer = RunConfig.from_mapping(
        {**_PER_USER, "dp-clip": 1.0, "dp-target-epsilon": 8.0, "num-server-rounds": 5}
    )
    assert fewer.noise_multiplier() < cfg.noise_multiplier()
    assert RunConfig.from_mapping({"privacy-audit": True}).privacy.privacy_audit
    assert RunConfig.from_mapping({"privacy-audit": "true"}).privacy.privacy_audit


def _tables():
    sent = {"item.weight": np.zeros((10, 3), np.float32), "dense": np.ones(4, np.float32)}
    reply = {k: v.copy() for k, v in sent.items()}
    reply["item.weight"][[2, 5]] = [[0.5, -2.0, 0.1], [0.2, 0.3, -0.4]]
    reply["dense"] += 1
    return sent, reply


def test_pseudo_items_move_untouched_rows_like_real_ones() -> None:
    sent, reply = _tables()
    rng = np.random.default_rng(0)
    out = perturb_item_update(
        sent, reply, ["item.weight"], clip=0.0, noise=0.0, pseudo_items=3, rng=rng
    )
    moved = np.flatnonzero(np.any(out["item.weight"] != 0, axis=1))
    assert len(moved) == 5 and {2, 5} <= set(moved)
    assert np.array_equal(out["item.weight"][[2, 5]], reply["item.weight"][[2, 5]])
    assert np.array_equal(out["dense"], reply["dense"])  # only item tables change
    again = perturb_item_update(
        sent,
        reply,
        ["item.weight"],
        clip=0.0,
        noise=0.0,
        pseudo_items=3,
        rng=np.random.default_rng(0),
    )
    assert np.array_equal(again["item.weight"], out["item.weight"])


def test_ldp_clips_then_noises_only_the_touched_rows() -> None:
    sent, reply = _tables()
    clipped = perturb_item_update(
        sent,
        reply,
        ["item.weight"],
        clip=0.25,
        noise=0.0,
        pseudo_items=0,
        rng=np.random.default_rng(0),
    )
    np.testing.assert_allclose(clipped["item.weight"][2], [0.25, -0.25, 0.1])
    noised = perturb_item_update(
        sent,
        reply,
        ["item.weight"],
        clip=0.25,
        noise=0.1,
        pseudo_items=0,
        rng=np.random.default_rng(0),
    )
    rest = np.delete(noised["item.weight"], [2, 5], axis=0)
    assert not rest.any()  # without pseudo items the untouched rows still say which moved
    assert not np.allclose(noised["item.weight"][[2, 5]], clipped["item.weight"][[2, 5]])


def _inprocess_run(data_dir, out_dir, **extra):
    import json

    from fedrec_flwr.app.client_app import app as client_app
    from fedrec_flwr.runs.federated import run_federated
    from fedrec_flwr.testing.inprocess import InProcessGrid

    rc = {
        "data-dir": str(data_dir),
        "num-server-rounds": 2,
        "local-epochs": 1,
        "num-eval-negatives": 20,
        "factors": 8,
        "mlp-layers": "16,8",
        "batch-size": 64,
        "top-k": "1",
        **extra,
    }
    nodes = [{"partition-id": p, "num-partitions": 2, "dp-noise-seed": 5 + p} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc)
    path = run_federated(grid, RunConfig.from_mapping(rc), out_dir)
    return json.loads(path.read_text()), grid


def test_a_user_level_dp_run_reports_epsilon_and_sends_no_loss(tmp_path) -> None:
    from conftest import checkerboard_rows, write_u_data

    from fedrec_flwr.protocol import NUM_EXAMPLES_KEY, NUM_USERS_KEY, TRAIN_LOSS_KEY

    data = write_u_data(tmp_path / "data", checkerboard_rows())
    dp = {**_PER_USER, "dp-clip": 0.5, "dp-noise-multiplier": 1.5}
    results, grid = _inprocess_run(data, tmp_path / "a", **dp)
    report = results["dp"]
    assert report["level"] == "user" and report["noise-multiplier"] == 1.5
    assert report["epsilon-per-round"] == pytest.approx(epsilons(1.5, 2, 1e-5))
    assert [r["epsilon"] for r in results["rounds"]] == report["epsilon-per-round"]
    train = [m for m in grid.replies if m.metadata.message_type.startswith("train")]
    assert train
    for reply in train:
        metrics = next(iter(reply.content.metric_records.values()))
        assert TRAIN_LOSS_KEY not in metrics  # an un-noised release of the users' data
        assert metrics[NUM_EXAMPLES_KEY] == metrics[NUM_USERS_KEY]
    again, _ = _inprocess_run(data, tmp_path / "b", **dp)
    assert again["rounds"][-1]["test"] == results["rounds"][-1]["test"]  # seeded noise


def test_under_secure_aggregation_each_node_adds_its_share_of_the_noise() -> None:
    values = {**_PER_USER, "dp-clip": 1.0, "dp-noise-multiplier": 3.0, "min-nodes": 9}
    alone = RunConfig.from_mapping(values)
    assert alone.node_noise_multiplier() == 3.0
    shared = RunConfig.from_mapping({**values, "secure-aggregation": "secaggplus"})
    # Variances add up in the masked sum of at least min-nodes replies.
    assert 9 * shared.node_noise_multiplier() ** 2 == pytest.approx(3.0**2)


@pytest.mark.parametrize("model", ["sasrec", "lightgcn"])
def test_user_level_dp_runs_for_models_with_their_own_objective(tmp_path, model) -> None:
    # Trained one user at a time (train/looped.py), clipped and noised the same way.
    from conftest import checkerboard_rows, write_u_data

    data = write_u_data(tmp_path / "data", checkerboard_rows())
    dp = {**_PER_USER, "model": model, "dp-clip": 0.5, "dp-noise-multiplier": 1.5}
    results, _ = _inprocess_run(data, tmp_path / "a", **dp)
    assert results["dp"]["epsilon-per-round"] == pytest.approx(epsilons(1.5, 2, 1e-5))
    again, _ = _inprocess_run(data, tmp_path / "b", **dp)
    assert again["rounds"][-1]["test"] == results["rounds"][-1]["test"]  # seeded noise
    louder, _ = _inprocess_run(data, tmp_path / "c", **{**dp, "dp-noise-multiplier": 50.0})
    assert louder["rounds"][-1]["val"] != results["rounds"][-1]["val"]  # the noise is applied
