"""The ClientApp mod that keeps a node's private state in its store.

Before a message reaches the client, :func:`node_store_mod` puts the private
state the message needs into ``context.state`` (user rows, personal layers,
and the node's Adam state under ``optimizer-state='keep'``): for training in
round ``r`` the newest stored state of a round ``< r``, for evaluation in round
``r`` (or delivery of round ``r``) the newest of a round ``<= r``. So a SuperNode that
restarted, or a resumed run on the same nodes, goes on from exactly the rows
it had. After a training reply it writes the new state (round ``r``) and
prunes what neither a resume nor a delivery can need (``keep-rounds``).
Messages whose config carries no ``state-run`` (SecAgg+'s legacy stages, the
partition query) pass through untouched.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from ..protocol import (
    DELIVER_ACTION,
    DELIVER_ROUND_KEY,
    KEEP_ROUNDS_KEY,
    OPTIMIZER_STATE_KEY,
    PARTITION_ID_KEY,
    PERSONAL_STATE_KEY,
    PRIVATE_STATE_KEY,
    STATE_DIR_KEY,
    STATE_RUN_KEY,
    USER_IDS_STATE_KEY,
    WARM_ROUND_KEY,
    WARM_RUN_KEY,
    WARM_STATE_KEY,
    WARM_USERS_KEY,
    rounds_of,
    server_round,
)
from .store import NodeStore, state_root

__all__ = ["DELIVER_MESSAGE_TYPE", "node_store_mod", "user_ids_of", "user_ids_record"]

#: The message type of a delivery (``@app.query(DELIVER_ACTION)``).
DELIVER_MESSAGE_TYPE = f"{MessageType.QUERY}.{DELIVER_ACTION}"
_IDS = "ids"
_STATE_KEYS = (
    PRIVATE_STATE_KEY,
    PERSONAL_STATE_KEY,
    OPTIMIZER_STATE_KEY,
    WARM_STATE_KEY,
    WARM_USERS_KEY,
)


def user_ids_record(ids: object) -> ConfigRecord:
    """The raw user id of each private row, as the client keeps it in ``context.state``."""
    return ConfigRecord({_IDS: [str(i) for i in ids]})  # type: ignore[attr-defined]


def user_ids_of(record: ConfigRecord) -> list[str]:
    """The raw user ids a :data:`USER_IDS_STATE_KEY` record holds."""
    ids = record.get(_IDS, [])
    return [str(i) for i in ids] if isinstance(ids, list) else []


def _config(msg: Message) -> dict[str, object]:
    merged: dict[str, object] = {}
    for record in msg.content.config_records.values():
        merged.update(record)
    return merged


def node_store_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Load this node's stored private state for ``msg``, run it, store the new state."""
    config = _config(msg)
    lineage = config.get(STATE_RUN_KEY)
    if not isinstance(lineage, str) or not lineage:
        return call_next(msg, context)
    pid = context.node_config.get(PARTITION_ID_KEY)
    if not isinstance(pid, int) or isinstance(pid, bool):
        return call_next(msg, context)  # the client names the missing key
    root = state_root(context.node_config.get(STATE_DIR_KEY))
    store = NodeStore(root, lineage, pid)
    kind = msg.metadata.message_type
    train = kind == MessageType.TRAIN
    if kind == DELIVER_MESSAGE_TYPE:
        rnd = int(config.get(DELIVER_ROUND_KEY, 0))  # type: ignore[call-overload]
    else:
        rnd = server_round(config)
    for key in _STATE_KEYS:
        if key in context.state:
            del context.state[key]
    stored = store.load(rnd - 1 if train else rnd)
    if stored is not None:
        context.state[PRIVATE_STATE_KEY] = ArrayRecord(
            {k: Array(v) for k, v in stored.private.items()}
        )
        for key, arrays in (
            (PERSONAL_STATE_KEY, stored.personal),
            (OPTIMIZER_STATE_KEY, stored.optimizer),
        ):
            if arrays:
                context.state[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    else:
        _load_warm(config, root, pid, context)
    reply = call_next(msg, context)
    if train and not reply.has_error() and PRIVATE_STATE_KEY in context.state:
        private = context.state.array_records[PRIVATE_STATE_KEY]
        personal = context.state.array_records.get(PERSONAL_STATE_KEY, ArrayRecord())
        optimizer = context.state.array_records.get(OPTIMIZER_STATE_KEY, ArrayRecord())
        ids = context.state.config_records.get(USER_IDS_STATE_KEY, ConfigRecord())
        store.save(
            rnd,
            {k: v.numpy() for k, v in private.items()},
            {k: v.numpy() for k, v in personal.items()},
            user_ids_of(ids),
            {k: v.numpy() for k, v in optimizer.items()},
        )
        store.prune(rounds_of(config.get(KEEP_ROUNDS_KEY)), rnd)
    return reply


def _load_warm(config: dict[str, object], root: object, pid: int, context: Context) -> None:
    """Put an earlier run's rows for this node in ``context.state`` (``init-from``)."""
    warm_run, warm_round = config.get(WARM_RUN_KEY), config.get(WARM_ROUND_KEY)
    if not isinstance(warm_run, str) or not warm_run or not isinstance(warm_round, int):
        return
    stored = NodeStore(root, warm_run, pid).load(warm_round)  # type: ignore[arg-type]
    if stored is None:
        log(INFO, "fedrec-flwr: node %s holds no state of run %s: fresh rows", pid, warm_run)
        return
    context.state[WARM_STATE_KEY] = ArrayRecord({k: Array(v) for k, v in stored.private.items()})
    context.state[WARM_USERS_KEY] = user_ids_record(stored.user_ids)
