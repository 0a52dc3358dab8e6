"""Node-level DP with Flower's wrappers: exact weighted FedAvg, clipping, accounting, seeds.

In-process runs (``InProcessGrid``: real messages, protobuf round trip) on a
small synthetic log whose users rate different numbers of items, so the nodes'
weights ``n_k`` differ and the weighted mean is not the uniform one.
"""

import functools
import json
import logging

import dp_accounting
import numpy as np
import pytest
from conftest import write_u_data
from dp_accounting import rdp
from flwr.app import Context, RecordDict
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from fedrec_flwr.app import server_app
from fedrec_flwr.app.client_app import client_fn, partition_query
from fedrec_flwr.client.adapter import numpy_client_app
from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.datasets import prepare_data
from fedrec_flwr.privacy.nodedp import (
    ACCOUNTANT,
    NOISE_SEED_ENV_VAR,
    NodeDPStrategy,
    client_mods,
    node_dp_mod,
    seeded_noise,
)
from fedrec_flwr.protocol import NUM_EXAMPLES_KEY
from fedrec_flwr.runs.federated import initial_arrays, partition_sizes, run_federated
from fedrec_flwr.strategies import ValidatedStrategy
from fedrec_flwr.strategies.registry import build_strategy
from fedrec_flwr.testing.inprocess import InProcessGrid

logging.getLogger("flwr").setLevel(logging.WARNING)

SMALL = {"factors": 4, "mlp-layers": "8,4", "batch-size": 64, "top-k": "1", "local-epochs": 1}
NUM_NODES = 3
BIG_CLIP = 1e4  # far above any update here: nothing is clipped
NOISE_SEED = 1234  # the server's secret noise seed in these tests


def _rows():
    """12 users; user u rates 6 + 3u of 50 items: node sizes differ."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(12):
        for t, i in enumerate(rng.permutation(50)[: 6 + 3 * u]):
            rows.append((u + 1, int(i) + 1, 4, 1_000_000 + t))
    return rows


@pytest.fixture(autouse=True)
def _noise_seed(monkeypatch):
    monkeypatch.setenv(NOISE_SEED_ENV_VAR, str(NOISE_SEED))


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    data = write_u_data(tmp_path_factory.mktemp("uneven"), _rows())
    return {"data-dir": str(data), "num-eval-negatives": 10, "learning-rate": 0.05, **SMALL}


def _dp(rc, level, clip, noise, **more):
    return {**rc, "dp": level, "dp-clip": clip, "dp-noise-multiplier": noise, **more}


def _nodes(n=NUM_NODES):
    return [{"partition-id": p, "num-partitions": n} for p in range(n)]


class _Recorder:
    """Innermost train mod: each node's raw reply (before any scaling or clipping)."""

    def __init__(self):
        self.raw = {}

    def __call__(self, msg, ctxt, call_next):
        reply = call_next(msg, ctxt)
        arrays = next(iter(reply.content.array_records.values()))
        metrics = next(iter(reply.content.metric_records.values()))
        self.raw[ctxt.node_config["partition-id"]] = (
            {k: a.numpy().copy() for k, a in arrays.items()},
            float(metrics[NUM_EXAMPLES_KEY]),
        )
        return reply


def _app(*mods):
    app = numpy_client_app(client_fn, train_mods=list(mods))
    app.query()(partition_query)
    return app


def _strategy(cfg):
    """As run_federated builds it (the server holds the data)."""
    prepared = prepare_data(cfg.data)
    return build_strategy(
        cfg,
        max_train_weight=prepared.stats()["num-train-interactions"],
        max_evaluate_weight=prepared.num_users,
        num_items=prepared.num_items,
        partition_sizes=functools.partial(partition_sizes, cfg.data),
    )


def _one_round(run, mods=(), strategy=None, node_ids=None, shuffle_seed=None):
    cfg = RunConfig.from_mapping(run)
    recorder = _Recorder()
    grid = InProcessGrid(
        _app(*mods, recorder), _nodes(), run, node_ids=node_ids, shuffle_seed=shuffle_seed
    )
    strategy = strategy or _strategy(cfg)
    start = initial_arrays(cfg, prepare_data(cfg.data).num_items)
    arrays = strategy.start(grid=grid, initial_arrays=start, num_rounds=1).arrays
    return (
        {k: a.numpy() for k, a in arrays.items()},
        {k: a.numpy() for k, a in start.items()},
        recorder.raw,
        strategy,
    )


