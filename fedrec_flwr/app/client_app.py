"""Flower ClientApp: one SuperNode = one user group.

``app`` (Message API, works with ``flwr.serverapp.strategy`` strategies) and
``legacy_app`` (``ClientApp(client_fn=...)``, works with Flower's legacy
strategies) both delegate to the same :class:`~fedrec_flwr.client.numpy_client.NCFClient`.

``app`` (the one the FAB names) serves both run modes: with
``secure-aggregation=secaggplus`` in the run config its dispatch mod hands train
and evaluate messages to ``secagg_app`` (``legacy_app``'s client with
:func:`secagg_mods`), which answers Flower's legacy SecAgg+ workflow.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.client import Client
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from ..client.adapter import numpy_client_app
from ..client.numpy_client import NCFClient
from ..config import ConfigError, RunConfig
from ..datasets import load_client_data
from ..datasets.local import load_local_client_data
from ..privacy.nodedp import client_mods
from ..privacy.secagg import mode_dispatch_mod, secure_aggregation_mods
from ..protocol import (
    COMPUTE_SECONDS_KEY,
    DATA_FILE_KEY,
    DELIVER_ACTION,
    DELIVER_ROUND_KEY,
    DP_NOISE_SEED_KEY,
    ITEM_CATALOGUE_KEY,
    METRICS_RECORD,
    NUM_PARTITIONS_KEY,
    NUM_USERS_KEY,
    PARTITION_ID_KEY,
    STATE_DIR_KEY,
    STATE_RUN_KEY,
    USERS_SERVED_KEY,
)
from ..serving.deliver import recommendations_frame, write_delivery
from ..serving.mod import node_store_mod
from ..serving.store import node_folder, state_root

__all__ = [
    "app",
    "client_fn",
    "deliver_recommendations",
    "legacy_app",
    "partition_query",
    "secagg_app",
    "secagg_mods",
]


def _node_int(context: Context, key: str) -> int:
    value = context.node_config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            f"node-config {key}={value!r}: expected an integer. In simulation Flower sets "
            "it; a SuperNode needs --node-config 'partition-id=0 num-partitions=2'"
        )
    return value


def _node_str(context: Context, key: str) -> str:
    value = context.node_config.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"node-config {key}={value!r}: expected a path string")
    return value.strip()


def client_fn(context: Context) -> NCFClient:
    """Build the client for this node's user group from the run and node config.

    A SuperNode that holds its own users' log names it with node-config
    ``data-file`` and the shared item catalogue with ``item-catalogue``;
    otherwise the node's group is cut from the run-config dataset by the
    run-config partitioner.
    """
    cfg = RunConfig.from_mapping(context.run_config)
    partition_id = _node_int(context, PARTITION_ID_KEY)
    num_partitions = _node_int(context, NUM_PARTITIONS_KEY)
    data_file = _node_str(context, DATA_FILE_KEY)
    catalogue = _node_str(context, ITEM_CATALOGUE_KEY)
    if data_file or catalogue:
        if not (data_file and catalogue):
            raise ConfigError(
                "node-config: data-file and item-catalogue go together; e.g. --node-config "
                "\"partition-id=0 num-partitions=2 data-file='/data/site0.csv' "
                "item-catalogue='/data/catalogue.txt'\""
            )
        data = load_local_client_data(data_file, catalogue, cfg.data, partition_id, num_partitions)
    else:
        data = load_client_data(cfg.data, partition_id, num_partitions)
    seed = context.node_config.get(DP_NOISE_SEED_KEY)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ConfigError(
            f"node-config {DP_NOISE_SEED_KEY}={seed!r}: expected an integer >= 0 (the node's "
            "secret seed for DP noise)"
        )
    return NCFClient(data, cfg, context.state, noise_seed=seed)


def partition_query(msg: Message, context: Context) -> Message:
    """Answer a server's ``query`` with this node's ``partition-id``/``num-partitions``.

    The server needs partition ids to sample clients reproducibly (Flower's node
    ids are random per run); only these two node-config integers are sent.
    """
    record = MetricRecord()
    for key in (PARTITION_ID_KEY, NUM_PARTITIONS_KEY):
        value = context.node_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            record[key] = value
    return Message(RecordDict({METRICS_RECORD: record}), reply_to=msg)


def deliver_recommendations(msg: Message, context: Context) -> Message:
    """Write this node's users' top-k of the delivered model into its own folder.

    The store mod has put the delivered round's private rows into
    ``context.state``; the reply carries only how many users were served.
    """
    started = time.perf_counter()
    client = client_fn(context)
    (arrays,) = msg.content.array_records.values()
    names = client.array_names()
    client.set_shared([arrays[n].numpy() for n in names])
    serving = client.config.serving
    items, scores = client.recommend(serving.recommend_k, exclude=serving.recommend_exclude)
    data = client.data
    frame = recommendations_frame(client.user_ids(), client.item_ids(), items, scores)
    (config,) = msg.content.config_records.values()
    lineage = str(config[STATE_RUN_KEY])
    folder = node_folder(
        state_root(context.node_config.get(STATE_DIR_KEY)), lineage, data.partition_id
    )
    write_delivery(
        folder,
        frame,
        {n: arrays[n].numpy() for n in names},
        {
            "run-config": dict(context.run_config),
            "node-config": dict(context.node_config),
            STATE_RUN_KEY: lineage,
            DELIVER_ROUND_KEY: int(str(config[DELIVER_ROUND_KEY])),
            NUM_USERS_KEY: data.num_users,
        },
    )
    record = MetricRecord(
        {
            USERS_SERVED_KEY: int(data.num_users),
            COMPUTE_SECONDS_KEY: time.perf_counter() - started,
        }
    )
    return Message(RecordDict({METRICS_RECORD: record}), reply_to=msg)


def secagg_mods() -> list[Mod]:
    """Client mods of ``secure-aggregation=secaggplus``, outermost first (see
    :func:`~fedrec_flwr.privacy.secagg.secure_aggregation_mods`)."""
    return secure_aggregation_mods()


def _legacy_client(context: Context) -> Client:
    return client_fn(context).to_client()


legacy_app = ClientApp(client_fn=_legacy_client)
secagg_app = ClientApp(client_fn=_legacy_client, mods=secagg_mods())

# A SecAgg+ run's messages go to secagg_app; node-level DP's scaling and
# clipping mod runs on the plain path's train messages.
# The store mod is outermost: it loads the private rows a message needs and
# stores them after training, whichever path answers.
app = numpy_client_app(
    client_fn,
    mods=[node_store_mod, mode_dispatch_mod(secagg_app)],
    train_mods=client_mods(),
)
app.query()(partition_query)
app.query(DELIVER_ACTION)(deliver_recommendations)
