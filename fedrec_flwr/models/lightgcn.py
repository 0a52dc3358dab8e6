"""LightGCN (He et al., SIGIR 2020): dot product of graph-smoothed embeddings.

Users and items are the nodes of the bipartite interaction graph. Layer 0 is
the learned embeddings; layer ``k + 1`` is ``Â`` times layer ``k``, with
``Â = D^-1/2 A D^-1/2`` the symmetrically normalised adjacency (no self loops,
no weights, no non-linearity); the final embedding is the mean of layers
``0..K``, and the score is the dot product of a user's and an item's final
embeddings.

The federated version
---------------------
Each node builds ``A`` from its *own* users and their *training* interactions
only (:meth:`LightGCN.bind`); the graph is the node's data and is never sent.
How that differs from centralised LightGCN:

- An item's propagated embedding on a node mixes only that node's users who
  interacted with it (and, two layers on, their other items), normalised by
  the node-local degrees: the same item has a different propagated embedding
  on every node. An item nobody on the node interacted with is an isolated
  node: its final embedding is its layer-0 term alone, ``e_i / (K + 1)``.
- Only the layer-0 item embeddings (``item_emb.weight``) are shared and
  averaged by the server; the propagated ones are functions of private user
  embeddings and of the node's graph and never leave it. Collaborative signal
  between users of different nodes therefore travels only through the
  averaging of layer-0 item embeddings, never through propagation; averaging
  embeddings trained through different graphs is not training on their union.
  With every user on one node it is centralised LightGCN exactly.
- One user per node makes the graph a star: the user, of degree
  ``n = |I_u|``, and its ``n`` items, each of degree 1, every edge weighted
  ``n^-1/2``. The user's layers alternate between ``e_u`` (even ``k``) and
  ``n^-1/2 * sum_{i in I_u} e_i`` (odd ``k``), and every other item is
  isolated, so a candidate item ``j`` (a held-out item is never an edge)
  scores ``<a e_u + b n^-1/2 sum_{i in I_u} e_i, e_j> / (K + 1)`` with
  ``a = (floor(K/2) + 1) / (K + 1)`` and ``b = ceil(K/2) / (K + 1)``. That is
  SVD++'s (asymmetric SVD's) user model: a free user vector plus the
  ``|I_u|^-1/2``-normalised sum of the user's item vectors, here tied to the
  item vectors themselves, without biases; no propagation across users is
  left (for ``K = 0``, plain MF). Training positives are edges, so the item
  side of a positive also carries ``n^-1/2 e_u`` (odd layers), a term no
  candidate has at evaluation.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import NodeContext, Recommender

__all__ = ["LightGCN"]

_INIT_STD = 0.1


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}={value!r}: must be an integer")
    if value < minimum:
        raise ValueError(f"{name}={value}: must be >= {minimum}")
    return int(value)


def _csr(
    ptr: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """A CSR matrix over stored components (built per call: CSR tensors have
    no storage, so a module holding one could not be deep-copied)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta", once a process
        return torch.sparse_csr_tensor(ptr, idx, val, shape, check_invariants=False)


class _SparseProduct(torch.autograd.Function):
    """``M @ x`` with the gradient ``M^T @ g`` from a stored transpose.

    Autograd through ``csr @ dense`` transposes ``M`` on every backward pass;
    the graph is fixed, so its transpose is kept instead (3-4x faster here).
    """

    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> Any:
        ctx.transpose = transpose
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return None, None, ctx.transpose @ grad


