"""Run configuration: parsed once, validated, frozen, declared once.

A run's settings are the keys of ``[tool.flwr.app.config]`` in ``pyproject.toml``.
Each key is one field of one option group, declared with
:func:`~fedrec_flwr.settings.option` (default, help text, accepted values, and
whether the centralised baseline uses it): :class:`DataOptions` (``data``),
:class:`ModelOptions` (``model``), :class:`TrainingOptions` (``training``),
:class:`StrategyOptions` (``strategy``) and the run-level keys of
:class:`RunConfig` itself. Each group checks its own keys; :class:`RunConfig`
checks the combinations across groups. The ServerApp, the ClientApp and the
centralised baseline all read the keys through :meth:`RunConfig.from_mapping`, so
a bad value fails the same way everywhere with a one-line error naming the key
and what is accepted.

The pyproject table and the README table are generated from the same fields:
``python -m fedrec_flwr.config --toml`` and ``--markdown`` print them (tests check
that both files hold exactly that text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .datasets.options import DataOptions
from .datasets.prepare import NEGATIVE_POOLS
from .errors import ConfigError
from .models import ARCHITECTURES, Recommender, build_model
from .models.sasrec import LOSSES as SASREC_LOSSES
from .models.sasrec import TEST_INPUTS as SASREC_TEST_INPUTS
from .privacy.options import PrivacyOptions
from .protocol import KNOB_KEYS, PRIVATE_LAYERS_KEY, PROXIMAL_MU_KEY
from .serving.options import ServingOptions
from .settings import (
    check_choices,
    check_numbers,
    coerce,
    describe,
    documented,
    key_of,
    option,
    shown,
)
from .strategies.registry import ITEM_AGGREGATIONS, STRATEGIES, WEIGHT_KEYS
from .threads import MAX_THREADS

__all__ = [
    "CLIENT_MODES",
    "FINETUNE_SCOPES",
    "FINETUNE_UNITS",
    "LEAKY_POOL_WARNING",
    "RATING_MODELS",
    "ConfigError",
    "DataOptions",
    "ModelOptions",
    "PrivacyOptions",
    "RoundKnobs",
    "RunConfig",
    "ServingOptions",
    "StrategyOptions",
    "TrainingOptions",
    "markdown_table",
    "toml_table",
]

FINETUNE_SCOPES = ("all", "private")
CLIENT_MODES = ("group", "per-user")
FINETUNE_UNITS = ("client", "user")
OPTIMIZER_STATES = ("fresh", "keep")
#: Models the rating task trains (pairwise models scoring a pair with one output).
RATING_MODELS = ("gmf", "mlp", "neumf", "mf")
LEAKY_POOL_WARNING = (
    "negative-pool='history' excludes held-out validation and test items from "
    "training negatives: the held-out item becomes the one item never drawn as a "
    "negative, which leaks it. Use only to reproduce published numbers; the honest "
    "protocol is negative-pool='train'."
)

# Embedding/tower widths and training negatives per positive: far above any NCF
# setting, low enough that torch allocates instead of overflowing its size type.
MAX_WIDTH = 2**16


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise ConfigError(f"{key_of(name)}={value}: must be >= 1")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{key_of(name)}={value}: must be a finite number >= 0")


def _widths(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


@documented
@dataclass(frozen=True)
class ModelOptions:
    """The model family and its widths."""

    model: str = option(
        "neumf",
        "Model: the NCF architectures `gmf` (generalised matrix factorisation), `mlp` (a "
        "tower over the concatenated user and item embeddings) and `neumf` (both, fused), "
        "`mf` (a dot product with user, item and global biases; Rendle et al. 2020), or "
        "`hybrid` (LightFM's model: id plus side-feature embeddings; needs user and item "
        "tables, see `user-features`), `lightgcn` (LightGCN over each node's own "
        "user-item graph; trained with BPR), or `sasrec` (SASRec: a user is their item "
        "sequence, which never leaves the node; see `test-input`).",
        choices=ARCHITECTURES,
    )
    factors: int = option(16, "Embedding size of GMF, MF and the other factor models.")
    mlp_layers: tuple[int, ...] = option(
        (64, 32, 16),
        "MLP tower widths, comma-separated; the first (even) is the concatenated "
        "user+item embedding.",
    )
    user_features: str = option(
        "age,gender,occupation",
        "`hybrid`: user-table columns whose values are embedded (private: encoded on the "
        "node); `''` for none. `age` is grouped as MovieLens-1M does, a `*year` column "
        "by decade, `|` separates several values.",
    )
    item_features: str = option(
        "genres,release_year", "`hybrid`: item-table columns embedded (shared); `''` for none."
    )
    feature_buckets: int = option(
        1024,
        "`hybrid`: rows of each feature table; values are hashed into them (scikit-learn's "
        "FeatureHasher) so nodes agree without a shared vocabulary.",
    )
    gcn_layers: int = option(
        3, "`lightgcn`: propagation layers over the node's graph (0 = plain dot product)."
    )
    max_seq_len: int = option(50, "`sasrec`: most recent items a user is read as.")
    attention_blocks: int = option(2, "`sasrec`: self-attention blocks.")
    attention_heads: int = option(1, "`sasrec`: attention heads (must divide `factors`).")
    dropout: float = option(0.2, "`sasrec`: dropout rate in training, in [0, 1).")
    test_input: str = option(
        "train+val",
        "`sasrec`: what the test item is scored from: `train+val` (the training items and "
        "the validation item, as the SASRec paper) or `train` (the training items only); "
        "the validation item is always scored from the training items. Recorded in the "
        "protocol.",
        choices=SASREC_TEST_INPUTS,
    )
    sequence_stride: int = option(
        10,
        "`sasrec`: training windows of `max-seq-len` items start every this many "
        "items, each trained on its last `sequence-stride` positions, so every target "
        "has at least `max-seq-len` minus this of context (1: every prefix, as RecBole; "
        "`max-seq-len`: disjoint windows, half the cost).",
    )
    sequence_loss: str = option(
        "ce",
        "`sasrec`: `ce` (softmax cross-entropy over the catalogue, as RecBole; validation "
        "HR@10 0.764 against 0.737 on ML-100K) or `bce` (each next item against "
        "`num-negatives` sampled negatives, as the paper).",
        choices=SASREC_LOSSES,
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.factors > MAX_WIDTH:
            raise ConfigError(f"factors={self.factors}: must be <= {MAX_WIDTH}")
        if max(self.mlp_layers) > MAX_WIDTH:
            raise ConfigError(
                f"mlp-layers={_widths(self.mlp_layers)}: widths must be <= {MAX_WIDTH}"
            )
        if self.feature_buckets > MAX_WIDTH * 16:
            raise ConfigError(
                f"feature-buckets={self.feature_buckets}: must be <= {MAX_WIDTH * 16}"
            )
        _positive(self, "factors", "feature_buckets")
        _non_negative(self, "gcn_layers")
        _positive(self, "max_seq_len", "attention_blocks", "attention_heads")
        if self.max_seq_len > MAX_WIDTH or self.attention_blocks > 64:
            raise ConfigError(
                f"max-seq-len={self.max_seq_len}, attention-blocks={self.attention_blocks}: "
                f"must be <= {MAX_WIDTH} and <= 64"
            )
        if not 1 <= self.sequence_stride <= self.max_seq_len:
            raise ConfigError(
                f"sequence-stride={self.sequence_stride}: must be in [1, max-seq-len="
                f"{self.max_seq_len}]"
            )
        if self.factors % self.attention_heads:
            raise ConfigError(
                f"attention-heads={self.attention_heads}: must divide factors={self.factors}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout}: must be in [0, 1)")
        if self.gcn_layers > 16:
            raise ConfigError(f"gcn-layers={self.gcn_layers}: must be <= 16")
        check_choices(self)
        if self.model != "gmf" and self.mlp_layers[0] % 2:
            raise ConfigError(
                f"mlp-layers={_widths(self.mlp_layers)}: the first width must "
                "be even (user and item embeddings concatenated)"
            )

    def build(self, num_users: int, num_items: int, seed: int) -> Recommender:
        """The configured model (:func:`~fedrec_flwr.models.build_model`).

        Parameters
        ----------
        num_users : int
            Rows of the private user tables (0 on a server).
        num_items : int
            Catalogue size.
        seed : int
            Initialisation seed.
        """
        return build_model(
            self.model,
            num_users,
            num_items,
            seed=seed,
            factors=self.factors,
            mlp_layers=self.mlp_layers,
            user_features=_columns(self.user_features),
            item_features=_columns(self.item_features),
            feature_buckets=self.feature_buckets,
            gcn_layers=self.gcn_layers,
            max_seq_len=self.max_seq_len,
            attention_blocks=self.attention_blocks,
            attention_heads=self.attention_heads,
            dropout=self.dropout,
            test_input=self.test_input,
            sequence_loss=self.sequence_loss,
            sequence_stride=self.sequence_stride,
        )


def _has_private_parameters(options: ModelOptions) -> bool:
    """Whether the configured model has a private (per-user) parameter at all."""
    model = options.build(1, 2, seed=0)
    return any(model.is_private(name) for name, _ in model.named_parameters())


def _columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


@documented
@dataclass(frozen=True)
class TrainingOptions:
    """Local optimisation, evaluation cut-offs and personalisation."""

    learning_rate: float = option(0.001, "Adam learning rate.")
    weight_decay: float = option(0.0, "Adam L2 penalty.")
    embedding_l2: float = option(
        0.0,
        "L2 penalty on the embedding rows each training sample reads (user and item "
        "tables; for ranking, negatives included), averaged over the batch: Surprise's "
        "`reg` (`task=rating`), Rendle et al. 2020's regulariser (ranking); rows a batch "
        "does not read are not pulled (Adam's `weight-decay` pulls every row at every "
        "step). Models with a BCE or MSE objective (gmf, mlp, neumf, mf, hybrid), group "
        "training. 0 = off.",
    )
    local_epochs: int = option(2, "Passes over a client's data per round.", centralized=False)
    batch_size: int = option(256, "Mini-batch size.")
    num_negatives: int = option(4, "Training negatives per positive.")
    top_k: tuple[int, ...] = option(
        (10,), "Cut-offs for HR@K and NDCG@K, e.g. `5,10,20`; 10 is always reported."
    )
    full_ranking: bool = option(
        True,
        "Also rank each held-out item over the whole catalogue minus the user's training "
        "items (`full-hr@K`, `full-recall@K`, `full-ndcg@K` next to the sampled metrics; "
        "with personalisation, by the personalised model: under per-user fine-tuning each "
        "user's own copy, holding a users x items score table per node).",
    )
    negative_pool: str = option(
        "train",
        "Items kept out of a user's *training* negatives: `train` (its training "
        "interactions; the honest protocol) or `history` (also its held-out items: it "
        "leaks the answer and exists only to reproduce published numbers; a warning is "
        "logged).",
        choices=NEGATIVE_POOLS,
    )
    client_mode: str = option(
        "group",
        "`group`: a node trains its user group as one client. `per-user`: each user of "
        "the group trains its own update from the global model and the node returns their "
        "interaction-weighted mean, which makes FedAvg over nodes *equal* to FedAvg with "
        "one user per client (`tests/test_peruser.py`) at one message per node; "
        "fine-tuning is then per user too.",
        choices=CLIENT_MODES,
        centralized=False,
    )
    optimizer_state: str = option(
        "fresh",
        "`fresh`: a new Adam every round, so only parameters cross rounds (FedAvg's "
        "client). `keep`: each node keeps its Adam moments and step count from its last "
        "round, in its private state and store (never sent; a restarted node and a "
        "resumed run reload them); group mode only.",
        choices=OPTIMIZER_STATES,
        centralized=False,
    )
    proximal_mu: float = option(
        0.0,
        "FedProx term `mu/2 ||w - w_global||^2` on the shared parameters in local "
        "training; 0 = off. A server may send it per round.",
        centralized=False,
    )
    private_layers: str = option(
        "",
        "Comma-separated shared-parameter prefixes (e.g. `output`) that each client keeps "
        "private across rounds (FedPer-style personal layers). A server may send it per "
        "round.",
        centralized=False,
    )
    finetune_epochs: int = option(
        0,
        "Personalised evaluation: before evaluating, each client fine-tunes the global "
        "model on its own data for this many epochs (`val`/`test` are then the "
        "personalised model's, `global-val`/`global-test` the global model's); 0 = off. "
        "A server may send it per round.",
        centralized=False,
    )
    finetune_scope: str = option(
        "private",
        "What fine-tuning trains: `all` parameters, or only the `private` ones (user "
        "embeddings and `private-layers`). A server may send it per round.",
        choices=FINETUNE_SCOPES,
        centralized=False,
    )
    finetune_unit: str = option(
        "client",
        "Who fine-tunes a copy: the `client` (its whole user group together) or each "
        "`user` alone, on its own interactions only, as a one-user client would "
        "(PFedRec-style); `client-mode=per-user` always fine-tunes per user.",
        choices=FINETUNE_UNITS,
        centralized=False,
    )
    finetune_learning_rate: float = option(
        0.0, "Adam's learning rate for fine-tuning; 0 = `learning-rate`.", centralized=False
    )
    num_threads: int = option(
        0,
        "torch intra-op threads per process (at most 1024), recorded in `results.json`. "
        "0 = automatic: 1 per federated client (simulation runs several side by side); "
        "the centralised baseline uses 1 below 4 available CPUs (affinity and cgroup "
        "quota), else one per CPU. One thread was 2-20x faster than two on a shared "
        "2-CPU machine; the results are the same bits with 1 and 2 threads.",
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.num_negatives > MAX_WIDTH:
            raise ConfigError(f"num-negatives={self.num_negatives}: must be <= {MAX_WIDTH}")
        if self.num_threads > MAX_THREADS:
            raise ConfigError(
                f"num-threads={self.num_threads}: must be <= {MAX_THREADS} (0 = automatic)"
            )
        _positive(self, "local_epochs", "batch_size", "num_negatives")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning-rate={self.learning_rate}: must be > 0")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight-decay={self.weight_decay}: must be >= 0")
        if not self.embedding_l2 >= 0:
            raise ConfigError(f"embedding-l2={self.embedding_l2}: must be >= 0")
        _non_negative(
            self, "proximal_mu", "finetune_epochs", "finetune_learning_rate", "num_threads"
        )
        check_choices(self)

    @property
    def ks(self) -> tuple[int, ...]:
        """Cut-offs to report, always including 10."""
        return tuple(sorted(set(self.top_k) | {10}))

    @property
    def finetune_lr(self) -> float:
        """Fine-tuning's learning rate (``finetune-learning-rate``, else ``learning-rate``)."""
        return self.finetune_learning_rate or self.learning_rate

    @property
    def finetunes_per_user(self) -> bool:
        """Fine-tuning personalises each user alone (per-user mode implies it)."""
        return self.finetune_unit == "user" or self.client_mode == "per-user"

    @property
    def private_layer_prefixes(self) -> tuple[str, ...]:
        """``private-layers`` split on commas, blanks dropped."""
        return tuple(p.strip() for p in self.private_layers.split(",") if p.strip())


