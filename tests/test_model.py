import numpy as np
import pytest
import torch

from fedrec_flwr.models import (
    ARCHITECTURES,
    MF,
    MODELS,
    NCF,
    Recommender,
    build_model,
    load_arrays,
    private_arrays,
    shared_arrays,
)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_split_names_and_sigmoid_output(arch):
    """Every registered model: user tables private, item tables shared, logits."""
    model = build_model(arch, 5, 7, factors=4, mlp_layers=(8, 4))
    shared, private = shared_arrays(model), private_arrays(model)
    # SASRec's user is their item sequence (the node's data), not a parameter.
    assert (arch == "sasrec") != bool(private)
    assert all(k.startswith("user_") for k in private)
    assert not any(model.is_private(k) for k in shared)
    assert set(model.item_tables()) <= set(shared) and model.item_tables()
    data = set(model.data_buffers())  # the node's data: neither sent nor stored
    assert set(shared) | set(private) | data == set(model.state_dict())
    assert not data & (set(shared) | set(private))
    for emb in private.values():
        assert emb.shape[0] == 5
    probs = model.predict(torch.tensor([0, 4]), torch.tensor([6, 0]))
    assert probs.shape == (2,) and torch.all((probs > 0) & (probs < 1))


def test_neumf_layout_matches_he_et_al():
    model = NCF(3, 9, "neumf", factors=8, mlp_layers=(32, 16, 8))
    sd = model.state_dict()
    assert sd["user_gmf.weight"].shape == (3, 8)
    assert sd["user_mlp.weight"].shape == (3, 16)  # 32 = user 16 + item 16
    assert sd["mlp.0.weight"].shape == (16, 32)
    assert sd["output.weight"].shape == (1, 8 + 8)  # GMF factors + last MLP layer


def test_shared_init_independent_of_user_count():
    small, large = NCF(2, 11, seed=7), NCF(200, 11, seed=7)
    a, b = shared_arrays(small), shared_arrays(large)
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    other = NCF(2, 11, seed=8)
    assert not np.array_equal(
        shared_arrays(other)["item_gmf.weight"], shared_arrays(small)["item_gmf.weight"]
    )


def test_load_arrays_rejects_foreign_models():
    model = NCF(3, 9)
    arrays = shared_arrays(NCF(3, 10))  # another catalogue size
    with pytest.raises(ValueError, match=r"item_gmf\.weight.*shape"):
        load_arrays(model, arrays, private=False)
    arrays = shared_arrays(model)
    arrays.pop("output.bias")
    with pytest.raises(ValueError, match=r"missing \['output.bias'\]"):
        load_arrays(model, arrays, private=False)


def test_unknown_architecture():
    with pytest.raises(ValueError, match=r"model='bpr'.*gmf, mlp, neumf"):
        NCF(1, 1, "bpr")


def test_registry_builds_each_ncf_architecture_as_ncf_itself():
    assert (
        ARCHITECTURES
        == tuple(MODELS)
        == ("gmf", "mlp", "neumf", "mf", "hybrid", "lightgcn", "sasrec")
    )
    for arch in ("gmf", "mlp", "neumf"):
        built = build_model(arch, 4, 9, factors=4, mlp_layers=(8, 4), seed=3)
        direct = NCF(4, 9, arch, 4, (8, 4), seed=3)
        assert isinstance(built, Recommender) and built.arch == arch
        a, b = built.state_dict(), direct.state_dict()
        assert list(a) == list(b)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    with pytest.raises(
        ValueError,
        match=r"model='bpr': unknown; accepted: gmf, mlp, neumf, mf, hybrid, lightgcn, sasrec",
    ):
        build_model("bpr", 1, 1)


@pytest.mark.parametrize(
    ("arch", "tables"),
    [
        ("gmf", ("item_gmf.weight",)),
        ("mlp", ("item_mlp.weight",)),
        ("neumf", ("item_gmf.weight", "item_mlp.weight")),
    ],
)
def test_ncf_declares_its_item_embeddings_as_item_tables(arch, tables):
    model = NCF(3, 9, arch, factors=4, mlp_layers=(8, 4))
    assert model.item_tables() == tables
    for name in tables:
        assert model.state_dict()[name].shape[0] == 9 and not model.is_private(name)


def test_array_helpers_split_by_the_models_own_rule():
    class Personal(NCF):
        """Keeps its output layer private too (a FedPer-like split)."""

        def is_private(self, name: str) -> bool:
            return super().is_private(name) or name.startswith("output.")

    model = Personal(2, 5, "gmf", factors=4)
    assert set(private_arrays(model)) == {"user_gmf.weight", "output.weight", "output.bias"}
    assert set(shared_arrays(model)) == {"item_gmf.weight"}
    with pytest.raises(ValueError, match=r"unexpected \['output.bias', 'output.weight'\]"):
        load_arrays(model, shared_arrays(NCF(2, 5, "gmf", factors=4)), private=False)


