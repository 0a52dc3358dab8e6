"""Matrix factorisation: a dot product with user, item and global biases.

Rendle, Krichene, Zhang and Anderson (RecSys 2020, "Neural Collaborative
Filtering vs. Matrix Factorization Revisited") show that a well-tuned dot
product beats NeuMF's learned similarity. The user vector and bias are
private (``user_*``: they stay on the node that owns the user); the item
vectors and biases (the item tables) and the global bias are shared.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Recommender

__all__ = ["MF"]

_INIT_STD = 0.1


class MF(Recommender):
    """``s(u, i) = <p_u, q_i> + b_u + b_i + b``, a logit per pair.

    Parameters
    ----------
    num_users : int
        Rows of the private user tables (a client holds only its own users).
    num_items : int
        Size of the shared item catalogue.
    factors : int (default: 16)
        Dimension of the user and item vectors.
    seed : int (default: 0)
        Initialisation seed. Shared parameters are drawn before the user
        tables, so they do not depend on ``num_users``.

    Notes
    -----
    Vectors start at N(0, 0.1) (Rendle et al.'s ``init_stddev``; NCF's
    N(0, 0.01) would start a dot product at ~1e-4 with gradients to match),
    biases at 0.
    """

    def __init__(self, num_users: int, num_items: int, factors: int = 16, seed: int = 0) -> None:
        super().__init__()
        if factors < 1:
            raise ValueError(f"factors={factors}: must be >= 1")
        self.factors = factors
        self.item_emb = nn.Embedding(num_items, factors)
        self.item_bias = nn.Embedding(num_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        # User tables last: see `seed` above.
        self.user_emb = nn.Embedding(num_users, factors)
        self.user_bias = nn.Embedding(num_users, 1)
        self.reset_parameters(seed)

    def _draw(self, names: tuple[str, ...], gen: torch.Generator) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name not in names:
                    continue
                if name.endswith("_emb.weight"):
                    param.normal_(0.0, _INIT_STD, generator=gen)
                else:
                    param.zero_()

    def reset_parameters(self, seed: int) -> None:
        """Draw every parameter in creation order (user tables last).

        Parameters
        ----------
        seed : int
            Generator seed.
        """
        names = tuple(name for name, _ in self.named_parameters())
        self._draw(names, torch.Generator().manual_seed(seed))

    def reset_private(self, seed: int) -> None:
        """Re-draw only the user vectors and biases, as :meth:`reset_parameters` would.

        Parameters
        ----------
        seed : int
            Generator seed.
        """
        names = tuple(n for n, _ in self.named_parameters() if self.is_private(n))
        self._draw(names, torch.Generator().manual_seed(seed))

    def item_tables(self) -> tuple[str, ...]:
        """The item vectors and biases (row = catalogue item code).

        Returns
        -------
        tuple of str
            ``("item_emb.weight", "item_bias.weight")``.
        """
        return ("item_emb.weight", "item_bias.weight")

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
        dot = (self.user_emb(users) * self.item_emb(items)).sum(-1)
        biases = self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return dot + biases + self.global_bias

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every ``(user, item)`` pair: one matrix product plus biases.

        Parameters
        ----------
        users : torch.Tensor
            ``(U,)`` model-local user indices (int64).
        items : torch.Tensor or None (default: None)
            ``(I,)`` item codes (int64); ``None`` scores the whole catalogue.

        Returns
        -------
        torch.Tensor
            ``(U, I)`` logits, equal to :meth:`forward` up to float rounding.
        """
        item_emb = self.item_emb.weight if items is None else self.item_emb.weight[items]
        item_bias = (
            self.item_bias.weight[:, 0] if items is None else self.item_bias.weight[items, 0]
        )
        logits = self.user_emb.weight[users] @ item_emb.T
        logits.add_(self.user_bias.weight[users])  # (U, 1) broadcast over items
        return logits.add_(item_bias + self.global_bias)
