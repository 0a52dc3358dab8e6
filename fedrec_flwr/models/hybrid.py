"""A hybrid (content + collaborative) model: LightFM's, in PyTorch.

A user is the sum of their id vector and the vectors of their feature values
(age group, gender, occupation); an item is the sum of its id vector and its
feature vectors (genres, release decade). The score is the dot product of the
two sums plus the matching biases (Kula, "Metadata Embeddings for User and
Item Cold-start Recommendations", 2015), trained with the package's pairwise
BCE and sampled negatives.

What stays where:

- private (``user_*``): the user's id vector and bias, and the user's feature
  codes (:meth:`Hybrid.data_buffers`: the node's data, never sent or stored);
- shared: the item id vectors and biases (item tables), the user- and
  item-feature tables and the global bias. Feature values are hashed on the
  node (:mod:`fedrec_flwr.datasets.features`), so the shared tables line up
  across nodes without a shared vocabulary. The update of a user-feature row
  says that the node holds users with that value, as an item row's update
  says it holds the item: the privacy tools (DP, secure aggregation) cover
  both.

Id vectors start at zero, the feature vectors at N(0, 0.1): an id row nobody
trained is exactly zero, so a cold-start user or item is scored from its
features alone. (Per-user mode draws each user's private rows from the user's
own seed, N(0, 0.01), as for every model: there a new user starts near zero.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..datasets.features import hash_features
from .base import NodeContext, Recommender, is_private

__all__ = ["DEFAULT_ITEM_FEATURES", "DEFAULT_USER_FEATURES", "Hybrid"]

DEFAULT_USER_FEATURES = ("age", "gender", "occupation")
DEFAULT_ITEM_FEATURES = ("genres", "release_year")
_INIT_STD = 0.1


class Hybrid(Recommender):
    """``s(u, i) = <p_u + sum_f e_f, q_i + sum_g e_g> + biases``, a logit per pair.

    Parameters
    ----------
    num_users : int
        Rows of the private user tables (a client holds only its own users).
    num_items : int
        Size of the shared item catalogue.
    factors : int (default: 32)
        Dimension of every vector.
    user_features : sequence of str (default: ("age", "gender", "occupation"))
        User-table columns to use; empty for none.
    item_features : sequence of str (default: ("genres", "release_year"))
        Item-table columns to use; empty for none.
    feature_buckets : int (default: 1024)
        Rows of each feature table (hashed codes; see
        :mod:`fedrec_flwr.datasets.features`).
    seed : int (default: 0)
        Initialisation seed; shared tables are drawn first, so they do not
        depend on ``num_users``.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        factors: int = 32,
        user_features: Sequence[str] = DEFAULT_USER_FEATURES,
        item_features: Sequence[str] = DEFAULT_ITEM_FEATURES,
        feature_buckets: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if factors < 1:
            raise ValueError(f"factors={factors}: must be >= 1")
        if feature_buckets < 1:
            raise ValueError(f"feature-buckets={feature_buckets}: must be >= 1")
        self.factors = factors
        self.user_columns = tuple(user_features)
        self.item_columns = tuple(item_features)
        self.feature_buckets = feature_buckets
        self.collisions = 0
        self.item_emb = nn.Embedding(num_items, factors)
        self.item_bias = nn.Embedding(num_items, 1)
        self.item_feature_emb = nn.Embedding(feature_buckets, factors)
        self.item_feature_bias = nn.Embedding(feature_buckets, 1)
        self.user_feature_emb = nn.Embedding(feature_buckets, factors)
        self.user_feature_bias = nn.Embedding(feature_buckets, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        # User tables last: see `seed` above.
        self.user_emb = nn.Embedding(num_users, factors)
        self.user_bias = nn.Embedding(num_users, 1)
        # Feature codes, -1 = none: filled by bind() from the node's own tables.
        self.register_buffer("item_features", torch.full((num_items, 1), -1, dtype=torch.int64))
        self.register_buffer("user_features", torch.full((num_users, 1), -1, dtype=torch.int64))
        self.reset_parameters(seed)

    def is_private(self, name: str) -> bool:
        """User id vector, bias and feature codes; the user-*feature* tables are shared.

        Parameters
        ----------
        name : str
            A ``state_dict`` key.

        Returns
        -------
        bool
            Whether ``name`` stays on the node.
        """
        return is_private(name) and not name.startswith("user_feature_")

    def data_buffers(self) -> tuple[str, ...]:
        """The feature codes (the node's data, filled by :meth:`bind`).

        Returns
        -------
        tuple of str
            ``("item_features", "user_features")``.
        """
        return ("item_features", "user_features")

    def item_tables(self) -> tuple[str, ...]:
        """The item id vectors and biases (row = catalogue item code).

        Returns
        -------
        tuple of str
            ``("item_emb.weight", "item_bias.weight")``.
        """
        return ("item_emb.weight", "item_bias.weight")

    def _draw(self, names: Sequence[str], gen: torch.Generator) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name not in names:
                    continue
                if "feature_emb" in name:
                    param.normal_(0.0, _INIT_STD, generator=gen)
                else:  # id vectors and biases: zero (cold rows score by features)
                    param.zero_()

    def reset_parameters(self, seed: int) -> None:
        """Draw every parameter in creation order (user tables last).

        Parameters
        ----------
        seed : int
            Generator seed.
        """
        self._draw([n for n, _ in self.named_parameters()], torch.Generator().manual_seed(seed))

    def reset_private(self, seed: int) -> None:
        """Zero the user id vectors and biases (a user starts from its features).

        Parameters
        ----------
        seed : int
            Unused: nothing private is random.
        """
        self._draw(
            [n for n, _ in self.named_parameters() if self.is_private(n)],
            torch.Generator().manual_seed(seed),
        )

    def bind(self, context: NodeContext) -> None:
        """Hash the node's user and item features into codes.

        Parameters
        ----------
        context : NodeContext
            Needs ``user_table`` (with the user-feature columns) and
            ``item_table`` (with the item-feature columns) when those are set.

        Raises
        ------
        ValueError
            One line naming the missing table or column and the fix.
        """
        codes = {}
        self.collisions = 0
        for side, columns, table, rows in (
            ("user", self.user_columns, context.user_table, context.num_users),
            ("item", self.item_columns, context.item_table, self.item_emb.num_embeddings),
        ):
            if not columns:
                codes[side] = np.full((rows, 1), -1, dtype=np.int64)
                continue
            key = f"{side}-features"
            if table is None:
                raise ValueError(
                    f"model='hybrid' needs {side} features ({', '.join(columns)}) but the "
                    f"data has no {side} table; use a dataset with one (a RecBole .{side} "
                    f"file, MovieLens) or set {key}='' to use none"
                )
            missing = [c for c in columns if c not in table.columns]
            if missing:
                raise ValueError(
                    f"model='hybrid': the {side} table has no column {missing[0]!r} "
                    f"(it has {', '.join(map(str, table.columns))}); set {key} to columns "
                    "it has, or '' for none"
                )
            if len(table) != rows:
                raise ValueError(f"{side} table has {len(table)} rows for {rows} {side}s")
            hashed = hash_features(table, columns, self.feature_buckets)
            codes[side] = hashed.codes
            self.collisions += hashed.collisions
        if self.collisions:
            warnings.warn(
                f"model='hybrid': {self.collisions} feature values share a hashed bucket "
                f"with another value; raise feature-buckets (now {self.feature_buckets}) "
                "to separate them",
                stacklevel=2,
            )
        with torch.no_grad():
            self.user_features = torch.from_numpy(codes["user"])
            self.item_features = torch.from_numpy(codes["item"])

    def _side(
        self,
        ids: torch.Tensor,
        emb: nn.Embedding,
        bias: nn.Embedding,
        codes: torch.Tensor,
        feature_emb: nn.Embedding,
        feature_bias: nn.Embedding,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        own = codes[ids]  # (B, F), -1 padding
        mask = (own >= 0).unsqueeze(-1).to(emb.weight.dtype)
        safe = own.clamp(min=0)
        vector = emb(ids) + (feature_emb(safe) * mask).sum(-2)
        scalar = bias(ids).squeeze(-1) + (feature_bias(safe) * mask).sum(-2).squeeze(-1)
        return vector, scalar

    def _sides(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """User vectors and biases of ``users``, item vectors and biases of ``items``."""
        u_vec, u_bias = self._side(
            users,
            self.user_emb,
            self.user_bias,
            self.user_features,
            self.user_feature_emb,
            self.user_feature_bias,
        )
        i_vec, i_bias = self._side(
            items,
            self.item_emb,
            self.item_bias,
            self.item_features,
            self.item_feature_emb,
            self.item_feature_bias,
        )
        return u_vec, u_bias, i_vec, i_bias

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
        u_vec, u_bias, i_vec, i_bias = self._sides(users, items)
        return (u_vec * i_vec).sum(-1) + u_bias + i_bias + self.global_bias

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
        if items is None:
            items = torch.arange(self.catalogue_size(), device=users.device)
        u_vec, u_bias, i_vec, i_bias = self._sides(users, items)
        logits = u_vec @ i_vec.T
        return logits.add_(u_bias[:, None]).add_(i_bias + self.global_bias)