@documented
@dataclass(frozen=True)
class StrategyOptions:
    """The server's aggregation, client sampling and reply validation."""

    strategy: str = option(
        "fedavg",
        "Server strategy (see strategies/README.md).",
        choices=tuple(STRATEGIES),
        centralized=False,
    )
    fraction_train: float = option(
        1.0,
        "Fraction of clients trained each round, in (0, 1]; below 1 the sample is drawn "
        "from the clients' partition ids and `seed` (reproducible).",
        centralized=False,
    )
    min_nodes: int = option(
        2,
        "Nodes connected before a round starts, and the least trained and evaluated per "
        "round; set it below the number of SuperNodes so a deployment outlives losing some.",
        centralized=False,
    )
    weight_key: str = option(
        "interactions",
        "FedAvg weight `n_k`: `interactions` (training interactions), `users` (users in "
        "the group) or `uniform` (1 per client).",
        choices=WEIGHT_KEYS,
        centralized=False,
    )
    item_aggregation: str = option(
        "dense",
        "`dense` averages whole arrays; `rowwise` averages each item-embedding row only "
        "over the clients that trained that item, weighted by their counts for it "
        "(clients send per-item counts, revealing to the server which items a group "
        "used; fedavg only).",
        choices=ITEM_AGGREGATIONS,
        centralized=False,
    )
    max_client_weight: float = option(
        0.0,
        "Replies claiming a larger weight are dropped; 0 = the dataset's size (training "
        "interactions, or users with `weight-key=users`).",
        centralized=False,
    )
    server_learning_rate: float = option(
        0.0,
        "Server step of fedadam/fedyogi (`eta`) and fedavgm; 0 = Flower's default (0.1, "
        "0.01, 1.0).",
        centralized=False,
    )
    server_momentum: float = option(
        0.5,
        "fedavgm server momentum (0.9 diverged on ML-100K, see strategies/README.md).",
        centralized=False,
    )
    trimmed_beta: float = option(
        0.2, "fedtrimmedavg: fraction cut at each end, in [0, 0.5).", centralized=False
    )
    num_malicious_nodes: int = option(
        0, "krum: assumed number of Byzantine clients `f`.", centralized=False
    )
    max_update_norm: float = option(
        0.0,
        "Training replies whose update norm (L2 of `w_k - w` over every shared array, "
        "against the global model sent) exceeds it are dropped with a reason; 0 = off.",
        centralized=False,
    )
    node_weight_caps: str = option(
        "",
        "Absolute path, on the server, of a TOML file declaring each node's largest "
        "weight by partition id (tables `[num-examples]` and `[num-users]`, e.g. "
        "`0 = 9800`); replies claiming more are dropped.",
        centralized=False,
    )
    weight_clip_multiple: float = option(
        4.0,
        "A reply whose weight has no declared or data-derived cap is clipped to this "
        "multiple of the round's median weight (logged and recorded); 0 = off.",
        centralized=False,
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        _positive(self, "min_nodes")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train={self.fraction_train}: must be in (0, 1]")
        _non_negative(
            self,
            "max_client_weight",
            "server_learning_rate",
            "server_momentum",
            "num_malicious_nodes",
            "max_update_norm",
            "weight_clip_multiple",
        )
        if not 0 <= self.trimmed_beta < 0.5:
            raise ConfigError(f"trimmed-beta={self.trimmed_beta}: must be in [0, 0.5)")
        check_choices(self)
        if self.item_aggregation == "rowwise" and self.strategy != "fedavg":
            raise ConfigError(
                f"item-aggregation='rowwise' with strategy={self.strategy!r}: row-wise "
                "item aggregation is a fedavg option; use strategy='fedavg'"
            )


@dataclass(frozen=True)
class RoundKnobs:
    """The training keys a server may override per round (:data:`~fedrec_flwr.protocol.KNOB_KEYS`).

    Parameters
    ----------
    proximal_mu : float
        FedProx ``mu``; 0 = off.
    private_layers : tuple of str
        Parsed ``private-layers`` prefixes (blanks dropped).
    finetune_epochs : int
        Fine-tuning epochs before evaluation; 0 = off.
    finetune_scope : str
        ``all`` or ``private``.
    """

    proximal_mu: float
    private_layers: tuple[str, ...]
    finetune_epochs: int
    finetune_scope: str


@documented
@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run: the run-level keys and the option groups.

    Each group's own docstring lists its keys; ``RunConfig.from_mapping`` reads
    them all from one flat kebab-case mapping and ``to_dict`` writes it back.
    """

    num_server_rounds: int = option(
        25, "Federated rounds (the centralised baseline trains this many epochs)."
    )
    output_dir: str = option(
        "",
        "Absolute folder for the results; empty = `$FEDREC_FLWR_HOME/runs/run-<id>` "
        "(`centralized-<model>-seed<seed>-<time>` for the baseline).",
    )
    item_catalogue: str = option(
        "",
        "Absolute path of the shared item catalogue on the *server* machine, for "
        "deployments whose SuperNodes read their own logs (node-config `data-file` + "
        "`item-catalogue`): the server then sizes the model from it and reads no "
        "interaction data. Empty = the server prepares `dataset`.",
        centralized=False,
    )
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    strategy: StrategyOptions = field(default_factory=StrategyOptions)
    privacy: PrivacyOptions = field(default_factory=PrivacyOptions)
    serving: ServingOptions = field(default_factory=ServingOptions)

    def __post_init__(self) -> None:
        check_numbers(self)
        _positive(self, "num_server_rounds")
        self._check_across_groups()

    def _check_across_groups(self) -> None:
        """Combinations of keys from different groups (each group checked its own)."""
        training, strategy = self.training, self.strategy
        candidates = 1 + self.data.num_eval_negatives
        if self.data.task == "rating":
            self._check_rating()
        elif training.embedding_l2 > 0 and not self.model.build(1, 2, seed=0).pairwise:
            raise ConfigError(
                f"embedding-l2={training.embedding_l2:g} with model={self.model.model!r}: "
                "the model trains its own objective, which has no embedding-l2 term; use "
                "weight-decay, or set embedding-l2=0"
            )
        elif max(training.top_k) > candidates:
            # HR@K is then 1 for every model: a number that measures nothing.
            raise ConfigError(
                f"top-k={_widths(training.top_k)}: cut-offs must be <= {candidates} "
                f"(1 held-out item + num-eval-negatives={self.data.num_eval_negatives}); "
                "lower top-k or raise num-eval-negatives"
            )
        if training.client_mode == "per-user":
            # DP-FedAvg averages users equally: its weight is the number of users.
            weight = "users" if self.privacy.dp == "user" else "interactions"
            clashes = {
                PROXIMAL_MU_KEY: training.proximal_mu != 0,
                PRIVATE_LAYERS_KEY: bool(training.private_layers.strip()),
                key_of("item_aggregation"): strategy.item_aggregation != "dense",
                key_of("weight_key"): strategy.weight_key != weight,
                # One Adam per user per round: a user's moments would be kept per user.
                key_of("optimizer_state"): training.optimizer_state != "fresh",
                # The per-user trainer (torch.func) has no penalty term.
                key_of("embedding_l2"): training.embedding_l2 != 0,
            }
            bad = [key for key, clash in clashes.items() if clash]
            if bad:
                raise ConfigError(
                    f"client-mode='per-user' supports plain FedAvg-style local training "
                    f"weighted by {weight}; reset {', '.join(bad)} to the default"
                    + (" (weight-key='users')" if weight == "users" else "")
                )
        self._check_privacy()
        self._check_serving()
        if (
            training.finetune_epochs > 0
            and training.finetune_scope == "private"
            and not training.private_layers.strip()
            and not _has_private_parameters(self.model)
        ):
            # Fine-tuning would train nothing and report the global model as personalised.
            raise ConfigError(
                f"finetune-epochs={training.finetune_epochs} with finetune-scope='private': "
                f"model={self.model.model!r} has no private parameters, so nothing would be "
                "fine-tuned; set finetune-scope='all' or finetune-epochs=0"
            )
        if training.finetune_unit == "user" and training.embedding_l2 > 0:
            raise ConfigError(
                f"embedding-l2={training.embedding_l2:g} with finetune-unit='user': each "
                "user's fine-tuning has no penalty term; set finetune-unit='client' or "
                "embedding-l2=0"
            )
        if training.finetunes_per_user and training.private_layers.strip():
            raise ConfigError(
                f"private-layers={training.private_layers!r} with per-user fine-tuning: "
                "personal layers belong to a client, not to each user; set "
                "finetune-unit='client' or private-layers=''"
            )

    def _check_rating(self) -> None:
        """The keys ``task='rating'`` cannot serve (it trains MSE with group clients)."""
        training, model = self.training, self.model.model
        if model not in RATING_MODELS:
            raise ConfigError(
                f"model={model!r} with task='rating': rating prediction is implemented for "
                f"{', '.join(RATING_MODELS)} ({model} trains its own ranking objective); "
                "pick one of them or set task='ranking'"
            )
        if training.negative_pool != "train":
            raise ConfigError(
                f"negative-pool={training.negative_pool!r} with task='rating': the rating task "
                "draws no negatives; leave negative-pool='train'"
            )
        # Ranking-only keys: the rating task draws no negatives and reports
        # RMSE/MAE, so a changed value would be ignored; refuse it instead.
        for key, got, unset, fix in (
            ("num-negatives", training.num_negatives, 4, "4"),
            ("num-eval-negatives", self.data.num_eval_negatives, 99, "99"),
            ("top-k", training.top_k, (10,), "'10'"),
        ):
            if got != unset:
                shown = ",".join(map(str, got)) if isinstance(got, tuple) else got
                raise ConfigError(
                    f"{key}={shown!r} with task='rating': a ranking key (the rating task "
                    f"samples no negatives and reports RMSE/MAE); leave {key}={fix}"
                )
        for key, value, default in (
            ("client-mode", training.client_mode, "group"),
            ("finetune-unit", training.finetune_unit, "client"),
        ):
            if value != default:
                raise ConfigError(
                    f"{key}={value!r} with task='rating': per-user training (train/peruser.py) "
                    f"is pairwise BCE with sampled negatives, not MSE; set {key}={default!r}"
                )

    def _check_serving(self) -> None:
        """Resume and warm start against the privacy keys (before any round).

        A resumed run must repeat what the first one would have done: the
        audit's records, node-level DP's releases and the SecAgg+ loop's state are
        checkpointed, so they resume (a checkpoint's ``secure-aggregation`` must
        be this run's: :func:`~fedrec_flwr.serving.checkpoint.model_keys`). A warm
        start (``init-from``) with node-level DP is refused: the earlier run's
        releases of the same data are not accounted.
        """
        dp = self.privacy.dp
        if self.serving.init_from.strip() and dp in ("node-client", "node-server"):
            raise ConfigError(
                f"init-from with dp={dp!r}: the earlier run's releases of the same data "
                "would not be accounted; start anew without init-from"
            )

    def _check_privacy(self) -> None:
        """The privacy keys against the training and strategy keys (before any round)."""
        privacy, training, strategy = self.privacy, self.training, self.strategy
        if privacy.dp == "user":
            if training.client_mode != "per-user" or strategy.weight_key != "users":
                raise ConfigError(
                    f"dp='user' (client-mode={training.client_mode!r}, weight-key="
                    f"{strategy.weight_key!r}): user-level DP clips each user's own update, "
                    "so it needs client-mode='per-user' and weight-key='users' (DP-FedAvg "
                    "weighs users equally)"
                )
        elif privacy.dp != "off":
            bad = [
                f"{key}={value!r}"
                for key, value, ok in (
                    ("strategy", strategy.strategy, strategy.strategy == "fedavg"),
                    ("fraction-train", strategy.fraction_train, strategy.fraction_train == 1),
                    ("weight-key", strategy.weight_key, strategy.weight_key == "interactions"),
                    (
                        "item-aggregation",
                        strategy.item_aggregation,
                        strategy.item_aggregation == "dense",
                    ),
                    # The pre-scaling K n_k / n needs n, the dataset's training
                    # interactions: the server must hold the data.
                    (key_of("item_catalogue"), self.item_catalogue, not self.item_catalogue),
                )
                if not ok
            ]
            if bad:
                raise ConfigError(
                    f"dp={privacy.dp!r} with {', '.join(bad)}: node-level DP with "
                    "accounting composes Flower's DP wrapper with FedAvg over every node "
                    "(strategy='fedavg', fraction-train=1, weight-key='interactions', "
                    "item-aggregation='dense', and item-catalogue='' so the server knows "
                    "the dataset's size)"
                )
        if privacy.secure_aggregation != "off":
            needs_replies = [
                f"{key}={value!r}"
                for key, value, ok in (
                    # The robust strategies need each reply; FedAvg and the server
                    # optimisers need only the mean (privacy/secagg.py: ServerStep).
                    (
                        "strategy",
                        strategy.strategy,
                        strategy.strategy in ("fedavg", "fedadam", "fedyogi", "fedavgm"),
                    ),
                    (
                        "item-aggregation",
                        strategy.item_aggregation,
                        strategy.item_aggregation == "dense",
                    ),
                    ("max-update-norm", strategy.max_update_norm, strategy.max_update_norm == 0),
                    # The audit attacks read each reply, which the server no longer sees.
                    ("privacy-audit", privacy.privacy_audit, not privacy.privacy_audit),
                    # Node-level DP adds its noise through Flower's Message-API
                    # wrappers, which the legacy SecAgg+ loop does not run.
                    ("dp", privacy.dp, privacy.dp in ("off", "user")),
                )
                if not ok
            ]
            if needs_replies:
                raise ConfigError(
                    f"secure-aggregation={privacy.secure_aggregation!r} with "
                    f"{', '.join(needs_replies)}: SecAgg+ shows the server only the sum of "
                    "the replies, and these need each reply or are not wired on its legacy "
                    "path; accepted: strategy='fedavg', 'fedadam', 'fedyogi' or 'fedavgm', "
                    "item-aggregation='dense', "
                    "max-update-norm=0, privacy-audit=false, dp='off' or 'user' (clipped "
                    "and noised on the nodes)"
                )
            if (
                self.item_catalogue
                and strategy.weight_key != "uniform"
                and strategy.max_client_weight == 0
            ):
                raise ConfigError(
                    f"secure-aggregation={privacy.secure_aggregation!r} with item-catalogue "
                    f"set and max-client-weight=0: SecAgg+ scales each reply by weight / max "
                    "weight, and the server holds no data to bound it; set max-client-weight "
                    "to the largest node's weight (or weight-key='uniform')"
                )
        local = privacy.ldp_clip > 0 or privacy.pseudo_items > 0
        if (local or privacy.dp_on) and strategy.item_aggregation == "rowwise":
            raise ConfigError(
                "item-aggregation='rowwise' with "
                + ("dp" if privacy.dp_on else "ldp-clip/pseudo-items")
                + ": row-wise replies carry the node's item-counts in the clear, which "
                "name its training items whatever the noise; use item-aggregation='dense'"
            )
        if privacy.dp_on and privacy.dp_target_epsilon > 0:
            self.noise_multiplier()  # an unmeetable target fails here, before any round

    def noise_multiplier(self) -> float:
        """The DP noise multiplier: ``dp-noise-multiplier``, or the one that meets
        ``dp-target-epsilon`` after ``num-server-rounds`` rounds at ``dp-delta``.

        Raises
        ------
        ConfigError
            If the target cannot be met.
        """
        from .privacy.accounting import noise_for_target

        privacy = self.privacy
        if privacy.dp_target_epsilon > 0:
            return noise_for_target(
                privacy.dp_target_epsilon, self.num_server_rounds, privacy.dp_delta
            )
        return privacy.dp_noise_multiplier

    def node_noise_multiplier(self) -> float:
        """The noise multiplier one node applies under ``dp='user'``.

        Without secure aggregation the server sees every reply, so each node
        adds the whole noise. Under SecAgg+ it sees only the sum of at least
        ``min-nodes`` replies, and Gaussian variances add up in that sum, so
        each node adds its share, ``noise_multiplier / sqrt(min-nodes)``
        (distributed DP): the sum carries at least the full noise.
        """
        sigma = self.noise_multiplier()
        if self.privacy.secure_aggregation != "off":
            return sigma / math.sqrt(self.strategy.min_nodes)
        return sigma

    @classmethod
    def settings(cls) -> Iterator[tuple[str | None, dataclasses.Field[Any]]]:
        """Every key's field, in table order, with its group's attribute name.

        Yields
        ------
        tuple
            ``(group, field)``: ``group`` is ``"data"``, ``"model"``, ... or None
            for a run-level key; ``field`` carries the key's
            :class:`~fedrec_flwr.settings.Setting`.
        """
        for f in dataclasses.fields(cls):
            group = _group_class(f)
            if group is None:
                yield None, f
            else:
                for member in dataclasses.fields(group):
                    yield f.name, member

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from kebab-case keys (a Flower ``run_config``).

        Absent keys take their defaults; unknown keys are ignored (a drop-in
        ServerApp may carry its own). Every value is coerced before any group
        is checked, so a value of the wrong type is reported first.

        Parameters
        ----------
        values : Mapping
            Run-config keys and values.

        Raises
        ------
        ConfigError
            One line naming the first bad key and what is accepted.
        """
        kwargs: dict[str | None, dict[str, Any]] = {}
        for group, f in cls.settings():
            key = key_of(f.name)
            if key in values:
                kwargs.setdefault(group, {})[f.name] = coerce(key, values[key], f.default)
        groups = {
            f.name: _group_class(f)(**kwargs.get(f.name, {}))
            for f in dataclasses.fields(cls)
            if _group_class(f) is not None
        }
        return cls(**kwargs.get(None, {}), **groups)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping of every key, as written into results files."""
        return {
            key_of(f.name): shown(getattr(self if group is None else getattr(self, group), f.name))
            for group, f in self.settings()
        }

    def round_knobs(self, message_config: Mapping[str, Any]) -> RoundKnobs:
        """The per-round training knobs: a message's value wins over the run config.

        A key of :data:`~fedrec_flwr.protocol.KNOB_KEYS` in ``message_config``
        is coerced and checked as the run config's own value would be (its
        group's checks and the checks across groups).

        Parameters
        ----------
        message_config : Mapping
            The config a server sent with this round's message.

        Raises
        ------
        ConfigError
            A knob sent by the server is of the wrong type or out of range.
        """
        training = self.training
        by_key = {key_of(f.name): f for f in dataclasses.fields(TrainingOptions)}
        overrides = {
            by_key[key].name: coerce(key, message_config[key], by_key[key].default)
            for key in KNOB_KEYS
            if key in message_config
        }
        if overrides:
            training = dataclasses.replace(training, **overrides)
            dataclasses.replace(self, training=training)  # the checks across groups
        return RoundKnobs(
            proximal_mu=training.proximal_mu,
            private_layers=training.private_layer_prefixes,
            finetune_epochs=training.finetune_epochs,
            finetune_scope=training.finetune_scope,
        )


def _group_class(f: dataclasses.Field[Any]) -> Any:
    """The option-group class of a :class:`RunConfig` group field, None for a key."""
    factory = f.default_factory
    return factory if isinstance(factory, type) else None


def _toml_value(value: Any) -> str:
    value = shown(value)
    return json.dumps(value) if isinstance(value, (str, bool)) else repr(value)


def _group_comment(group: str | None) -> str:
    if group is None:
        return "# run (RunConfig): rounds, results folder, the server's item catalogue"
    cls = _group_class(RunConfig.__dataclass_fields__[group])
    summary = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
    return f"# {group} ({cls.__name__}): {summary}"


def toml_table() -> str:
    """The ``[tool.flwr.app.config]`` table of ``pyproject.toml``: every key and
    default in table order, a comment line before each group (a test checks
    that the file holds exactly this text)."""
    lines = ["[tool.flwr.app.config]", "# Every key is documented in fedrec_flwr/config.py."]
    current: object = ()
    for group, f in RunConfig.settings():
        if group != current:
            current = group
            lines.append(_group_comment(group))
        lines.append(f"{key_of(f.name)} = {_toml_value(f.default)}")
    return "\n".join(lines) + "\n"


def _markdown_default(default: Any) -> str:
    if isinstance(default, tuple) or default == "":
        return f'`"{shown(default)}"`'
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`" if isinstance(default, str) else repr(default)


def markdown_table() -> str:
    """The ``| key | default | meaning |`` table of README.md, one row per key in
    table order (a test checks that the README holds exactly this text)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for _, f in RunConfig.settings():
        lines.append(f"| `{key_of(f.name)}` | {_markdown_default(f.default)} | {describe(f)} |")
    return "\n".join(lines) + "\n"


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedrec_flwr.config",
        description="Print the run-config tables generated from the option groups.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--markdown", action="store_true", help="README.md's key table")
    which.add_argument("--toml", action="store_true", help="pyproject.toml's config table")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown_table() if args.markdown else toml_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