def test_default_reset_private_touches_only_private_rows():
    model = NCF(3, 9, "neumf", factors=4, mlp_layers=(8, 4), seed=1)
    shared = shared_arrays(model)
    private = private_arrays(model)
    model.reset_private(5)
    for name, value in shared_arrays(model).items():
        np.testing.assert_array_equal(value, shared[name])
    assert all(not np.array_equal(v, private[k]) for k, v in private_arrays(model).items())
    again = NCF(3, 9, "neumf", factors=4, mlp_layers=(8, 4), seed=1)
    again.reset_private(5)
    for name, value in private_arrays(again).items():
        np.testing.assert_array_equal(value, private_arrays(model)[name])


def _randomised(model: NCF, seed: int) -> NCF:
    """Random weights on an O(1) scale, biases included (the init zeroes them)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def _pairwise_forward(model: Recommender, users, items) -> np.ndarray:
    uu, ii = np.meshgrid(users, items, indexing="ij")
    with torch.no_grad():
        out = model(torch.from_numpy(uu.ravel()), torch.from_numpy(ii.ravel()))
    return out.numpy().reshape(len(users), len(items))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mlp_layers", [(16, 8, 4), (8,)])
def test_score_all_equals_forward_on_every_pair(arch, mlp_layers):
    built = build_model(arch, 11, 17, factors=6, mlp_layers=mlp_layers)
    model = _randomised(built, seed=3)
    users = np.array([7, 0, 10, 7, 3], dtype=np.int64)  # selected rows, one repeated
    everything = np.arange(17, dtype=np.int64)
    got = model.score_all(torch.from_numpy(users))
    assert got.shape == (5, 17) and got.dtype == torch.float32 and not got.requires_grad
    np.testing.assert_allclose(
        got.numpy(), _pairwise_forward(model, users, everything), rtol=0, atol=1e-5
    )
    # The base-class default (forward over all pairs) agrees too.
    np.testing.assert_allclose(
        Recommender.score_all(model, torch.from_numpy(users)).numpy(),
        got.numpy(),
        rtol=0,
        atol=1e-5,
    )
    items = np.array([16, 2, 5], dtype=np.int64)
    np.testing.assert_allclose(
        model.score_all(torch.from_numpy(users), torch.from_numpy(items)).numpy(),
        _pairwise_forward(model, users, items),
        rtol=0,
        atol=1e-5,
    )
    assert model.catalogue_size() == 17


def test_score_all_blocks_users_exactly(monkeypatch):
    """A hidden-tensor budget of one cell (one user per block) changes nothing."""
    from fedrec_flwr.models import ncf

    model = _randomised(NCF(6, 13, "neumf", factors=4, mlp_layers=(8, 4)), seed=4)
    users = torch.arange(6)
    whole = model.score_all(users)
    monkeypatch.setattr(ncf, "_TOWER_BLOCK", 1)
    np.testing.assert_allclose(model.score_all(users).numpy(), whole.numpy(), rtol=0, atol=1e-6)


def test_mf_is_a_biased_dot_product():
    """s(u, i) = <p_u, q_i> + b_u + b_i + b, computed by hand."""
    model = _randomised(MF(3, 4, factors=2), seed=1)
    p, q = model.user_emb.weight, model.item_emb.weight
    bu, bi, b = model.user_bias.weight[:, 0], model.item_bias.weight[:, 0], model.global_bias
    with torch.no_grad():
        got = model(torch.tensor([2, 0]), torch.tensor([1, 3]))
        want = torch.stack([p[2] @ q[1] + bu[2] + bi[1] + b[0], p[0] @ q[3] + bu[0] + bi[3] + b[0]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert set(private_arrays(model)) == {"user_emb.weight", "user_bias.weight"}
    assert set(shared_arrays(model)) == {"item_emb.weight", "item_bias.weight", "global_bias"}
    assert model.item_tables() == ("item_emb.weight", "item_bias.weight")


def test_mf_shared_init_is_independent_of_users_and_private_reset_redraws_users_only():
    a, b = MF(2, 11, seed=7), MF(300, 11, seed=7)
    for name, value in shared_arrays(a).items():
        np.testing.assert_array_equal(value, shared_arrays(b)[name], err_msg=name)
    before = shared_arrays(a)
    users = private_arrays(a)["user_emb.weight"].copy()
    a.reset_private(99)
    assert not np.array_equal(private_arrays(a)["user_emb.weight"], users)
    assert np.all(private_arrays(a)["user_bias.weight"] == 0)  # biases start at 0
    for name, value in shared_arrays(a).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert 0.05 < float(users.std()) < 0.2  # N(0, 0.1)