class LightGCN(Recommender):
    """``s(u, i) = <e*_u, e*_i>`` with ``e*`` the mean of ``K + 1`` propagation layers.

    Parameters
    ----------
    num_users : int
        Rows of the private user table (a node holds only its own users); 0 is
        allowed (the server reads the shared arrays' shapes from such a model).
    num_items : int
        Size of the shared item catalogue (>= 1).
    factors : int (default: 64)
        Embedding dimension (the paper's and RecBole's 64).
    layers : int (default: 1)
        Propagation layers ``K``; 0 is a dot product of the layer-0 embeddings.
    seed : int (default: 0)
        Initialisation seed. The item table is drawn before the user table, so
        shared parameters do not depend on ``num_users``.

    Notes
    -----
    *Graph.* :meth:`bind` builds ``A`` from the node's training interactions
    only (held-out items never become edges) and keeps it, normalised, as
    non-persistent buffers: outside the ``state_dict``, so neither sent,
    stored nor averaged. Until :meth:`bind` the graph has no edges (every node
    isolated). :meth:`forward` reads every row of both tables (propagation
    couples them), so the per-user trainer, which slices item tables to the
    rows a user scores, does not apply; hence :attr:`pairwise` is ``False`` and
    :meth:`train_epochs` trains the whole node, propagating once per batch.

    *Initialisation.* N(0, 0.1) for both tables, as the authors' code
    (LightGCN-PyTorch) and this package's MF. RecBole's Xavier-uniform bound
    depends on the table's row count, which would make a user row's law
    depend on how many users its node holds.

    *Loss.* BPR, the paper's: ``-log sigmoid(s(u, i) - s(u, j))`` over each
    training positive ``i`` and ``num_negatives`` sampled negatives ``j`` (drawn
    as :func:`~fedrec_flwr.train.group.train_epochs` draws them). LightGCN has no
    bias, and BPR, which compares two items of one user, needs none; BCE must
    fit the positive rate with dot products alone. On ML-100K (1 layer, d=64)
    BCE with 4 negatives reached test HR@10 0.613 at best and collapsed to the
    zero-logit saddle with ``weight_decay=1e-4``, where BPR reached 0.65
    (``benchmarks/probe_lightgcn.py``). The paper's L2 on the batch's layer-0
    rows (1e-4) changed nothing measurable there; L2 comes through the
    optimiser's ``weight_decay``.
    """

    pairwise = False

    # The bound graph (non-persistent buffers, see Notes): B = D_u^-1/2 R D_i^-1/2 as CSR
    # parts, rows = users ("ui"), and its transpose, rows = items ("iu").
    graph_ui_ptr: torch.Tensor
    graph_ui_idx: torch.Tensor
    graph_ui_val: torch.Tensor
    graph_iu_ptr: torch.Tensor
    graph_iu_idx: torch.Tensor
    graph_iu_val: torch.Tensor

    def __init__(
        self, num_users: int, num_items: int, factors: int = 64, layers: int = 1, seed: int = 0
    ) -> None:
        super().__init__()
        num_users = _check_int("num_users", num_users, 0)
        num_items = _check_int("num_items", num_items, 1)
        self.factors = _check_int("factors", factors, 1)
        self.layers = _check_int("layers", layers, 0)
        seed = _check_int("seed", seed, 0)
        self.item_emb = nn.Embedding(num_items, self.factors)
        self.user_emb = nn.Embedding(num_users, self.factors)  # last: see `seed` above
        empty = NodeContext(
            num_users=num_users,
            train_users=np.zeros(0, dtype=np.int64),
            train_items=np.zeros(0, dtype=np.int64),
            val_items=np.zeros(0, dtype=np.int64),
            test_items=np.zeros(0, dtype=np.int64),
        )
        for name, tensor in self._graph_buffers(empty).items():
            self.register_buffer(name, tensor, persistent=False)
        # The positives train_epochs iterates, set by bind().
        self._train_users = np.zeros(0, dtype=np.int64)
        self._train_items = np.zeros(0, dtype=np.int64)
        self.reset_parameters(seed)

    @property
    def num_users(self) -> int:
        """Rows of the user table."""
        return int(self.user_emb.num_embeddings)

    @property
    def num_items(self) -> int:
        """Rows of the item table (the catalogue)."""
        return int(self.item_emb.num_embeddings)

    # -- the node's graph -------------------------------------------------------------------

    def _graph_buffers(self, context: NodeContext) -> dict[str, torch.Tensor]:
        """The normalised user-item block of ``Â`` in both orientations, as CSR parts."""
        users = np.asarray(context.train_users, dtype=np.int64).reshape(-1)
        items = np.asarray(context.train_items, dtype=np.int64).reshape(-1)
        n_users, n_items = self.num_users, self.num_items
        if context.num_users != n_users:
            raise ValueError(
                f"context.num_users={context.num_users}: the model has {n_users} user rows"
            )
        if users.shape != items.shape:
            raise ValueError(
                f"context: {users.size} train_users but {items.size} train_items (one per pair)"
            )
        if users.size and not (users.min() >= 0 and users.max() < n_users):
            raise ValueError(f"context.train_users: local indices must lie in [0, {n_users})")
        if items.size and not (items.min() >= 0 and items.max() < n_items):
            raise ValueError(f"context.train_items: item codes must lie in [0, {n_items})")
        # A is binary: a repeated pair is one edge.
        keys = np.unique(users * n_items + items)
        users, items = keys // n_items, keys % n_items
        deg_u = np.bincount(users, minlength=n_users).astype(np.float64)
        deg_i = np.bincount(items, minlength=n_items).astype(np.float64)
        # Every edge joins two nodes of degree >= 1; isolated nodes have no entry.
        weight = 1.0 / np.sqrt(deg_u[users] * deg_i[items])
        by_item = np.lexsort((users, items))  # keys are sorted by user, then item
        dtype = self.item_emb.weight.dtype

        def ptr(rows: np.ndarray, n: int) -> torch.Tensor:
            return torch.from_numpy(
                np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
            )

        return {
            "graph_ui_ptr": ptr(users, n_users),
            "graph_ui_idx": torch.from_numpy(items),
            "graph_ui_val": torch.from_numpy(weight).to(dtype),
            "graph_iu_ptr": ptr(items, n_items),
            "graph_iu_idx": torch.from_numpy(users[by_item]),
            "graph_iu_val": torch.from_numpy(weight[by_item]).to(dtype),
        }

    def bind(self, context: NodeContext) -> None:
        """Build the node's normalised graph from its training interactions.

        Held-out items (``val_items``, ``test_items``) are not read: they are
        not edges, so nothing about them reaches propagation. A repeated pair
        is one edge; users and items without a training interaction here are
        isolated nodes.

        Parameters
        ----------
        context : NodeContext
            The node's users and interactions (``num_users`` must equal the
            model's user rows).

        Raises
        ------
        ValueError
            If ``context`` does not fit the model (user count, index ranges).
        """
        device = self.item_emb.weight.device
        for name, tensor in self._graph_buffers(context).items():
            setattr(self, name, tensor.to(device))
        # The positives train_epochs iterates, in the context's order (as the pairwise trainer).
        self._train_users = np.asarray(context.train_users, dtype=np.int64).reshape(-1).copy()
        self._train_items = np.asarray(context.train_items, dtype=np.int64).reshape(-1).copy()

    def num_edges(self) -> int:
        """Number of user-item edges of the bound graph.

        Returns
        -------
        int
            Distinct training pairs (0 before :meth:`bind`).
        """
        return int(self.graph_ui_idx.numel())

    def adjacency(self) -> torch.Tensor:
        """The normalised user-item block ``D_u^-1/2 R D_i^-1/2`` of ``Â``, dense.

        ``Â = [[0, B], [B^T, 0]]`` over users then items; for inspection and
        tests (``num_users x num_items`` floats).

        Returns
        -------
        torch.Tensor
            ``B``, ``(num_users, num_items)``.
        """
        return self._matrices()[0].to_dense()

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``B`` and ``B^T`` as CSR tensors over the buffers."""
        n_users, n_items = self.num_users, self.num_items
        ui = _csr(self.graph_ui_ptr, self.graph_ui_idx, self.graph_ui_val, (n_users, n_items))
        iu = _csr(self.graph_iu_ptr, self.graph_iu_idx, self.graph_iu_val, (n_items, n_users))
        return ui, iu

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings: the mean of layers ``0..K``.

        Returns
        -------
        tuple of torch.Tensor
            ``(num_users, factors)`` and ``(num_items, factors)``; differentiable
            in both tables.
        """
        users, items = self.user_emb.weight, self.item_emb.weight
        if self.layers == 0:
            return users, items
        ui, iu = self._matrices()
        sum_u, sum_i = users, items
        for _ in range(self.layers):
            # Bipartite: users' next layer is read from the items' last one and vice versa.
            users, items = (
                _SparseProduct.apply(ui, iu, items),
                _SparseProduct.apply(iu, ui, users),
            )
            sum_u, sum_i = sum_u + users, sum_i + items
        scale = 1.0 / (self.layers + 1)
        return sum_u * scale, sum_i * scale

    # -- parameters -------------------------------------------------------------------------

    def _draw(self, names: tuple[str, ...], gen: torch.Generator) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name in names:
                    param.normal_(0.0, _INIT_STD, generator=gen)

    def reset_parameters(self, seed: int) -> None:
        """Draw both tables from N(0, 0.1), item table first.

        Parameters
        ----------
        seed : int
            Generator seed.
        """
        names = tuple(name for name, _ in self.named_parameters())  # creation order
        self._draw(names, torch.Generator().manual_seed(seed))

    def reset_private(self, seed: int) -> None:
        """Re-draw only the user table, from N(0, 0.1).

        Parameters
        ----------
        seed : int
            Generator seed.
        """
        names = tuple(n for n, _ in self.named_parameters() if self.is_private(n))
        self._draw(names, torch.Generator().manual_seed(seed))

    def item_tables(self) -> tuple[str, ...]:
        """The layer-0 item embeddings (row = catalogue item code).

        Returns
        -------
        tuple of str
            ``("item_emb.weight",)``.
        """
        return ("item_emb.weight",)

    # -- scoring ----------------------------------------------------------------------------

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return one logit per ``(user, item)`` pair, from the propagated embeddings.

        Parameters
        ----------
        users, items : torch.Tensor
            ``(B,)`` model-local user indices and item codes (int64).

        Returns
        -------
        torch.Tensor
            ``(B,)`` logits.
        """
        final_u, final_i = self.propagate()
        return (final_u[users] * final_i[items]).sum(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every ``(user, item)`` pair: one propagation, one matrix product.

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
        final_u, final_i = self.propagate()
        return final_u[users] @ (final_i if items is None else final_i[items]).T

    # -- training ---------------------------------------------------------------------------

    def train_epochs(
        self,
        *,
        epochs: int,
        batch_size: int,
        optimizer: torch.optim.Optimizer,
        num_negatives: int,
        rng: np.random.Generator,
        exclude: Any,
    ) -> float:
        """Train on the bound interactions by BPR over sampled negatives.

        Each epoch draws ``num_negatives`` fresh negatives per positive, as
        :func:`~fedrec_flwr.train.group.train_epochs` does (the same call on
        ``rng``), then shuffles the ``(user, positive, negative)`` triples
        (one permutation from ``rng``); each mini-batch propagates the whole
        node graph once and takes ``-log sigmoid(s(u, i) - s(u, j))`` over its
        triples.

        Parameters
        ----------
        epochs : int
            Passes over the bound interactions (>= 0).
        batch_size : int
            Triples per mini-batch (>= 1).
        optimizer : torch.optim.Optimizer
            Over the parameters to train (its ``weight_decay`` is the L2 term);
            owned by the caller.
        num_negatives : int
            Negatives per positive (one triple each), redrawn every epoch (>= 1).
        rng : numpy.random.Generator
            Source of all randomness here (negatives, order).
        exclude : InteractionSet
            Pairs never drawn as negatives (the training interactions only);
            its catalogue must be the model's.

        Returns
        -------
        float
            Mean BPR loss over the triples of the last epoch (NaN for ``epochs=0``).

        Raises
        ------
        ValueError
            For a bad argument, or when no training interaction is bound.
        """
        # Imported here: the models package does not import the datasets package.
        from ..datasets.negatives import sample_train_negatives

        epochs = _check_int("epochs", epochs, 0)
        batch_size = _check_int("batch_size", batch_size, 1)
        num_negatives = _check_int("num_negatives", num_negatives, 1)
        if getattr(exclude, "num_items", None) != self.num_items:
            raise ValueError(
                f"exclude: an InteractionSet over the model's {self.num_items} items expected"
            )
        users, items = self._train_users, self._train_items
        if users.size == 0:
            raise ValueError("no training interaction is bound: call bind() with the node's data")
        self.train()
        device = self.item_emb.weight.device
        # Triple p * num_negatives + k: positive p with its k-th negative.
        tri_users = torch.from_numpy(np.repeat(users, num_negatives)).to(device)
        tri_pos = torch.from_numpy(np.repeat(items, num_negatives)).to(device)
        n_triples = len(tri_users)
        mean_loss = float("nan")
        for _ in range(epochs):
            negatives = sample_train_negatives(rng, users, exclude, num_negatives)
            tri_neg = torch.from_numpy(negatives.reshape(-1)).to(device)
            order = torch.from_numpy(rng.permutation(n_triples)).to(device)
            total = 0.0
            for start in range(0, n_triples, batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                final_u, final_i = self.propagate()
                user_vec = final_u[tri_users[idx]]
                margin = (user_vec * (final_i[tri_pos[idx]] - final_i[tri_neg[idx]])).sum(-1)
                loss = nn.functional.softplus(-margin).sum()  # -log sigmoid(margin)
                (loss / len(idx)).backward()
                optimizer.step()
                total += float(loss.detach())
            mean_loss = total / n_triples
        return mean_loss
