import numpy as np
import pytest
import torch

from fedrec_flwr.models import (
    ARCHITECTURES,
    MODELS,
    NCF,
    Recommender,
    build_model,
    is_private,
    load_arrays,
    private_arrays,
    shared_arrays,
)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_split_names_and_sigmoid_output(arch):
    model = NCF(5, 7, arch, factors=4, mlp_layers=(8, 4))
    shared, private = shared_arrays(model), private_arrays(model)
    assert private and all(k.startswith("user_") for k in private)
    assert not any(is_private(k) for k in shared)
    assert any(k.startswith("item_") for k in shared) and "output.weight" in shared
    assert set(shared) | set(private) == set(model.state_dict())
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
    assert ARCHITECTURES == tuple(MODELS) == ("gmf", "mlp", "neumf")
    for arch in ARCHITECTURES:
        built = build_model(arch, 4, 9, factors=4, mlp_layers=(8, 4), seed=3)
        direct = NCF(4, 9, arch, 4, (8, 4), seed=3)
        assert isinstance(built, Recommender) and built.arch == arch
        a, b = built.state_dict(), direct.state_dict()
        assert list(a) == list(b)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match=r"model='bpr': unknown; accepted: gmf, mlp, neumf"):
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
