"""The client-server protocol: every message, record, node-config and state key.

Each key is defined here once; the client, the server, the strategies and the
metering all import it from here, so the two sides cannot drift apart. A test
(``tests/test_protocol.py``) checks that no other module of the package spells
one of these keys as a string literal.

Message layout (Flower's Message API, as ``flwr.serverapp.strategy`` builds it):

- server -> client: ``{ARRAYS_RECORD: ArrayRecord, CONFIG_RECORD: ConfigRecord}``;
  the config carries :data:`SERVER_ROUND_KEY` and any per-round strategy knob
  (:data:`KNOB_KEYS`), which wins over the run config.
- client -> server, train: ``{ARRAYS_RECORD: ArrayRecord, METRICS_RECORD:
  MetricRecord}`` with the weight (:data:`NUM_EXAMPLES_KEY`), the node's identity
  (:func:`node_metrics`), :data:`TRAIN_LOSS_KEY` and :data:`COMPUTE_SECONDS_KEY`.
- client -> server, evaluate: ``{METRICS_RECORD: MetricRecord}`` with
  :data:`LOSS_KEY` (validation BCE), the node's identity, and per-user metric
  sums ``{prefix}{part}-{metric}@K-sum`` (:func:`sum_key`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ARRAYS_RECORD",
    "COMPUTE_SECONDS_KEY",
    "CONFIG_RECORD",
    "COUNT_KEYS",
    "DATA_FILE_KEY",
    "DELIVER_ACTION",
    "DELIVER_ROUND_KEY",
    "DP_NOISE_SEED_KEY",
    "FINETUNE_EPOCHS_KEY",
    "FINETUNE_SCOPE_KEY",
    "FROM_TRAIN_PREFIX",
    "GLOBAL_PREFIX",
    "ITEM_CATALOGUE_KEY",
    "ITEM_COUNTS_KEY",
    "KEEP_ROUNDS_KEY",
    "KNOB_KEYS",
    "LOSS_KEY",
    "METRICS_RECORD",
    "NODE_DP_SCALE_KEY",
    "NUM_EXAMPLES_KEY",
    "NUM_PARTITIONS_KEY",
    "NUM_USERS_KEY",
    "OPTIMIZER_STATE_KEY",
    "PARTITION_ID_KEY",
    "PERSONAL_STATE_KEY",
    "PRIVATE_LAYERS_KEY",
    "PRIVATE_STATE_KEY",
    "PROXIMAL_MU_KEY",
    "SERVER_ROUND_KEY",
    "SERVE_TARGET",
    "STATE_DIR_KEY",
    "STATE_RUN_KEY",
    "SUM_SUFFIX",
    "TEST_PART",
    "TRAIN_LOSS_KEY",
    "USERS_SERVED_KEY",
    "USER_IDS_STATE_KEY",
    "VAL_PART",
    "WARM_ROUND_KEY",
    "WARM_RUN_KEY",
    "WARM_STATE_KEY",
    "WARM_USERS_KEY",
    "legacy_rounds",
    "node_metrics",
    "prefixed",
    "rounds_of",
    "server_round",
    "sum_key",
]

# Record names inside a Message's RecordDict (Flower's strategies' defaults).
ARRAYS_RECORD = "arrays"
METRICS_RECORD = "metrics"
CONFIG_RECORD = "config"

# Server -> client config.
SERVER_ROUND_KEY = "server-round"  # set by every Flower strategy
PROXIMAL_MU_KEY = "proximal-mu"
PRIVATE_LAYERS_KEY = "private-layers"
FINETUNE_EPOCHS_KEY = "finetune-epochs"
FINETUNE_SCOPE_KEY = "finetune-scope"
#: True asks ``fit`` for ``item-counts`` too (row-wise item aggregation).
ITEM_COUNTS_KEY = "item-counts"
#: Strategy knobs a server may send per round; the message's value wins over
#: the run config's key of the same name.
KNOB_KEYS = (PROXIMAL_MU_KEY, PRIVATE_LAYERS_KEY, FINETUNE_EPOCHS_KEY, FINETUNE_SCOPE_KEY)
#: ``dp='node-client'``: ``K / n`` (nodes over the federation's training
#: interactions); a node scales its update by this times its own ``num-examples``
#: before Flower's ``fixedclipping_mod`` clips it (:mod:`fedrec_flwr.privacy.nodedp`).
NODE_DP_SCALE_KEY = "node-dp-scale"

#: The run lineage a node files its private state under (``run-<16 hex>-<8 hex>``;
#: a resumed run keeps its checkpoint's), so runs never mix in a node's store.
STATE_RUN_KEY = "state-run"
#: Rounds whose private state a node must keep: the last checkpointed round
#: (a resume restarts after it) and the validation-selected round (delivery);
#: a list, or in a legacy (SecAgg+) config, which holds scalars only, the same
#: rounds comma-separated in one string (:func:`legacy_rounds`, :func:`rounds_of`).
KEEP_ROUNDS_KEY = "keep-rounds"
#: Warm start (``init-from``): the earlier run's lineage and delivered round,
#: whose rows a node copies for the users it still has.
WARM_RUN_KEY = "warm-run"
WARM_ROUND_KEY = "warm-round"
#: ``query.deliver``: the server sends the delivered model after the last
#: round; the config names the round whose private state goes with it.
DELIVER_ACTION = "deliver"
DELIVER_ROUND_KEY = "deliver-round"

# Client -> server metrics.
NUM_EXAMPLES_KEY = "num-examples"  # FedAvg weight n_k: training interactions
NUM_USERS_KEY = "num-users"  # users of the group (evaluation weight)
#: A node's partition id, also its node-config key; the server orders replies by
#: it, so aggregation does not depend on arrival order.
PARTITION_ID_KEY = "partition-id"
#: Sent beside partition-id, so the server can check every node cut the same groups.
NUM_PARTITIONS_KEY = "num-partitions"
TRAIN_LOSS_KEY = "train-loss"
LOSS_KEY = "loss"  # evaluate: validation BCE (the NumPyClient convention)
COMPUTE_SECONDS_KEY = "compute-seconds"
#: Delivery reply: how many users got recommendations written.
USERS_SERVED_KEY = "users-served"
SUM_SUFFIX = "-sum"
VAL_PART = "val"
TEST_PART = "test"
#: What a sequence model scores recommendations from after training (besides the parts).
SERVE_TARGET = "serve"
#: Personalised evaluation: ``global-val-*``/``global-test-*`` are the global model's.
GLOBAL_PREFIX = "global-"
#: A sequence model's test metrics with the test item scored from the training
#: items only (``test-from-train-hr@10``), next to its ``test-input`` rule's.
FROM_TRAIN_PREFIX = "from-train-"
#: Client sizes, not metrics: never averaged into results.
COUNT_KEYS = frozenset({NUM_EXAMPLES_KEY, NUM_USERS_KEY, NUM_PARTITIONS_KEY})

# Node config (besides partition-id and num-partitions, which Flower sets in simulation).
DATA_FILE_KEY = "data-file"
ITEM_CATALOGUE_KEY = "item-catalogue"
#: A node's secret seed for its DP/LDP noise: the server must not be able to
#: recompute the noise (it could subtract it). Without it the node derives the
#: noise from the run seed, which reproduces a simulation but protects nothing.
DP_NOISE_SEED_KEY = "dp-noise-seed"
#: The node's private store folder (default ``$FEDREC_FLWR_HOME/nodes``).
STATE_DIR_KEY = "state-dir"

# context.state records: what a node keeps between rounds and never sends.
PRIVATE_STATE_KEY = "fedrec-private-arrays"
PERSONAL_STATE_KEY = "fedrec-personal-layers"
#: ``optimizer-state='keep'``: the node's Adam moments and step count (per parameter name).
OPTIMIZER_STATE_KEY = "fedrec-optimizer-state"
#: The raw user id of each private row (the store keeps it for warm starts).
USER_IDS_STATE_KEY = "fedrec-user-ids"
#: Warm start: the earlier run's private rows and the raw user ids they belong to.
WARM_STATE_KEY = "fedrec-warm-arrays"
WARM_USERS_KEY = "fedrec-warm-users"


def node_metrics(partition_id: int, num_partitions: int, num_users: int) -> dict[str, int]:
    """The identity every reply carries: partition, partition count, users."""
    return {
        PARTITION_ID_KEY: int(partition_id),
        NUM_PARTITIONS_KEY: int(num_partitions),
        NUM_USERS_KEY: int(num_users),
    }


def sum_key(part: str, metric: str, prefix: str = "") -> str:
    """``{prefix}{part}-{metric}-sum``, e.g. ``val-hr@10-sum``."""
    return f"{prefix}{part}-{metric}{SUM_SUFFIX}"


def prefixed(metrics: Mapping[str, Any], part: str, prefix: str = "") -> dict[str, float]:
    """Aggregated metrics of one part, prefix stripped: ``{"hr@10": ...}``."""
    head = f"{prefix}{part}-"
    return {k[len(head) :]: float(v) for k, v in metrics.items() if k.startswith(head)}


def server_round(config: Mapping[str, Any], default: int = 0) -> int:
    """The round number a message's config carries (``default`` if none)."""
    value = config.get(SERVER_ROUND_KEY, default)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def legacy_rounds(rounds: Sequence[int]) -> str:
    """``rounds`` as one scalar a legacy config can carry: ``"2,5"``."""
    return ",".join(str(int(r)) for r in rounds)


def rounds_of(value: object) -> list[int]:
    """The rounds a :data:`KEEP_ROUNDS_KEY` value names: a list of ints, one int,
    or a :func:`legacy_rounds` string; [] for anything else."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return [int(p) for p in parts] if all(p.isdigit() for p in parts) else []
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []
