"""Neural collaborative filtering: GMF, MLP and NeuMF (He et al., WWW 2017).

Parameters are split by name. Everything whose name starts with ``user_`` is a
*private* user embedding: it lives on the client that owns the user and is never
sent anywhere. All other parameters (item embeddings, MLP tower, output layer) are
*shared* and aggregated by the server.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "NCF",
    "PRIVATE_PREFIX",
    "is_private",
    "load_arrays",
    "private_arrays",
    "shared_arrays",
]

ARCHITECTURES = ("gmf", "mlp", "neumf")
PRIVATE_PREFIX = "user_"


def is_private(name: str) -> bool:
    """Whether a parameter name denotes a private (user) parameter."""
    return name.startswith(PRIVATE_PREFIX)


class NCF(nn.Module):
    """GMF, MLP or NeuMF scoring ``(user, item)`` pairs.

    Parameters
    ----------
    num_users : int
        Rows of the user embedding tables (a client holds only its own users).
    num_items : int
        Size of the shared item catalogue.
    arch : str (default: "neumf")
        ``"gmf"``, ``"mlp"`` or ``"neumf"`` (GMF and MLP fused by a final layer).
    factors : int (default: 16)
        GMF embedding size (the "predictive factors" of the paper).
    mlp_layers : sequence of int (default: (64, 32, 16))
        Widths of the MLP tower; the first is the concatenated user+item
        embedding, so each MLP embedding has ``mlp_layers[0] // 2`` dimensions.
    seed : int (default: 0)
        Initialisation seed. Shared parameters are drawn before the user tables,
        so they do not depend on ``num_users``: a server and every client build
        the same shared initialisation from the same seed.

    Notes
    -----
    :meth:`forward` returns logits, trained with ``BCEWithLogitsLoss`` for
    numerical stability; :meth:`predict` applies the paper's sigmoid output.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        arch: str = "neumf",
        factors: int = 16,
        mlp_layers: Sequence[int] = (64, 32, 16),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"model={arch!r}: unknown; accepted: {', '.join(ARCHITECTURES)}")
        if arch != "gmf" and (len(mlp_layers) < 1 or mlp_layers[0] % 2):
            raise ValueError(
                f"mlp-layers={','.join(map(str, mlp_layers))}: the first width must be "
                "even (it is the user and item embeddings concatenated)"
            )
        self.arch = arch
        self.use_gmf = arch in ("gmf", "neumf")
        self.use_mlp = arch in ("mlp", "neumf")
        out_dim = 0
        if self.use_gmf:
            self.item_gmf = nn.Embedding(num_items, factors)
            out_dim += factors
        if self.use_mlp:
            self.item_mlp = nn.Embedding(num_items, mlp_layers[0] // 2)
            tower: list[nn.Module] = []
            for width_in, width_out in itertools.pairwise(mlp_layers):
                tower += [nn.Linear(width_in, width_out), nn.ReLU()]
            self.mlp = nn.Sequential(*tower)
            out_dim += mlp_layers[-1]
        self.output = nn.Linear(out_dim, 1)
        # User tables last: see `seed` above.
        if self.use_gmf:
            self.user_gmf = nn.Embedding(num_users, factors)
        if self.use_mlp:
            self.user_mlp = nn.Embedding(num_users, mlp_layers[0] // 2)
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int) -> None:
        """Initialise as the NCF reference code: N(0, 0.01) embeddings, Xavier
        MLP, Kaiming output layer, zero biases; deterministic in ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, nn.Embedding):
                    module.weight.normal_(0.0, 0.01, generator=gen)
                elif name == "output":
                    nn.init.kaiming_uniform_(
                        module.weight, a=1, nonlinearity="sigmoid", generator=gen
                    )
                    module.bias.zero_()
                elif isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight, generator=gen)
                    module.bias.zero_()

    def reset_private(self, seed: int) -> None:
        """Re-draw only the user embeddings (a client's own initialisation)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if is_private(name):
                    param.normal_(0.0, 0.01, generator=gen)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return one logit per ``(user, item)`` pair."""
        parts = []
        if self.use_gmf:
            parts.append(self.user_gmf(users) * self.item_gmf(items))
        if self.use_mlp:
            parts.append(self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], -1)))
        return self.output(torch.cat(parts, -1) if len(parts) > 1 else parts[0]).squeeze(-1)

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Interaction probabilities in (0, 1) (the paper's sigmoid output)."""
        return torch.sigmoid(self.forward(users, items))


def _arrays(model: nn.Module, private: bool) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        (name, t.detach().cpu().numpy().copy())
        for name, t in model.state_dict().items()
        if is_private(name) == private
    )


def shared_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """Shared parameters by name, as NumPy copies (what goes on the wire)."""
    return _arrays(model, private=False)


def private_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """Private user-embedding parameters by name (what never leaves a client)."""
    return _arrays(model, private=True)


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray], *, private: bool) -> None:
    """Copy named arrays into the shared (or private) parameters of ``model``.

    Raises
    ------
    ValueError
        If names or shapes differ from the model's: the sender runs another
        model configuration.
    """
    state = model.state_dict()
    expected = {n for n in state if is_private(n) == private}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ValueError(
            f"parameter names differ from the model's: missing {missing}, unexpected {extra}"
        )
    with torch.no_grad():
        for name, value in arrays.items():
            if tuple(value.shape) != tuple(state[name].shape):
                raise ValueError(
                    f"parameter {name!r}: shape {tuple(value.shape)} does not match the "
                    f"model's {tuple(state[name].shape)} (different model config?)"
                )
            state[name].copy_(torch.from_numpy(np.asarray(value)))
