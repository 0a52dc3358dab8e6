"""Serve any Flower ``NumPyClient`` as a Message-API ``ClientApp``.

Flower 1.42's strategies in ``flwr.serverapp.strategy`` speak the Message API
(``ArrayRecord`` + ``MetricRecord``), while ``NumPyClient`` speaks lists of
arrays. This adapter calls the client's ``fit``/``evaluate`` from ``@app.train``
/ ``@app.evaluate`` and keeps array *names* on the wire: if the client has an
``array_names()`` method, incoming arrays are matched to it by name (a missing or
unexpected name is an error), otherwise the incoming order is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.compat.client.numpy_client import NumPyClient

from ..protocol import LOSS_KEY, METRICS_RECORD, NUM_EXAMPLES_KEY

__all__ = ["numpy_client_app"]


def _only(records: Mapping[str, Any], what: str) -> tuple[str, Any]:
    if len(records) != 1:
        raise ValueError(f"expected exactly one {what} in the message, found {len(records)}")
    return next(iter(records.items()))


def _config(content: RecordDict) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for record in content.config_records.values():
        config.update(record)
    return config


def _array_names(client: NumPyClient, arrays: ArrayRecord) -> list[str]:
    received = list(arrays.keys())
    names_fn = getattr(client, "array_names", None)
    if names_fn is None:
        return received
    expected = list(names_fn())
    if set(received) != set(expected):
        missing = sorted(set(expected) - set(received))
        extra = sorted(set(received) - set(expected))
        raise ValueError(
            f"arrays sent by the server do not match the client model: missing {missing}, "
            f"unexpected {extra}"
        )
    return expected


def _metric_record(metrics: Mapping[str, Any], weight_key: str, weight: int) -> MetricRecord:
    record: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, list) and value and all(type(v) is int for v in value):
            pass  # list[int] (e.g. item-counts) is a MetricRecord value too
        elif isinstance(value, list) and value and all(type(v) is float for v in value):
            pass
        elif not isinstance(value, (int, float)):
            raise TypeError(
                f"metric {key!r}={value!r:.40}: only int, float, list[int] or list[float] "
                "metrics can be sent (MetricRecord)"
            )
        record[key] = value
    record[weight_key] = int(weight)
    return MetricRecord(record)


def numpy_client_app(
    client_fn: Callable[[Context], NumPyClient],
    *,
    weight_key: str = NUM_EXAMPLES_KEY,
    train_mods: Sequence[Mod] = (),
    mods: Sequence[Mod] = (),
) -> ClientApp:
    """Build a Message-API ``ClientApp`` that delegates to a ``NumPyClient``.

    Parameters
    ----------
    client_fn : callable
        ``client_fn(context) -> NumPyClient``, called once per message (it may
        read ``context.state`` for private, persistent client state).
    weight_key : str (default: NUM_EXAMPLES_KEY)
        MetricRecord key for the client's ``num_examples``; it must match the
        strategy's ``weighted_by_key``.
    train_mods : sequence of flwr mods (default: ())
        Mods on ``@app.train`` only, e.g. Flower's ``fixedclipping_mod`` for
        ``DifferentialPrivacyClientSideFixedClipping`` (app-wide mods would break
        evaluate).
    mods : sequence of flwr mods (default: ())
        App-wide mods, outside ``train_mods``, on every handler (e.g. the
        SecAgg+ mode dispatch, which hands some messages to another app).

    Returns
    -------
    flwr.clientapp.ClientApp
        Train replies carry an ArrayRecord (under the key it arrived with) and
        a MetricRecord under ``METRICS_RECORD``; evaluate replies carry the
        MetricRecord only, with ``LOSS_KEY`` added.
    """
    app = ClientApp(mods=list(mods))

    def unpack(
        msg: Message, context: Context
    ) -> tuple[NumPyClient, str, list[str], list[np.ndarray], dict[str, Any]]:
        """The client, the ArrayRecord's key, array names, arrays and config."""
        client = client_fn(context)
        key, arrays = _only(msg.content.array_records, "ArrayRecord")
        names = _array_names(client, arrays)
        return client, key, names, [arrays[n].numpy() for n in names], _config(msg.content)

    @app.train(mods=list(train_mods))
    def train(msg: Message, context: Context) -> Message:
        client, key, names, parameters, config = unpack(msg, context)
        updated, num_examples, metrics = client.fit(parameters, config)
        if len(updated) != len(names):
            raise ValueError(f"fit returned {len(updated)} arrays for {len(names)} names {names}")
        content = RecordDict(
            {
                key: ArrayRecord(
                    {name: Array(np.asarray(a)) for name, a in zip(names, updated, strict=True)}
                ),
                METRICS_RECORD: _metric_record(metrics, weight_key, num_examples),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        client, _, _, parameters, config = unpack(msg, context)
        loss, num_examples, metrics = client.evaluate(parameters, config)
        record = _metric_record({LOSS_KEY: float(loss), **metrics}, weight_key, num_examples)
        return Message(content=RecordDict({METRICS_RECORD: record}), reply_to=msg)

    return app
