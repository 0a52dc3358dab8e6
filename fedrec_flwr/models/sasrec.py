"""SASRec: self-attentive sequential recommendation (Kang and McAuley, ICDM 2018).

A user is their interaction sequence: the model reads the last ``max_len``
items a user interacted with, runs causal self-attention blocks over them and
takes the output at the last position as the user's representation; an item's
logit is its dot product with the item embedding, the same table that embeds
the input items (the paper's shared embedding).

Nothing of the model is private: there is no user table, every parameter
(item and position embeddings, blocks, layer norms) is shared. The sequences
are the node's data: :meth:`SASRec.bind` copies them into non-persistent
buffers, which are in no ``state_dict`` and so never sent, stored or averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf

from ..datasets.negatives import sample_train_negatives
from ..protocol import SERVE_TARGET, TEST_PART, VAL_PART
from .base import HISTORY_TARGETS, NodeContext, Recommender

__all__ = ["LOSSES", "TEST_INPUTS", "SASRec"]

#: What the test item is scored from: training + validation items (the paper's
#: rule) or the training items only (the validation item's input).
TEST_INPUTS = ("train+val", "train")
# Training objectives: BCE against sampled negatives (the paper), or softmax
# cross-entropy over the whole catalogue (RecBole's default for SASRec).
LOSSES = ("bce", "ce")

# "No item" in a history window (left padding). Never an embedding row: the item
# table has exactly one row per catalogue item, padded entries are masked.
_PAD = -1


class _Block(nn.Module):
    """One pre-LN transformer block: causal self-attention, then a position-wise
    feed-forward network, each as ``x + Dropout(f(LayerNorm(x)))``."""

    def __init__(self, factors: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(factors)
        self.qkv = nn.Linear(factors, 3 * factors)
        self.attn_out = nn.Linear(factors, factors)
        self.ffn_norm = nn.LayerNorm(factors)
        self.ffn_in = nn.Linear(factors, factors)
        self.ffn_out = nn.Linear(factors, factors)


class SASRec(Recommender):
    """Causal self-attention over each user's recent items, scored by dot product.

    Parameters
    ----------
    num_users : int
        Local users the model is bound to (:meth:`bind`); only sizes the
        history buffers, no parameter depends on it (0 on a server, which only
        reads the shared arrays).
    num_items : int
        Size of the shared item catalogue (rows of the item embedding).
    factors : int (default: 64)
        Embedding and hidden size ``d``.
    max_len : int (default: 50)
        Most recent items read per user (the window ``n`` of the paper).
    blocks : int (default: 2)
        Self-attention blocks.
    heads : int (default: 1)
        Attention heads; must divide ``factors``.
    dropout : float (default: 0.2)
        Dropout rate in ``[0, 1)`` on the input embeddings, the attention
        weights, the feed-forward hidden layer and each block's residual
        branches; active only in training.
    test_input : str (default: "train+val")
        What the test item is scored from (:data:`TEST_INPUTS`): the training
        items plus the validation item (the paper's rule) or the training
        items only. An attribute: it can be switched on a trained model.
    loss : str (default: "bce")
        Training objective (:data:`LOSSES`): ``"bce"``, each target against
        ``num_negatives`` sampled negatives (the paper); ``"ce"``, softmax
        cross-entropy over the whole catalogue at every position (RecBole's
        default), which moves every item row each step.
    stride : int or None (default: None, ``max_len``)
        Training windows of a long sequence start every ``stride`` pairs and
        each is trained on its last ``stride`` positions, so every target sees
        at least ``max_len - stride`` items of context, as at scoring time
        (RecBole trains every prefix: ``stride=1``); cost per epoch grows as
        ``max_len / stride``.
    seed : int (default: 0)
        Initialisation seed (:meth:`reset_parameters`).

    Notes
    -----
    The layout follows the paper: learned absolute position embeddings added
    to the item embeddings (scaled by ``sqrt(d)``, as the reference code),
    *pre-LN* blocks ``x + Dropout(g(LayerNorm(x)))`` with a final layer norm,
    a ReLU feed-forward network of width ``d``, and the input item table
    reused as output embedding. Windows are left-padded, so the most recent
    item always sits at the last position; padding entries (``-1``) embed to
    zero, are never attended to and are zeroed after every block, so the
    representation of a user does not depend on how much padding its window
    has. Attention uses ``heads`` heads with an output projection.

    Training (:meth:`train_epochs`): for every user with at least two
    training items, the input is the training sequence without its last item
    and the target at each position is the next item. A sequence longer than
    ``max_len`` is cut, from its end, into windows of ``max_len`` pairs that
    start every ``stride`` pairs, each trained on its last ``stride``
    positions, so every training item is a target once per epoch (one window
    would leave the start of long histories unused). With ``loss="bce"`` each target gets
    ``num_negatives`` negatives from the items outside the user's training
    set, binary cross-entropy over the positives and negatives of the real
    (non-padding) positions, each sample weighing the same in a mini-batch's
    mean; with ``loss="ce"``, the mean softmax cross-entropy of the targets
    over the catalogue.
    Scores over the whole catalogue rank the user's own past items high (they
    are positives at other positions and never negatives): recommendations
    exclude them, as the evaluation's candidates do.
    """

    pairwise: ClassVar[bool] = False

    # The bound node's windows (buffers, declared for the type checker).
    history_train: torch.Tensor
    history_train_val: torch.Tensor
    history_all: torch.Tensor
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    train_owner: torch.Tensor

    def __init__(
        self,
        num_users: int,
        num_items: int,
        factors: int = 64,
        max_len: int = 50,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        test_input: str = "train+val",
        loss: str = "bce",
        stride: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_users < 0:
            raise ValueError(f"num_users={num_users}: must be >= 0")
        if num_items < 1:
            raise ValueError(f"num_items={num_items}: must be >= 1")
        if factors < 1:
            raise ValueError(f"factors={factors}: must be >= 1")
        if max_len < 1:
            raise ValueError(f"max_len={max_len}: must be >= 1")
        if blocks < 1:
            raise ValueError(f"blocks={blocks}: must be >= 1")
        if heads < 1 or factors % heads:
            raise ValueError(f"heads={heads}: must be >= 1 and divide factors={factors}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: must be in [0, 1)")
        if test_input not in TEST_INPUTS:
            raise ValueError(f"test_input={test_input!r}: expected one of {TEST_INPUTS}")
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {LOSSES}")
        stride = max_len if stride is None else stride
        if not 1 <= stride <= max_len:
            raise ValueError(f"stride={stride}: must be in [1, max_len={max_len}]")
        self.stride = stride
        self.loss = loss
        self.num_users = num_users
        self.num_items = num_items
        self.factors = factors
        self.max_len = max_len
        self.dropout = dropout
        self.test_input = test_input
        # torch's default initialisers draw from the global RNG; reset_parameters
        # redraws everything from `seed`, so keep that state as it was.
        with torch.random.fork_rng(devices=[]):
            self.item_emb = nn.Embedding(num_items, factors)
            self.pos_emb = nn.Embedding(max_len, factors)
            self.blocks = nn.ModuleList(_Block(factors, heads) for _ in range(blocks))
            self.final_norm = nn.LayerNorm(factors)
        # The node's sequences (bind): non-persistent, so in no state_dict.
        empty = torch.full((num_users, max_len), _PAD, dtype=torch.int64)
        for name in ("history_train", "history_train_val", "history_all"):
            self.register_buffer(name, empty.clone(), persistent=False)
        # Training windows (several per long sequence) and the user of each.
        none = torch.full((0, max_len), _PAD, dtype=torch.int64)
        self.register_buffer("train_inputs", none.clone(), persistent=False)
        self.register_buffer("train_targets", none.clone(), persistent=False)
        self.register_buffer("train_owner", torch.zeros(0, dtype=torch.int64), persistent=False)
        self._target: str | None = None  # set by history_for
        self._dropout_gen: torch.Generator | None = None  # set by train_epochs
        self.reset_parameters(seed)

    # -- parameters -----------------------------------------------------------

    def reset_parameters(self, seed: int) -> None:
        """Item and position embeddings N(0, 1/d), Xavier-uniform linear layers,
        zero biases, unit layer norms.

        Parameters
        ----------
        seed : int
            Generator seed; parameters are drawn in creation order. There are
            no user parameters, so nothing depends on ``num_users``.
        """
        gen = torch.Generator().manual_seed(seed)
        std = self.factors**-0.5
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Embedding):
                    module.weight.normal_(0.0, std, generator=gen)
                elif isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight, generator=gen)
                    module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()

    def protocol(self) -> dict[str, str]:
        """The input rule, recorded with the results (both rules are reported in the field).

        Returns
        -------
        dict of str to str
            ``{"sequence-input": ...}``.
        """
        test = (
            "the training items plus the validation item (the SASRec paper's rule)"
            if self.test_input == "train+val"
            else "the training items only"
        )
        return {
            "sequence-input": (
                f"the last {self.max_len} items: the validation item is scored from the "
                f"training items, the test item from {test}; trained on the training "
                f"sequence only, loss {self.loss}"
            )
        }

    def item_tables(self) -> tuple[str, ...]:
        """The item embedding (input and output, row = catalogue item code).

        Returns
        -------
        tuple of str
            ``("item_emb.weight",)``: exactly ``num_items`` rows (padding is
            masked, not a row).
        """
        return ("item_emb.weight",)

    # -- the node's data ------------------------------------------------------

    def bind(self, context: NodeContext) -> None:
        """Build the users' history windows from the node's interactions.

        Parameters
        ----------
        context : NodeContext
            ``num_users`` must equal the model's; training items grouped by
            user in time order, one validation and test item per user.

        Raises
        ------
        ValueError
            If the context does not fit the model (user count, item codes) or
            the training rows are not grouped by user.
        """
        n = context.num_users
        if n != self.num_users:
            raise ValueError(f"context.num_users={n}: the model was built for {self.num_users}")
        users = np.asarray(context.train_users, dtype=np.int64)
        items = np.asarray(context.train_items, dtype=np.int64)
        val = np.asarray(context.val_items, dtype=np.int64)
        test = np.asarray(context.test_items, dtype=np.int64)
        if users.shape != items.shape or val.shape != (n,) or test.shape != (n,):
            raise ValueError(
                f"context: {users.shape[0]} training users for {items.shape[0]} items, "
                f"{val.shape[0]} validation and {test.shape[0]} test items for {n} users"
            )
        if users.size and (users.min() < 0 or users.max() >= n or np.any(np.diff(users) < 0)):
            raise ValueError("context.train_users: must be local users 0..num_users-1, grouped")
        for name, codes in (("train_items", items), ("val_items", val), ("test_items", test)):
            if codes.size and (codes.min() < 0 or codes.max() >= self.num_items):
                raise ValueError(f"context.{name}: item codes outside [0, {self.num_items})")
        ends = np.cumsum(np.bincount(users, minlength=n))
        starts = ends - np.bincount(users, minlength=n)
        length = self.max_len
        train = _windows(items, starts, ends, length)
        # Appending the held-out items keeps the last max_len of the longer history.
        train_val = np.concatenate([train, val[:, None]], axis=1)[:, -length:]
        everything = np.concatenate([train, val[:, None], test[:, None]], axis=1)[:, -length:]
        # Training pairs: input = sequence without its last item, target = next
        # item; a user's n - 1 pairs cut from the end into windows of `length`
        # that start every `stride` pairs. A window's loss is on its last
        # `stride` positions only, so each pair is a target once and has at
        # least length - stride items of context (all of them when stride = 1).
        step = self.stride
        pairs = np.maximum(ends - starts - 1, 0)
        per_user = -(-pairs // step)  # ceil
        owner = np.repeat(np.arange(n), per_user)
        back = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        stop = ends[owner] - 1 - back * step  # last input position (exclusive) of a window
        first = starts[owner]
        inputs = _windows(items, first, np.maximum(stop, first), length)
        targets = np.where(inputs == _PAD, _PAD, _windows(items, first + 1, stop + 1, length))
        targets[:, : length - step] = _PAD  # another window's last `stride` positions
        device = self.item_emb.weight.device
        for name, value in (
            ("history_train", train),
            ("history_train_val", train_val),
            ("history_all", everything),
            ("train_inputs", inputs),
            ("train_targets", targets),
            ("train_owner", owner.astype(np.int64)),
        ):
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(value)).to(device))

    @contextmanager
    def history_for(self, target: str) -> Iterator[None]:
        """Score, inside the block, from the history ``target`` allows.

        Validation: the training items; test: the training items plus the
        validation item (``test_input="train+val"``) or the training items only
        (``"train"``); serving: everything known (training, validation and
        test items). Outside any block, the training items.

        Parameters
        ----------
        target : str
            One of :data:`~fedrec_flwr.models.base.HISTORY_TARGETS`.
            What is about to be scored.
        """
        if target not in HISTORY_TARGETS:
            raise ValueError(f"target={target!r}: expected one of {HISTORY_TARGETS}")
        previous, self._target = self._target, target
        try:
            yield
        finally:
            self._target = previous

    def _history(self) -> torch.Tensor:
        """The ``(num_users, max_len)`` windows of the current target."""
        target = self._target
        if target == TEST_PART:  # read now, so a switched test_input takes effect
            target = VAL_PART if self.test_input == "train" else TEST_PART
        if target == TEST_PART:
            return self.history_train_val
        if target == SERVE_TARGET:
            return self.history_all
        return self.history_train

    # -- the network ----------------------------------------------------------

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout in training mode only, from train_epochs' generator when set
        (reproducible without touching the global torch RNG)."""
        if not self.training or self.dropout == 0.0:
            return x
        if self._dropout_gen is None:
            return nnf.dropout(x, self.dropout, training=True)
        keep = torch.rand(x.shape, generator=self._dropout_gen, device=x.device) >= self.dropout
        return x * keep.to(x.dtype) / (1.0 - self.dropout)

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        """Transformer outputs at every position of left-padded windows.

        Parameters
        ----------
        windows : torch.Tensor
            ``(B, L)`` item codes, ``-1`` for padding, ``L <= max_len``; the
            most recent item last.

        Returns
        -------
        torch.Tensor
            ``(B, L, factors)``; row ``[b, t]`` depends only on the real items
            of ``windows[b, :t+1]`` (zero at padding positions).
        """
        length = windows.shape[1]
        real = windows != _PAD
        mask = real.unsqueeze(-1).to(self.item_emb.weight.dtype)
        x = self.item_emb(windows.clamp(min=0)) * math.sqrt(self.factors)
        # Positions count from the window's start, so the last item is always at
        # max_len - 1 whatever the window length.
        positions = torch.arange(self.max_len - length, self.max_len, device=windows.device)
        x = self._drop(x + self.pos_emb(positions)) * mask
        # Query t attends to real keys s <= t. Its own position is always allowed,
        # so a padding query (zeroed afterwards) has a finite softmax.
        causal = torch.ones(length, length, dtype=torch.bool, device=windows.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=windows.device)
        allowed = causal & (real.unsqueeze(1) | itself)
        for block in self._blocks():
            x = (x + self._drop(self._attend(block, block.attn_norm(x), allowed))) * mask
            hidden = self._drop(nnf.relu(block.ffn_in(block.ffn_norm(x))))
            x = (x + self._drop(block.ffn_out(hidden))) * mask
        return self.final_norm(x) * mask

    def _blocks(self) -> list[_Block]:
        return [block for block in self.blocks if isinstance(block, _Block)]

    def _attend(self, block: _Block, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // block.heads
        qkv = block.qkv(x).view(batch, length, 3, block.heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]  # (B, H, L, head_dim)
        scores = query @ key.transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        weights = self._drop(torch.softmax(scores, dim=-1))
        out = (weights @ value).transpose(1, 2).reshape(batch, length, width)
        return block.attn_out(out)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """Each user's representation: the output at the last window position.

        Parameters
        ----------
        users : torch.Tensor
            ``(U,)`` local user indices (int64).

        Returns
        -------
        torch.Tensor
            ``(U, factors)``, from the history of the current target
            (:meth:`history_for`).
        """
        return self.encode(self._history()[users])[:, -1]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return one logit per ``(user, item)`` pair.

        Parameters
        ----------
        users, items : torch.Tensor
            ``(B,)`` local user indices and item codes (int64). Each distinct
            user is encoded once.

        Returns
        -------
        torch.Tensor
            ``(B,)`` logits: user representation dot item embedding.
        """
        unique, inverse = torch.unique(users, return_inverse=True)
        vectors = self.user_vectors(unique)[inverse]
        return (vectors * self.item_emb(items)).sum(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every ``(user, item)`` pair: each user encoded once, one matmul.

        Parameters
        ----------
        users : torch.Tensor
            ``(U,)`` local user indices (int64).
        items : torch.Tensor or None (default: None)
            ``(I,)`` item codes (int64); ``None`` scores the whole catalogue.

        Returns
        -------
        torch.Tensor
            ``(U, I)`` logits, equal to :meth:`forward` up to float rounding.
        """
        table = self.item_emb.weight if items is None else self.item_emb.weight[items]
        return self.user_vectors(users) @ table.T

    # -- training -------------------------------------------------------------

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
        """Next-item BCE on every position of each user's training sequence.

        Each epoch draws fresh negatives (``num_negatives`` per target, from
        items outside ``exclude``'s items of the user), shuffles the users
        with at least two training items and steps ``optimizer`` once per
        mini-batch of ``batch_size`` users, on the batch's mean BCE over
        positives and negatives at real positions. Dropout draws from a
        generator seeded from ``rng``: the same ``rng`` state gives
        bit-identical training, and the global torch RNG is left untouched.

        Parameters
        ----------
        epochs, batch_size : int
            Passes over the bound users and users (sequences) per step.
        optimizer : torch.optim.Optimizer
            Over the parameters to train; owned by the caller.
        num_negatives : int
            Negatives per target position.
        rng : numpy.random.Generator
            Source of all randomness (negatives, order, dropout seed).
        exclude : InteractionSet
            Pairs never drawn as negatives (the bound training interactions).

        Returns
        -------
        float
            Mean BCE per sample (positives and negatives) of the last epoch;
            0.0 if no user has two training items (nothing to train on).
        """
        if epochs < 0 or batch_size < 1 or num_negatives < 1:
            raise ValueError(
                f"epochs={epochs}, batch_size={batch_size}, num_negatives={num_negatives}: "
                "need epochs >= 0, batch_size >= 1, num_negatives >= 1"
            )
        inputs, targets = self.train_inputs, self.train_targets
        windows = len(targets)  # each window has a real target (bind)
        owners = self.train_owner.cpu().numpy()
        # Where the targets are does not change between epochs: found once.
        rows, cols = (t.cpu().numpy() for t in torch.nonzero(targets != _PAD, as_tuple=True))
        device = self.item_emb.weight.device
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        was_training = self.training
        self.train()
        self._dropout_gen = gen
        mean_loss = 0.0
        try:
            for _ in range(epochs):
                negatives = torch.full(
                    (windows, self.max_len, num_negatives if self.loss == "bce" else 0),
                    _PAD,
                    dtype=torch.int64,
                )
                if self.loss == "bce":
                    drawn = sample_train_negatives(rng, owners[rows], exclude, num_negatives)
                    negatives[rows, cols] = torch.from_numpy(drawn)
                negatives = negatives.to(device)
                order = rng.permutation(windows)
                total, count = 0.0, 0
                for start in range(0, len(order), batch_size):
                    batch = torch.from_numpy(order[start : start + batch_size]).to(device)
                    loss_sum, samples = self._batch_loss(
                        inputs[batch], targets[batch], negatives[batch]
                    )
                    optimizer.zero_grad(set_to_none=True)
                    (loss_sum / samples).backward()
                    optimizer.step()
                    total += float(loss_sum.detach())
                    count += samples
                mean_loss = total / count if count else 0.0
        finally:
            self._dropout_gen = None
            self.train(was_training)
        return mean_loss

    def _batch_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Summed BCE of a batch's real positions and the number of samples."""
        hidden = self.encode(inputs)  # (B, L, d)
        real = targets != _PAD
        hidden = hidden[real]  # (P, d)
        if self.loss == "ce":
            logits = hidden @ self.item_emb.weight.T  # (P, num_items)
            loss = nnf.cross_entropy(logits, targets[real], reduction="sum")
            return loss, int(real.sum())
        positive = (hidden * self.item_emb(targets[real])).sum(-1)
        negative = torch.einsum("pd,pnd->pn", hidden, self.item_emb(negatives[real]))
        loss = nnf.binary_cross_entropy_with_logits(
            positive, torch.ones_like(positive), reduction="sum"
        ) + nnf.binary_cross_entropy_with_logits(
            negative, torch.zeros_like(negative), reduction="sum"
        )
        return loss, int(positive.numel() + negative.numel())


def _windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """``items[starts[u]:ends[u]]``'s last ``length`` entries per user, left-padded with -1."""
    index = ends[:, None] - length + np.arange(length)
    valid = index >= starts[:, None]
    if items.size == 0:
        return np.full(index.shape, _PAD, dtype=np.int64)
    return np.where(valid, items[np.clip(index, 0, None)], _PAD).astype(np.int64)
