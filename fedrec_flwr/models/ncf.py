"""Neural collaborative filtering: GMF, MLP and NeuMF (He et al., WWW 2017).

The first :class:`~fedrec_flwr.models.base.Recommender`. Parameters are split
by name: everything whose name starts with ``user_`` is a *private* user
embedding, living on the client that owns the user and never sent anywhere. All
other parameters (item embeddings, MLP tower, output layer) are *shared* and
aggregated by the server; the item embeddings are its item tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from .base import Recommender

__all__ = ["ARCHITECTURES", "NCF"]

#: NCF's own variants (the model registry lists every model family).
ARCHITECTURES = ("gmf", "mlp", "neumf")


class NCF(Recommender):
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
        MLP, Kaiming output layer, zero biases.

        Parameters
        ----------
        seed : int
            Generator seed; modules are drawn in creation order (user tables
            last), so shared parameters do not depend on ``num_users``.
        """
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

    def item_tables(self) -> tuple[str, ...]:
        """The item embeddings (``item_gmf.weight``, ``item_mlp.weight``) present.

        Returns
        -------
        tuple of str
            Item-table names in ``state_dict`` order.
        """
        return (("item_gmf.weight",) if self.use_gmf else ()) + (
            ("item_mlp.weight",) if self.use_mlp else ()
        )

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return one logit per ``(user, item)`` pair.

        Parameters
        ----------
        users, items : torch.Tensor
            ``(B,)`` user rows and item rows (int64).

        Returns
        -------
        torch.Tensor
            ``(B,)`` logits.
        """
        parts = []
        if self.use_gmf:
            parts.append(self.user_gmf(users) * self.item_gmf(items))
        if self.use_mlp:
            parts.append(self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], -1)))
        return self.output(torch.cat(parts, -1) if len(parts) > 1 else parts[0]).squeeze(-1)
