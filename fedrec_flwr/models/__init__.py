"""Recommender models: shared (item-side) and private (user-side) parameters by name.

:data:`MODELS` maps each ``model`` run-config value to a builder;
:func:`build_model` is how callers construct one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from .base import (
    PRIVATE_PREFIX,
    NodeContext,
    Recommender,
    is_private,
    load_arrays,
    private_arrays,
    shared_arrays,
    shared_names,
)
from .hybrid import DEFAULT_ITEM_FEATURES, DEFAULT_USER_FEATURES, Hybrid
from .lightgcn import LightGCN
from .mf import MF
from .ncf import NCF
from .sasrec import SASRec

__all__ = [
    "ARCHITECTURES",
    "MF",
    "MODELS",
    "NCF",
    "PRIVATE_PREFIX",
    "Hybrid",
    "LightGCN",
    "NodeContext",
    "Recommender",
    "SASRec",
    "build_model",
    "is_private",
    "load_arrays",
    "private_arrays",
    "shared_arrays",
    "shared_names",
]


def _ncf(arch: str) -> Callable[..., Recommender]:
    def build(
        num_users: int,
        num_items: int,
        *,
        seed: int,
        factors: int = 16,
        mlp_layers: Sequence[int] = (64, 32, 16),
        **_: Any,
    ) -> Recommender:
        return NCF(num_users, num_items, arch, factors, mlp_layers, seed=seed)

    return build


def _mf(num_users: int, num_items: int, *, seed: int, factors: int = 16, **_: Any) -> Recommender:
    return MF(num_users, num_items, factors, seed=seed)


def _hybrid(
    num_users: int,
    num_items: int,
    *,
    seed: int,
    factors: int = 32,
    user_features: Sequence[str] = DEFAULT_USER_FEATURES,
    item_features: Sequence[str] = DEFAULT_ITEM_FEATURES,
    feature_buckets: int = 1024,
    **_: Any,
) -> Recommender:
    return Hybrid(
        num_users,
        num_items,
        factors,
        user_features=user_features,
        item_features=item_features,
        feature_buckets=feature_buckets,
        seed=seed,
    )


def _lightgcn(
    num_users: int, num_items: int, *, seed: int, factors: int = 64, gcn_layers: int = 3, **_: Any
) -> Recommender:
    return LightGCN(num_users, num_items, factors, layers=gcn_layers, seed=seed)


def _sasrec(
    num_users: int,
    num_items: int,
    *,
    seed: int,
    factors: int = 64,
    max_seq_len: int = 50,
    attention_blocks: int = 2,
    attention_heads: int = 1,
    dropout: float = 0.2,
    test_input: str = "train+val",
    sequence_loss: str = "bce",
    sequence_stride: int | None = None,
    **_: Any,
) -> Recommender:
    return SASRec(
        num_users,
        num_items,
        factors,
        max_len=max_seq_len,
        blocks=attention_blocks,
        heads=attention_heads,
        dropout=dropout,
        test_input=test_input,
        loss=sequence_loss,
        stride=sequence_stride,
        seed=seed,
    )


# Name -> builder(num_users, num_items, *, seed, **hyperparameters): each builder
# takes the hyperparameters it knows and ignores the rest; read-only.
MODELS: Mapping[str, Callable[..., Recommender]] = MappingProxyType(
    {
        **{arch: _ncf(arch) for arch in ("gmf", "mlp", "neumf")},
        "mf": _mf,
        "hybrid": _hybrid,
        "lightgcn": _lightgcn,
        "sasrec": _sasrec,
    }
)
ARCHITECTURES: tuple[str, ...] = tuple(MODELS)


def build_model(
    name: str, num_users: int, num_items: int, *, seed: int = 0, **hyperparameters: Any
) -> Recommender:
    """Construct a registered model.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (the run config's ``model``).
    num_users : int
        Rows of the private user tables (a client holds only its own users).
    num_items : int
        Size of the shared item catalogue.
    seed : int (default: 0)
        Initialisation seed.
    **hyperparameters
        Widths and options by the builders' names (``factors``,
        ``mlp_layers``, ``user_features`` ...); each model reads its own and
        ignores the others (:meth:`~fedrec_flwr.config.ModelOptions.build`
        passes them all).

    Returns
    -------
    Recommender
        The initialised model.

    Raises
    ------
    ValueError
        For an unknown ``name``.
    """
    if name not in MODELS:
        raise ValueError(f"model={name!r}: unknown; accepted: {', '.join(MODELS)}")
    return MODELS[name](num_users, num_items, seed=seed, **hyperparameters)
