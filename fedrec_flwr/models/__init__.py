"""Recommender models: shared (item-side) and private (user-side) parameters by name.

:data:`MODELS` maps each ``model`` run-config value to a builder;
:func:`build_model` is how callers construct one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

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
from .mf import MF
from .ncf import NCF

__all__ = [
    "ARCHITECTURES",
    "MF",
    "MODELS",
    "NCF",
    "PRIVATE_PREFIX",
    "NodeContext",
    "Recommender",
    "build_model",
    "is_private",
    "load_arrays",
    "private_arrays",
    "shared_arrays",
    "shared_names",
]


def _ncf(arch: str) -> Callable[..., Recommender]:
    def build(
        num_users: int, num_items: int, *, factors: int, mlp_layers: Sequence[int], seed: int
    ) -> Recommender:
        return NCF(num_users, num_items, arch, factors, mlp_layers, seed=seed)

    return build


def _mf(
    num_users: int, num_items: int, *, factors: int, mlp_layers: Sequence[int], seed: int
) -> Recommender:
    return MF(num_users, num_items, factors, seed=seed)  # no tower: mlp-layers unused


# Name -> builder(num_users, num_items, *, factors, mlp_layers, seed); read-only.
MODELS: Mapping[str, Callable[..., Recommender]] = MappingProxyType(
    {**{arch: _ncf(arch) for arch in ("gmf", "mlp", "neumf")}, "mf": _mf}
)
ARCHITECTURES: tuple[str, ...] = tuple(MODELS)


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    *,
    factors: int = 16,
    mlp_layers: Sequence[int] = (64, 32, 16),
    seed: int = 0,
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
    factors : int (default: 16)
        Embedding size of factor models (GMF's predictive factors).
    mlp_layers : sequence of int (default: (64, 32, 16))
        Widths of an MLP tower, where the model has one.
    seed : int (default: 0)
        Initialisation seed.

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
    return MODELS[name](num_users, num_items, factors=factors, mlp_layers=mlp_layers, seed=seed)
