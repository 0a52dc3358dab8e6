"""Run configuration: parsed once, validated, frozen.

The keys are those of ``[tool.flwr.app.config]`` in ``pyproject.toml``; the
ServerApp, the ClientApp and the centralised baseline all read them through
:meth:`RunConfig.from_mapping`, so a bad value fails the same way everywhere with
a one-line error naming the key and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .datasets.options import DataOptions
from .datasets.prepare import DATASETS, NEGATIVE_POOLS
from .errors import ConfigError
from .models import ARCHITECTURES
from .protocol import PRIVATE_LAYERS_KEY, PROXIMAL_MU_KEY
from .strategies.registry import STRATEGIES
from .threads import MAX_THREADS

__all__ = [
    "CLIENT_MODES",
    "FINETUNE_SCOPES",
    "ITEM_AGGREGATIONS",
    "LEAKY_POOL_WARNING",
    "WEIGHT_KEYS",
    "ConfigError",
    "RunConfig",
]

WEIGHT_KEYS = ("interactions", "users", "uniform")
ITEM_AGGREGATIONS = ("dense", "rowwise")
FINETUNE_SCOPES = ("all", "private")
CLIENT_MODES = ("group", "per-user")
FINETUNE_UNITS = ("client", "user")
LEAKY_POOL_WARNING = (
    "negative-pool='history' excludes held-out validation and test items from "
    "training negatives: the held-out item becomes the one item never drawn as a "
    "negative, which leaks it. Use only to reproduce published numbers; the honest "
    "protocol is negative-pool='train'."
)


# Flower carries run-config integers as 64-bit; larger ones overflow in torch too.
MAX_INT = 2**63 - 1
# Embedding/tower widths and training negatives per positive: far above any NCF
# setting, low enough that torch allocates instead of overflowing its size type.
MAX_WIDTH = 2**16


def _int_list(key: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"{key}={text!r}: expected comma-separated positive integers, e.g. '64,32,16'"
        ) from None
    if not values or min(values) < 1:
        raise ConfigError(f"{key}={text!r}: expected comma-separated positive integers")
    return values


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a run, with its run-config key in brackets.

    Parameters
    ----------
    num_server_rounds : int (default: 25) [num-server-rounds]
        Federated rounds (the centralised baseline trains this many epochs).
    model : str (default: "neumf") [model]
        ``gmf``, ``mlp`` or ``neumf``.
    factors : int (default: 16) [factors]
        GMF embedding size.
    mlp_layers : tuple of int (default: (64, 32, 16)) [mlp-layers, "64,32,16"]
        MLP tower widths; the first is the concatenated user+item embedding.
    learning_rate : float (default: 0.001) [learning-rate]
        Adam learning rate.
    weight_decay : float (default: 0.0) [weight-decay]
        Adam L2 penalty.
    local_epochs : int (default: 2) [local-epochs]
        Passes over a client's data per round.
    batch_size : int (default: 256) [batch-size]
        Mini-batch size.
    num_negatives : int (default: 4) [num-negatives]
        Training negatives per positive.
    num_eval_negatives : int (default: 99) [num-eval-negatives]
        Negatives ranked against each held-out item.
    top_k : tuple of int (default: (10,)) [top-k, "10" or "5,10,20"]
        Cut-offs for HR@K/NDCG@K; 10 is always included.
    seed : int (default: 42) [seed]
        Non-negative; seeds initialisation, partitions, negatives and shuffling.
    dataset : str (default: "ml-100k") [dataset]
        ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``, ``ml-32m``,
        ``ml-latest-small``, ``atomic`` (RecBole files) or ``log`` (CSV/TSV/
        Parquet); see datasets/README.md.
    data_dir : str (default: "") [data-dir]
        Absolute directory with the dataset files (for ``atomic`` and ``log``:
        the file); empty = download into the cache (``$FEDREC_FLWR_HOME/data``).
    output_dir : str (default: "") [output-dir]
        Absolute directory for results; empty = ``$FEDREC_FLWR_HOME/runs/<run>``.
    strategy : str (default: "fedavg") [strategy]
        Server strategy name.
    fraction_train : float (default: 1.0) [fraction-train]
        Fraction of clients trained each round, in (0, 1]. Below 1 the sample is
        drawn from the clients' partition ids and ``seed`` (reproducible).
    min_nodes : int (default: 2) [min-nodes]
        Nodes that must be connected before a round starts, and the least
        trained and evaluated per round. A deployment that must outlive losing
        nodes sets it below the number of SuperNodes.
    implicit_threshold : float (default: 0.0) [implicit-threshold]
        Interactions rated below it are dropped; 0 keeps all as positives.
    k_core : int (default: 0) [k-core]
        Repeatedly drop users and items with fewer interactions (0 = off).
    duplicates : str (default: "keep-latest") [duplicates]
        Repeated (user, item) pairs: keep-latest, keep-first, keep-all, error.
    validation : str (default: "strict") [validation]
        ``strict``: the first bad row is an error naming file:line;
        ``lenient``: bad rows are dropped and counted per kind.
    split : str (default: "leave-one-out") [split]
        Evaluation split (temporal leave-one-out with validation).
    partitioner : str (default: "random") [partitioner]
        User groups: random, natural, attribute, hash, range, dirichlet,
        power-law (see datasets/README.md).
    partition_by : str (default: "occupation") [partition-by]
        Users-table column for ``attribute``: age-bucket, gender, occupation,
        zip-prefix, or any custom column.
    dirichlet_alpha : float (default: 0.5) [dirichlet-alpha]
        Concentration of ``dirichlet`` (small = skewed).
    power_law_exponent : float (default: 1.0) [power-law-exponent]
        Size exponent of ``power-law`` (0 = equal).
    log_columns : str (default: "") [log-columns]
        For ``dataset = "log"`` (a CSV/TSV/Parquet file at data-dir): the column
        mapping, e.g. ``"user=customer,item=sku,timestamp=ts"``.
    weight_key : str (default: "interactions") [weight-key]
        FedAvg weight ``n_k``: ``interactions`` (training interactions),
        ``users`` (users in the group) or ``uniform`` (1 per client).
    item_aggregation : str (default: "dense") [item-aggregation]
        ``rowwise`` averages each item-embedding row only over the clients that
        trained that item, weighted by their counts for it (clients send
        per-item counts: which items a group used is revealed to the server;
        fedavg only). ``dense`` averages whole arrays.
    proximal_mu : float (default: 0.0) [proximal-mu]
        FedProx term ``mu/2 ||w - w_global||^2`` on the shared parameters in
        local training; 0 = off.
    finetune_epochs : int (default: 0) [finetune-epochs]
        Personalised evaluation: before evaluating, each client fine-tunes the
        global model on its own data for this many epochs; 0 = off. With
        ``client-mode=per-user`` each *user* fine-tunes its own copy alone.
    private_layers : str (default: "") [private-layers]
        Comma-separated shared-parameter prefixes (e.g. ``"output"``) that each
        client keeps private across rounds (FedPer-style personal layers).
    finetune_scope : str (default: "private") [finetune-scope]
        What fine-tuning trains: ``all`` parameters, or only the ``private``
        ones (user embeddings and ``private-layers``).
    finetune_unit : str (default: "client") [finetune-unit]
        Who fine-tunes a copy: the ``client`` (its whole user group together)
        or each ``user`` alone, on its own interactions only, as a one-user
        client would (PFedRec-style personalisation inside a group node).
        ``client-mode=per-user`` always fine-tunes per user.
    finetune_learning_rate : float (default: 0.0) [finetune-learning-rate]
        Adam's learning rate for fine-tuning; 0 = ``learning-rate``.
    max_client_weight : float (default: 0.0) [max-client-weight]
        Replies claiming a larger weight are dropped; 0 = the dataset's size
        (training interactions, or users with ``weight-key=users``).
    server_learning_rate : float (default: 0.0) [server-learning-rate]
        Server step for fedadam/fedyogi (``eta``) and fedavgm; 0 = Flower's
        default (0.1, 0.01, 1.0).
    server_momentum : float (default: 0.5) [server-momentum]
        fedavgm server momentum (0.9 diverged on ML-100K, see strategies/README.md).
    trimmed_beta : float (default: 0.2) [trimmed-beta]
        fedtrimmedavg: fraction cut at each end, in [0, 0.5).
    num_malicious_nodes : int (default: 0) [num-malicious-nodes]
        krum: assumed number of Byzantine clients ``f``.
    client_mode : str (default: "group") [client-mode]
        ``group``: a node trains its user group as one client. ``per-user``:
        every user of the group trains its own update from the global model
        and the node returns their interaction-weighted mean, so FedAvg over
        nodes equals FedAvg with one user per client (see
        :mod:`fedrec_flwr.train.peruser`) at the cost of one message per group.
    negative_pool : str (default: "train") [negative-pool]
        Items excluded from a user's *training* negatives: ``train`` (its
        training interactions; the honest protocol) or ``history`` (also its
        held-out items). ``history`` leaks the answer and exists only to
        reproduce published federated code; a warning is logged.
    item_catalogue : str (default: "") [item-catalogue]
        Absolute path of the shared item catalogue on the *server* machine, for
        deployments whose SuperNodes read their own logs (node-config
        ``data-file`` + ``item-catalogue``): the server then sizes the model from
        it and reads no interaction data. Empty = the server prepares ``dataset``.
    max_update_norm : float (default: 0.0) [max-update-norm]
        Training replies whose update ``||w_k - w||_2`` (over every shared
        array, against the global model sent) exceeds this are dropped with a
        reason; 0 = off (exact FedAvg accepts any finite update).
    node_weight_caps : str (default: "") [node-weight-caps]
        Absolute path of a TOML file, on the server, declaring each node's
        largest weight by ``partition-id`` (tables ``[num-examples]`` and
        ``[num-users]``, e.g. ``0 = 9800``); replies claiming more are dropped.
    weight_clip_multiple : float (default: 4.0) [weight-clip-multiple]
        A reply whose weight has no declared or data-derived cap is clipped to
        this multiple of the round's median weight (logged and recorded), so no
        single node can dominate the aggregate; 0 = off.
    num_threads : int (default: 0) [num-threads]
        torch intra-op threads per process for training and evaluation, at most
        1024; recorded in ``results.json``. 0 = automatic: a federated client
        uses 1 (simulation runs several clients side by side); the centralised
        baseline uses 1 when fewer than 4 CPUs are available to the process
        (affinity and cgroup quota), else one per CPU. One thread was 2-20x
        faster than two on a shared 2-CPU machine (:mod:`fedrec_flwr.threads`).
        The count does not change the results (same bits with 1 and 2 threads).
    """

    num_server_rounds: int = 25
    model: str = "neumf"
    factors: int = 16
    mlp_layers: tuple[int, ...] = (64, 32, 16)
    learning_rate: float = 0.001
    weight_decay: float = 0.0
    local_epochs: int = 2
    batch_size: int = 256
    num_negatives: int = 4
    num_eval_negatives: int = 99
    top_k: tuple[int, ...] = field(default=(10,))
    seed: int = 42
    dataset: str = "ml-100k"
    data_dir: str = ""
    output_dir: str = ""
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    min_nodes: int = 2
    implicit_threshold: float = 0.0
    k_core: int = 0
    duplicates: str = "keep-latest"
    validation: str = "strict"
    split: str = "leave-one-out"
    partitioner: str = "random"
    partition_by: str = "occupation"
    dirichlet_alpha: float = 0.5
    power_law_exponent: float = 1.0
    log_columns: str = ""
    # issue 4 (strategies): keep these together, appended last.
    weight_key: str = "interactions"
    item_aggregation: str = "dense"
    proximal_mu: float = 0.0
    finetune_epochs: int = 0
    private_layers: str = ""
    finetune_scope: str = "private"
    max_client_weight: float = 0.0
    server_learning_rate: float = 0.0
    server_momentum: float = 0.5
    trimmed_beta: float = 0.2
    num_malicious_nodes: int = 0
    # issue 6 (benchmarks): per-user clients at group cost; the leaky pool on request.
    client_mode: str = "group"
    negative_pool: str = "train"
    item_catalogue: str = ""
    finetune_unit: str = "client"
    finetune_learning_rate: float = 0.0
    max_update_norm: float = 0.0
    node_weight_caps: str = ""
    weight_clip_multiple: float = 4.0
    num_threads: int = 0

    def __post_init__(self) -> None:
        self._check_number_ranges()
        positive = (
            "num_server_rounds",
            "factors",
            "local_epochs",
            "batch_size",
            "num_negatives",
            "num_eval_negatives",
            "min_nodes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_key(name)}={getattr(self, name)}: must be >= 1")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning-rate={self.learning_rate}: must be > 0")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight-decay={self.weight_decay}: must be >= 0")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train={self.fraction_train}: must be in (0, 1]")
        self._check_strategy_knobs()
        choices = {
            "model": ARCHITECTURES,
            "dataset": DATASETS,
            "strategy": STRATEGIES,
            "weight_key": WEIGHT_KEYS,
            "item_aggregation": ITEM_AGGREGATIONS,
            "finetune_scope": FINETUNE_SCOPES,
            "client_mode": CLIENT_MODES,
            "finetune_unit": FINETUNE_UNITS,
            "negative_pool": NEGATIVE_POOLS,
        }
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ConfigError(
                    f"{_key(name)}={getattr(self, name)!r}: unknown; "
                    f"accepted: {', '.join(accepted)}"
                )
        if self.model != "gmf" and self.mlp_layers[0] % 2:
            raise ConfigError(
                f"mlp-layers={','.join(map(str, self.mlp_layers))}: the first width must "
                "be even (user and item embeddings concatenated)"
            )
        try:
            self.data_options()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_number_ranges(self) -> None:
        """Bounds that no key may leave, checked first: otherwise such a value
        passes here and fails deep in numpy or torch with a message naming no key."""
        for f in dataclasses.fields(self):
            key, value = _key(f.name), getattr(self, f.name)
            if isinstance(f.default, float) and not math.isfinite(value):
                raise ConfigError(f"{key}={value}: must be a finite number")
            values = value if isinstance(f.default, tuple) else (value,)
            if isinstance(f.default, (int, tuple)) and max(values) > MAX_INT:
                shown = ",".join(map(str, values))
                raise ConfigError(
                    f"{key}={shown}: must be at most {MAX_INT} (run-config integers are 64-bit)"
                )
        if self.seed < 0:
            # numpy's SeedSequence would say only "expected non-negative integer".
            raise ConfigError(f"seed={self.seed}: must be a non-negative integer")
        for name in ("factors", "num_negatives"):
            if getattr(self, name) > MAX_WIDTH:
                raise ConfigError(f"{_key(name)}={getattr(self, name)}: must be <= {MAX_WIDTH}")
        if max(self.mlp_layers) > MAX_WIDTH:
            raise ConfigError(
                f"mlp-layers={','.join(map(str, self.mlp_layers))}: widths must be <= {MAX_WIDTH}"
            )
        if self.num_threads > MAX_THREADS:
            raise ConfigError(
                f"num-threads={self.num_threads}: must be <= {MAX_THREADS} (0 = automatic)"
            )
        candidates = 1 + self.num_eval_negatives
        if max(self.top_k) > candidates and self.num_eval_negatives >= 1:
            # HR@K is then 1 for every model: a number that measures nothing.
            raise ConfigError(
                f"top-k={','.join(map(str, self.top_k))}: cut-offs must be <= {candidates} "
                f"(1 held-out item + num-eval-negatives={self.num_eval_negatives}); "
                "lower top-k or raise num-eval-negatives"
            )

    def data_options(self) -> DataOptions:
        """The data-related fields, as the datasets package takes them."""
        names = {f.name for f in dataclasses.fields(DataOptions)}
        return DataOptions(**{n: getattr(self, n) for n in names})

    def _check_strategy_knobs(self) -> None:
        nonneg = (
            "proximal_mu",
            "finetune_epochs",
            "max_client_weight",
            "server_learning_rate",
            "finetune_learning_rate",
            "server_momentum",
            "num_malicious_nodes",
            "max_update_norm",
            "weight_clip_multiple",
            "num_threads",
        )
        for name in nonneg:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{_key(name)}={value}: must be a finite number >= 0")
        if not 0 <= self.trimmed_beta < 0.5:
            raise ConfigError(f"trimmed-beta={self.trimmed_beta}: must be in [0, 0.5)")
        if self.client_mode == "per-user":
            clashes = {
                PROXIMAL_MU_KEY: self.proximal_mu != 0,
                PRIVATE_LAYERS_KEY: bool(self.private_layers.strip()),
                "item-aggregation": self.item_aggregation != "dense",
                "weight-key": self.weight_key != "interactions",
            }
            bad = [key for key, clash in clashes.items() if clash]
            if bad:
                raise ConfigError(
                    f"client-mode='per-user' supports plain FedAvg-style local training "
                    f"weighted by interactions; reset {', '.join(bad)} to the default"
                )
        if self.finetunes_per_user and self.private_layers.strip():
            raise ConfigError(
                f"private-layers={self.private_layers!r} with per-user fine-tuning: personal "
                "layers belong to a client, not to each user; set finetune-unit='client' "
                "or private-layers=''"
            )
        if self.item_aggregation == "rowwise" and self.strategy != "fedavg":
            raise ConfigError(
                f"item-aggregation='rowwise' with strategy={self.strategy!r}: row-wise "
                "item aggregation is a fedavg option; use strategy='fedavg'"
            )

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

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from kebab-case keys (a Flower ``run_config``); absent keys
        take their defaults, unknown keys are ignored (a drop-in ServerApp may
        carry its own)."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _key(f.name)
            if key not in values:
                continue
            kwargs[f.name] = _coerce(key, values[key], f.default)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, as written into results files."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[_key(f.name)] = ",".join(map(str, value)) if isinstance(value, tuple) else value
        return out

    @property
    def ks(self) -> tuple[int, ...]:
        """Cut-offs to report, always including 10."""
        return tuple(sorted(set(self.top_k) | {10}))


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        return _int_list(key, value)
    if isinstance(default, bool) or isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected {type(default).__name__}")
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            return float(value)
        except OverflowError:  # an int beyond float range
            raise ConfigError(f"{key}={value}: must be a finite number") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: expected a string")
    return value.strip()
