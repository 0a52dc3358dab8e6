import numpy as np
import pytest
import torch

from fedrec_flwr.models.ncf import (
    ARCHITECTURES,
    NCF,
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