def _noise(seed, stdv, like):
    """Flower's round-1 noise under :func:`seeded_noise`, in the aggregate's key order."""
    with seeded_noise(seed, 1):
        return {k: np.random.normal(0, stdv, a.shape).astype(a.dtype) for k, a in like.items()}


def _weighted(raw, start):
    weights = [raw[p][1] for p in sorted(raw)]
    return {
        k: np.average([raw[p][0][k] for p in sorted(raw)], axis=0, weights=weights) for k in start
    }


def _mods(level):
    return client_mods() if level == "node-client" else ()


@pytest.mark.parametrize("level", ["node-client", "node-server"])
def test_unclipped_aggregate_is_weighted_fedavg_plus_the_seeded_noise(rc, level):
    noise = 0.3
    agg, start, raw, strategy = _one_round(_dp(rc, level, BIG_CLIP, noise), _mods(level))
    weights = [raw[p][1] for p in sorted(raw)]
    assert len(set(weights)) == NUM_NODES  # the nodes' n_k differ: weighting matters
    assert strategy.strategy.total_examples == sum(weights)
    expected = _weighted(raw, start)
    drawn = _noise(NOISE_SEED, noise * BIG_CLIP / NUM_NODES, agg)
    for k in start:
        np.testing.assert_allclose(agg[k], expected[k] + drawn[k], rtol=1e-5, atol=1e-2)
        # The noise itself was this draw: what remains is float32 rounding.
        np.testing.assert_allclose(agg[k] - drawn[k], expected[k], atol=5e-3)
    # Tighter: with a tiny noise the aggregate is the weighted mean to float32 precision.
    agg, start, raw, _ = _one_round(_dp(rc, level, BIG_CLIP, 1e-9), _mods(level))
    expected = _weighted(raw, start)
    drawn = _noise(NOISE_SEED, 1e-9 * BIG_CLIP / NUM_NODES, agg)
    for k in start:
        np.testing.assert_allclose(agg[k] - drawn[k], expected[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("level", ["node-client", "node-server"])
def test_clipped_aggregate_is_the_mean_of_the_clipped_scaled_updates(rc, level):
    clip, noise = 0.05, 0.5
    agg, start, raw, strategy = _one_round(_dp(rc, level, clip, noise), _mods(level))
    n = sum(raw[p][1] for p in raw)
    terms = []
    for p in sorted(raw):
        arrays, n_k = raw[p]
        scaled = {k: (arrays[k] - start[k]) * (NUM_NODES * n_k / n) for k in start}
        norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in scaled.values()))
        assert norm > clip  # every node is clipped here
        terms.append({k: v * (clip / norm) for k, v in scaled.items()})
    drawn = _noise(NOISE_SEED, noise * clip / NUM_NODES, agg)
    for k in start:
        expected = start[k] + np.mean([t[k] for t in terms], axis=0) + drawn[k]
        np.testing.assert_allclose(agg[k], expected, atol=1e-6)
    assert strategy.strategy.num_nodes == NUM_NODES


def test_without_the_pre_scaling_the_aggregate_is_the_uniform_mean(rc):
    """Negative control: Flower's wrapper alone (clip + equal weights) averages uniformly."""
    run = _dp(rc, "node-client", BIG_CLIP, 1e-9)
    cfg = RunConfig.from_mapping(run)
    base = _strategy(cfg)
    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(), noise_multiplier=1e-9, clipping_norm=BIG_CLIP, num_sampled_clients=NUM_NODES
    )
    plain = ValidatedStrategy(dp, base.train_limits, base.evaluate_limits, uniform_weights=True)
    agg, start, raw, _ = _one_round(run, (fixedclipping_mod,), strategy=plain)
    weighted = _weighted(raw, start)
    uniform = {k: np.mean([raw[p][0][k] for p in raw], axis=0) for k in start}
    gap = max(float(np.abs(weighted[k] - uniform[k]).max()) for k in start)
    assert gap > 1e-3
    for k in start:  # Flower's own (unseeded) noise here has stdv ~3e-6
        np.testing.assert_allclose(agg[k], uniform[k], rtol=1e-5, atol=5e-5)
    assert not all(np.allclose(agg[k], weighted[k], atol=gap / 10) for k in start)


