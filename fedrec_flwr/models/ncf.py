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

# Elements of the (users, items, width) hidden tensor score_all materialises at a
# time: small enough to stay in cache, large enough for efficient matmuls.
_TOWER_BLOCK = 2**20


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

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every ``(user, item)`` pair, by exact algebraic fast paths.

        GMF's term is ``(u * w_gmf) @ I^T``, one matrix product. The MLP tower's
        first layer on ``[u; i]`` is ``W_u u + W_i i + b``: the user and item
        halves are computed once per user and once per item, and only the
        remaining layers run per pair, in blocks of users bounding the hidden
        tensor to about ``2**20`` elements.

        Parameters
        ----------
        users : torch.Tensor
            ``(U,)`` model-local user indices (int64).
        items : torch.Tensor or None (default: None)
            ``(I,)`` item codes (int64); ``None`` scores the whole catalogue.

        Returns
        -------
        torch.Tensor
            ``(U, I)`` logits, equal to :meth:`forward` on every pair up to
            float rounding.
        """
        weight = self.output.weight[0]
        offset = 0
        logits = None
        if self.use_gmf:
            item_gmf = self.item_gmf.weight if items is None else self.item_gmf.weight[items]
            factors = item_gmf.shape[1]
            user_gmf = self.user_gmf.weight[users] * weight[:factors]
            logits = user_gmf @ item_gmf.T
            offset = factors
        if self.use_mlp:
            item_mlp = self.item_mlp.weight if items is None else self.item_mlp.weight[items]
            mlp = self._score_tower(self.user_mlp.weight[users], item_mlp, weight[offset:])
            logits = mlp if logits is None else logits.add_(mlp)
        assert logits is not None  # every architecture has GMF or MLP
        # In place: a (U, I) result is large, a fresh copy costs as much as the product.
        return logits.add_(self.output.bias[0])

    def _score_tower(
        self, user_emb: torch.Tensor, item_emb: torch.Tensor, out_weight: torch.Tensor
    ) -> torch.Tensor:
        """The MLP tower's contribution ``out_weight . mlp([u; i])`` per pair."""
        # The tower alternates Linear and ReLU (see __init__): ReLU after each layer.
        layers = [m for m in self.mlp if isinstance(m, nn.Linear)]
        half = user_emb.shape[1]
        if not layers:  # no tower: the output layer itself is separable
            user_part = user_emb @ out_weight[:half]
            item_part = item_emb @ out_weight[half:]
            return user_part[:, None] + item_part[None, :]
        first, rest = layers[0], layers[1:]
        user_part = user_emb @ first.weight[:, :half].T + first.bias
        item_part = item_emb @ first.weight[:, half:].T
        n_users, n_items = user_part.shape[0], item_part.shape[0]
        out = user_part.new_empty(n_users, n_items)
        block = max(1, _TOWER_BLOCK // max(1, n_items * first.out_features))
        for start in range(0, n_users, block):
            hidden = user_part[start : start + block, None, :] + item_part[None, :, :]
            hidden = hidden.relu_().reshape(-1, first.out_features)
            for layer in rest:
                hidden = torch.addmm(layer.bias, hidden, layer.weight.T).relu_()
            out[start : start + block] = (hidden @ out_weight).reshape(-1, n_items)
        return out
