"""The :class:`Recommender` interface every model family implements.

A recommender scores ``(user, item)`` pairs. Its parameters are split by name:
*private* ones (user-side tables, one row per model-local user) stay on the
client that owns the user; *shared* ones (item tables, dense layers) are
aggregated by the server. Some shared parameters are *item tables*: row ``i``
belongs to catalogue item ``i`` and the forward pass only reads the rows of the
items it scores, so a single user only needs the rows it touches
(:mod:`fedrec_flwr.train.peruser` relies on this).

The array helpers (:func:`shared_arrays`, :func:`private_arrays`,
:func:`load_arrays`) split a model's ``state_dict`` with the model's own
:meth:`Recommender.is_private`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..protocol import SERVE_TARGET, TEST_PART, VAL_PART

if TYPE_CHECKING:
    from ..serving.recommender import NodeRecommender

__all__ = [
    "HISTORY_TARGETS",
    "PRIVATE_PREFIX",
    "NodeContext",
    "Recommender",
    "is_private",
    "load_arrays",
    "private_arrays",
    "shared_arrays",
    "shared_names",
]

PRIVATE_PREFIX = "user_"


def is_private(name: str) -> bool:
    """The default rule: whether a parameter name denotes a private (user) parameter.

    Parameters
    ----------
    name : str
        A ``state_dict`` key.

    Returns
    -------
    bool
        ``True`` for names starting with :data:`PRIVATE_PREFIX` (``"user_"``).
    """
    return name.startswith(PRIVATE_PREFIX)


# What a sequence model scores from: the validation item, the test item, or
# recommendations after training (every known interaction).
HISTORY_TARGETS = (VAL_PART, TEST_PART, SERVE_TARGET)


@dataclass(frozen=True, eq=False)
class NodeContext:
    """What a node knows about its own users, for models that read more than ids.

    Built on the node from its own data and handed to :meth:`Recommender.bind`;
    nothing of it is sent anywhere.

    Attributes
    ----------
    num_users : int
        Local users (rows of the private tables).
    train_users, train_items : numpy.ndarray
        Training interactions (local user, item code), grouped by user and in
        time order within a user.
    val_items, test_items : numpy.ndarray
        Held-out item per local user.
    user_table, item_table : pandas.DataFrame or None (default: None)
        Side features: row ``u`` describes local user ``u``, row ``i`` item
        code ``i``; ``None`` where the data has none.
    """

    num_users: int
    train_users: np.ndarray
    train_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    user_table: Any = None  # pandas.DataFrame; Any keeps pandas out of the models' imports
    item_table: Any = None


class Recommender(nn.Module, ABC):
    """A model scoring ``(user, item)`` batches, with shared and private parameters.

    Subclasses implement :meth:`forward` and :meth:`reset_parameters`, create
    their parameters so that the shared ones do not depend on ``num_users``,
    and list their item tables in :meth:`item_tables`. The contract the
    per-user trainer builds on:

    - every private ``state_dict`` entry is a user table: its first dimension is
      the model-local user, and :meth:`forward` reads row ``u`` only for ``u``
      in ``users``;
    - :meth:`forward` uses ``items`` only to index the tables named by
      :meth:`item_tables` (first dimension = catalogue item code), and reads the
      parameters through the module's attributes (so
      :func:`torch.func.functional_call` can substitute per-user copies whose
      row counts differ from the module's);
    - :meth:`forward` is deterministic (no dropout) and treats every pair
      independently (no batch statistics).

    Models that read more than ids (side features, sequences, a graph) get the
    node's data through :meth:`bind` and keep it in buffers named by
    :meth:`data_buffers`, which are neither sent nor stored. Models trained by
    their own objective rather than pairwise BCE set :attr:`pairwise` to
    ``False`` and implement :meth:`train_epochs`.
    """

    #: Trained on ``(user, item)`` pairs with BCE by :func:`~fedrec_flwr.train.group.train_epochs`
    #: (``False``: by the model's own :meth:`train_epochs`).
    pairwise: ClassVar[bool] = True

    def bind(self, context: NodeContext) -> None:
        """Take what the model reads besides ids from the node's own data.

        The default reads nothing. Called on the node after construction and
        before anything is trained or scored.

        Parameters
        ----------
        context : NodeContext
            The node's users, their interactions and side tables.
        """

    def protocol(self) -> dict[str, str]:
        """What the model adds to the evaluation protocol of ``results.json``.

        Returns
        -------
        dict of str to str
            Default: nothing (a sequence model states what it scores from).
        """
        return {}

    def data_buffers(self) -> tuple[str, ...]:
        """``state_dict`` entries that are the node's data, not parameters.

        They are filled by :meth:`bind`, never sent, stored or averaged, but
        kept in the ``state_dict`` so that per-user training can slice them
        like the tables they index: a private one (``user_*``) has a row per
        local user, a shared one a row per catalogue item. They are not item
        tables (:meth:`item_tables` lists learned parameters only).

        Returns
        -------
        tuple of str
            Default: none.
        """
        return ()

    @contextmanager
    def history_for(self, target: str) -> Iterator[None]:
        """Score, inside the block, from the history that ``target`` allows.

        Only sequence models care: the validation item is scored from the
        training interactions, the test item from those plus the validation
        item (or not, by configuration), recommendations from everything
        known. The default ignores ``target``.

        Parameters
        ----------
        target : str
            One of :data:`HISTORY_TARGETS` (validation, test, serving).
            What is about to be scored.
        """
        if target not in HISTORY_TARGETS:
            raise ValueError(f"target={target!r}: expected one of {HISTORY_TARGETS}")
        yield

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
        """Train on the bound data by the model's own objective (``pairwise = False``).

        Parameters
        ----------
        epochs, batch_size : int
            Passes over the bound data and mini-batch size.
        optimizer : torch.optim.Optimizer
            Over the parameters to train; owned by the caller.
        num_negatives : int
            Negatives per positive.
        rng : numpy.random.Generator
            Source of all randomness (negatives, order, dropout seeds).
        exclude : InteractionSet
            Pairs never drawn as negatives (the training interactions).

        Returns
        -------
        float
            Mean training loss of the last epoch.
        """
        raise NotImplementedError(
            f"{type(self).__name__} is trained pairwise (pairwise=True); it has no own objective"
        )

    def is_private(self, name: str) -> bool:
        """Whether ``state_dict`` entry ``name`` is private to the user's client.

        Parameters
        ----------
        name : str
            A ``state_dict`` key.

        Returns
        -------
        bool
            Default rule: the name starts with ``"user_"`` (:func:`is_private`).
        """
        return is_private(name)

    def item_tables(self) -> tuple[str, ...]:
        """Shared ``state_dict`` entries row-indexed by catalogue item code.

        Returns
        -------
        tuple of str
            Names of the item tables (default: none, so a per-user trainer then
            gives every user whole copies of every table).
        """
        return ()

    def catalogue_size(self) -> int:
        """Number of catalogue items the model scores.

        Returns
        -------
        int
            Rows of the first item table (:meth:`item_tables`).

        Raises
        ------
        NotImplementedError
            If the model has no item tables (such a subclass overrides this).
        """
        tables = self.item_tables()
        if not tables:
            raise NotImplementedError(
                f"{type(self).__name__} has no item tables: override catalogue_size()"
            )
        return int(self.state_dict()[tables[0]].shape[0])

    @staticmethod
    def load(node_dir: str | Path) -> NodeRecommender:
        """A node's delivered model with its users' rows, to recommend from.

        ``Recommender.load(node_dir).recommend(user_ids, k)`` (``implicit``'s
        style); see :class:`~fedrec_flwr.serving.recommender.NodeRecommender`.
        """
        from ..serving.recommender import NodeRecommender

        return NodeRecommender.load(node_dir)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every ``(user, item)`` pair of ``users`` x ``items``.

        The default calls :meth:`forward` on all pairs at once; subclasses
        override it with exact fast paths. Bounding memory (chunking ``users``)
        is the caller's job.

        Parameters
        ----------
        users : torch.Tensor
            ``(U,)`` model-local user indices (int64).
        items : torch.Tensor or None (default: None)
            ``(I,)`` item codes (int64); ``None`` scores the whole catalogue
            (``arange(catalogue_size())``).

        Returns
        -------
        torch.Tensor
            ``(U, I)`` float logits, row ``r`` for ``users[r]``.
        """
        if items is None:
            items = torch.arange(self.catalogue_size(), device=users.device)
        n_users, n_items = users.shape[0], items.shape[0]
        pair_users = users.repeat_interleave(n_items)
        pair_items = items.repeat(n_users)
        return self.forward(pair_users, pair_items).reshape(n_users, n_items)

    @abstractmethod
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Score a batch of pairs.

        Parameters
        ----------
        users : torch.Tensor
            ``(B,)`` model-local user indices (int64).
        items : torch.Tensor
            ``(B,)`` item codes (int64), or row indices into the item tables.

        Returns
        -------
        torch.Tensor
            ``(B,)`` logits (trained with ``BCEWithLogitsLoss``).
        """

    @abstractmethod
    def reset_parameters(self, seed: int) -> None:
        """Initialise every parameter, deterministically in ``seed``.

        Parameters
        ----------
        seed : int
            Initialisation seed. Shared parameters must come out the same
            whatever ``num_users``: a server and every client build the same
            shared initialisation from the same seed.
        """

    def reset_private(self, seed: int) -> None:
        """Re-draw only the private parameters (a client's own initialisation).

        Parameters
        ----------
        seed : int
            Seed of the generator; private parameters are drawn in creation
            order from N(0, 0.01).
        """
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if self.is_private(name):
                    param.normal_(0.0, 0.01, generator=gen)

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Interaction probabilities in (0, 1): the sigmoid of :meth:`forward`.

        Parameters
        ----------
        users, items : torch.Tensor
            As for :meth:`forward`.

        Returns
        -------
        torch.Tensor
            ``(B,)`` probabilities.
        """
        return torch.sigmoid(self.forward(users, items))


def _private_rule(model: nn.Module) -> Callable[[str], bool]:
    return model.is_private if isinstance(model, Recommender) else is_private


def _data(model: nn.Module) -> frozenset[str]:
    return frozenset(model.data_buffers()) if isinstance(model, Recommender) else frozenset()


def _arrays(model: nn.Module, private: bool) -> OrderedDict[str, np.ndarray]:
    rule, data = _private_rule(model), _data(model)
    return OrderedDict(
        (name, t.detach().cpu().numpy().copy())
        for name, t in model.state_dict().items()
        if rule(name) == private and name not in data
    )


def shared_names(model: nn.Module) -> list[str]:
    """Names of the shared arrays, in ``state_dict`` order (the wire order).

    Parameters
    ----------
    model : torch.nn.Module
        As for :func:`shared_arrays`.

    Returns
    -------
    list of str
        What :func:`shared_arrays` returns the keys of, without copying.
    """
    rule, data = _private_rule(model), _data(model)
    return [n for n in model.state_dict() if not rule(n) and n not in data]


def shared_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """Shared parameters by name, as NumPy copies (what goes on the wire).

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`Recommender` (split by its own rule) or any module (split by
        the default ``user_`` rule).

    Returns
    -------
    collections.OrderedDict of str to numpy.ndarray
        In ``state_dict`` order.
    """
    return _arrays(model, private=False)


def private_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """Private user-side parameters by name (what never leaves a client).

    Parameters
    ----------
    model : torch.nn.Module
        As for :func:`shared_arrays`.

    Returns
    -------
    collections.OrderedDict of str to numpy.ndarray
        In ``state_dict`` order.
    """
    return _arrays(model, private=True)


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray], *, private: bool) -> None:
    """Copy named arrays into the shared (or private) parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        As for :func:`shared_arrays`; modified in place.
    arrays : mapping of str to numpy.ndarray
        Exactly the model's shared (or private) names.
    private : bool
        Which half of the model ``arrays`` is.

    Raises
    ------
    ValueError
        If names or shapes differ from the model's: the sender runs another
        model configuration.
    """
    rule, data = _private_rule(model), _data(model)
    state = model.state_dict()
    expected = {n for n in state if rule(n) == private and n not in data}
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