def test_epsilon_per_round_is_dp_accountings_rdp_and_lands_in_results(rc, tmp_path):
    noise, delta, rounds = 1.3, 1e-4, 3
    run = _dp(rc, "node-client", 0.5, noise, **{"dp-delta": delta, "num-server-rounds": rounds})
    grid = InProcessGrid(_app(*client_mods()), _nodes(), run)
    results = json.loads(run_federated(grid, RunConfig.from_mapping(run), tmp_path).read_text())
    expected = []
    for t in range(1, rounds + 1):
        accountant = rdp.RdpAccountant()
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise), t)
        )
        expected.append(accountant.get_epsilon(delta))
    dp = results["dp"]
    np.testing.assert_allclose(dp["epsilon-per-round"], expected, rtol=1e-9)
    assert [r["epsilon"] for r in results["rounds"]] == dp["epsilon-per-round"]
    assert dp["level"] == "node-client" and dp["accountant"] == ACCOUNTANT
    assert (dp["noise-multiplier"], dp["clip"], dp["delta"]) == (noise, 0.5, delta)
    assert dp["rounds-not-exact"] == [] and results["dropped-replies"] == []
    assert expected[0] < expected[1] < expected[2]


def test_a_target_epsilon_is_met_by_flowers_accountant(rc, tmp_path):
    """``dp-target-epsilon`` is calibrated by the same dp-accounting RDP Flower accounts with."""
    run = {
        **_dp(rc, "node-server", 0.5, 0.0),
        "dp-target-epsilon": 40.0,
        "num-server-rounds": 2,
    }
    cfg = RunConfig.from_mapping(run)
    grid = InProcessGrid(_app(), _nodes(), run)
    results = json.loads(run_federated(grid, cfg, tmp_path).read_text())
    assert results["dp"]["noise-multiplier"] == cfg.noise_multiplier() > 0
    assert results["dp"]["epsilon-per-round"][-1] == pytest.approx(40.0, rel=1e-4)


@pytest.mark.parametrize("level", ["node-client", "node-server"])
def test_same_noise_seed_same_bits_another_or_none_other_noise(rc, level, monkeypatch):
    run = _dp(rc, level, 0.5, 1.0)
    a, _, _, strategy = _one_round(run, _mods(level), node_ids=[7, 8, 9])
    b, *_ = _one_round(run, _mods(level), node_ids=[90, 3, 41], shuffle_seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert "reproducible" in strategy.strategy.describe()["noise-seed"]
    monkeypatch.setenv(NOISE_SEED_ENV_VAR, str(NOISE_SEED + 1))
    c, *_ = _one_round(run, _mods(level))
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    # Unset: fresh entropy. The public run config (seed included) does not fix the
    # noise, so no node can regenerate it.
    monkeypatch.delenv(NOISE_SEED_ENV_VAR)
    d, _, _, fresh = _one_round(run, _mods(level))
    e, *_ = _one_round(run, _mods(level))
    assert not all(np.array_equal(d[k], e[k]) for k in d)
    assert fresh.strategy.describe()["noise-seed"] == "fresh OS entropy (not reproducible)"


def test_a_malformed_noise_seed_is_refused_before_any_round(rc, monkeypatch):
    monkeypatch.setenv(NOISE_SEED_ENV_VAR, "abc")
    with pytest.raises(ConfigError, match=NOISE_SEED_ENV_VAR):
        _strategy(RunConfig.from_mapping(_dp(rc, "node-server", 0.5, 1.0)))


def test_noise_seeding_leaves_the_global_rng_alone():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    with seeded_noise(5, 2):
        first = np.random.normal(size=3)
    with seeded_noise(5, 2):
        again = np.random.normal(size=3)
    assert np.array_equal(first, again)
    assert np.array_equal(np.random.get_state()[1], before)


def test_a_node_client_node_refuses_to_send_an_unclipped_update(rc):
    run = _dp(rc, "node-client", 0.5, 1.0)
    cfg = RunConfig.from_mapping(run)
    # A plain FedAvg server sends no scale: every node-client node refuses.
    plain = build_strategy(RunConfig.from_mapping(rc))
    grid = InProcessGrid(_app(*client_mods()), _nodes(), run)
    start = initial_arrays(cfg, prepare_data(cfg.data).num_items)
    plain.start(grid=grid, initial_arrays=start, num_rounds=1)
    train = [r for r in grid.replies if r.has_error()]
    assert len(train) == NUM_NODES
    assert all("refusing to send an unclipped update" in r.error.reason for r in train)
    assert client_mods(RunConfig.from_mapping(rc)) == []
    assert client_mods(cfg) == [node_dp_mod]


def test_a_dropped_reply_releases_nothing_that_round(rc):
    """Flower's strict accounting: K replies or no release (and no epsilon spent)."""
    run = _dp(rc, "node-server", 0.5, 1.0)

    def poison(msg, ctxt, call_next):
        reply = call_next(msg, ctxt)
        if ctxt.node_config["partition-id"] == 1:
            record = next(iter(reply.content.array_records.values()))
            for name in list(record):
                record[name] = type(record[name])(np.full_like(record[name].numpy(), np.nan))
        return reply

    agg, _, _, strategy = _one_round(run, (poison,))
    assert [d[1] for d in strategy.dropped] == [102]
    assert agg == {}  # no round produced an aggregate: the model stays the initial one
    assert strategy.strategy.epsilons == {1: 0.0}


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ({"dp-clip": 0}, "dp-clip"),
        ({"dp-noise-multiplier": -1.0}, "dp-noise-multiplier"),
        ({"dp-noise-multiplier": 0, "dp-target-epsilon": 1e-6}, "dp-target-epsilon"),
        ({"fraction-train": 0.5}, "fraction-train"),
        ({"weight-key": "users"}, "weight-key"),
        ({"item-catalogue": "/nowhere/catalogue.txt"}, "item-catalogue"),
    ],
)
def test_the_server_app_refuses_bad_node_dp_settings_before_any_round(rc, overrides, keys):
    run = {**_dp(rc, "node-client", 0.5, 1.0), **overrides}
    grid = InProcessGrid(_app(), _nodes(), run)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run)
    with pytest.raises(ConfigError, match=keys) as err:
        server_app.main(grid, context)
    assert "\n" not in str(err.value)
    assert grid.replies == []  # nothing was sent


def test_unknown_dataset_size_is_refused():
    with pytest.raises(ConfigError, match="training interactions"):
        NodeDPStrategy(
            "node-server",
            FedAvg(),
            noise_multiplier=1.0,
            clipping_norm=1.0,
            delta=1e-5,
            total_examples=float("inf"),
        )


@pytest.mark.flower
def test_flwr_run_with_node_client_dp(tmp_path, ml100k_dir):
    """`flwr run .` for real (SuperLink, Ray, the FAB): the mod clips on the nodes."""
    from conftest import flwr_run

    out = tmp_path / "results"
    run_config = (
        f"num-server-rounds=2 local-epochs=1 data-dir='{ml100k_dir}' output-dir='{out}' "
        "dp='node-client' dp-clip=14 dp-noise-multiplier=0.01"
    )
    code, log, _ = flwr_run(tmp_path, run_config)
    assert code == 0 and (out / "results.json").is_file(), log[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "fixedclipping_mod: parameters are clipped by value: 14.0000" in log
    assert "fedrec-flwr: round 2: node-level DP epsilon=" in log
    assert results["dp"]["num-nodes"] == 2 and results["dp"]["rounds-not-exact"] == []
    assert [r["epsilon"] for r in results["rounds"]] == results["dp"]["epsilon-per-round"]
    assert all(r["failures"] == 0 for r in results["rounds"])
    assert "reproducible" in results["dp"]["noise-seed"]  # the env var reached the server
    # The same noise seed and run config in this process: the very same model bits.
    import torch

    from fedrec_flwr.app.client_app import app as client_app

    rc = {
        "num-server-rounds": 2,
        "local-epochs": 1,
        "data-dir": str(ml100k_dir),
        "dp": "node-client",
        "dp-clip": 14.0,
        "dp-noise-multiplier": 0.01,
    }
    grid = InProcessGrid(client_app, _nodes(2), rc, shuffle_seed=1)
    run_federated(grid, RunConfig.from_mapping(rc), tmp_path / "again")
    a = torch.load(out / "model.pt")["state_dict"]
    b = torch.load(tmp_path / "again" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
