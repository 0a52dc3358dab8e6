"""Reply checks run before any aggregation: pure functions, one reason each.

Flower 1.42's strategies check only the structure of replies. A reply from a
client we do not control can still carry NaN/inf values, arrays of another
shape or dtype, missing or extra arrays, or a weight that is zero, negative,
non-finite or absurd; averaged in, one such reply poisons the model or ends the
run. Each function here returns ``None`` for an acceptable value or a short
reason naming the offending field; :class:`~fedrec_flwr.strategies.guard.
ValidatedStrategy` drops the reply and logs the node and that reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

__all__ = [
    "ArraySpec",
    "ReplyLimits",
    "array_spec",
    "check_arrays",
    "check_metrics",
    "check_reply",
    "check_weight",
]

ArraySpec = Mapping[str, tuple[tuple[int, ...], str]]
"""Array name -> (shape, dtype name) a reply must match exactly."""


@dataclass(frozen=True)
class ReplyLimits:
    """What a reply may claim.

    Parameters
    ----------
    weight_key : str (default: "num-examples")
        MetricRecord key holding the client's weight.
    max_weight : float (default: inf)
        Largest acceptable weight (e.g. the dataset's size: no partition can
        hold more).
    partition_caps : mapping of int to float (default: empty)
        Largest acceptable weight per claimed ``partition-id``, when the server
        knows its partitions' sizes.
    list_lengths : mapping of str to int (default: empty)
        Metric lists a reply must carry, with their length; their entries must
        be finite and >= 0 (e.g. ``item-counts``, one per item).
    """

    weight_key: str = "num-examples"
    max_weight: float = math.inf
    partition_caps: Mapping[int, float] = field(default_factory=dict)
    list_lengths: Mapping[str, int] = field(default_factory=dict)


def array_spec(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """The spec replies must match: name -> (shape, dtype) of ``arrays``."""
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def check_arrays(record: ArrayRecord, spec: ArraySpec) -> str | None:
    """Same names, shapes and dtypes as ``spec``, every value finite."""
    missing = sorted(set(spec) - set(record))
    extra = sorted(set(record) - set(spec))
    if missing or extra:
        return f"arrays differ from the model's: missing {missing}, unexpected {extra}"
    for name, (shape, dtype) in spec.items():
        try:
            value = record[name].numpy()
        except Exception as exc:  # any decoding failure is the sender's fault
            return f"array {name!r} cannot be decoded ({type(exc).__name__})"
        if str(value.dtype) != dtype:
            return f"array {name!r} has dtype {value.dtype}, expected {dtype}"
        if tuple(value.shape) != tuple(shape):
            return f"array {name!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
        if not np.issubdtype(value.dtype, np.number):
            return f"array {name!r} is not numeric"
        if not np.isfinite(value).all():
            return f"array {name!r} has non-finite values (NaN or inf)"
    return None


def check_weight(
    value: object,
    key: str = "num-examples",
    max_weight: float = math.inf,
) -> str | None:
    """A finite number in ``(0, max_weight]`` (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"weight {key!r}={value!r} is not a number"
    if not math.isfinite(value):
        return f"weight {key!r}={value!r} is not finite"
    if value <= 0:
        return f"weight {key!r}={value!r} is not positive"
    if value > max_weight:
        return f"weight {key!r}={value!r} exceeds the cap {max_weight:g}"
    return None


def check_metrics(record: MetricRecord, list_lengths: Mapping[str, int]) -> str | None:
    """Every metric finite; required lists present, of their length, >= 0."""
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"metric {key!r} has non-finite values"
    for key, length in list_lengths.items():
        listed = record.get(key)
        if not isinstance(listed, list) or len(listed) != length:
            got = len(listed) if isinstance(listed, list) else type(listed).__name__
            return f"metric {key!r} must be a list of {length} values, got {got}"
        if min(listed, default=0) < 0:
            return f"metric {key!r} has negative values"
    return None


def check_reply(content: RecordDict, limits: ReplyLimits, spec: ArraySpec | None) -> str | None:
    """All checks for one reply's content; ``spec=None`` for evaluate replies.

    Returns
    -------
    str or None
        Why the reply must be dropped, or ``None`` if it may be aggregated.
    """
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, found {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    if spec is not None:
        if len(content.array_records) != 1:
            return f"expected one ArrayRecord, found {len(content.array_records)}"
        reason = check_arrays(next(iter(content.array_records.values())), spec)
        if reason:
            return reason
    if limits.weight_key not in metrics:
        return f"weight {limits.weight_key!r} is missing"
    weight = metrics[limits.weight_key]
    reason = check_weight(weight, limits.weight_key, limits.max_weight)
    if reason:
        return reason
    partition = metrics.get("partition-id")
    cap = limits.partition_caps.get(partition) if isinstance(partition, int) else None
    if cap is not None and weight > cap:  # type: ignore[operator]
        return (
            f"weight {limits.weight_key!r}={weight!r} exceeds what partition {partition} "
            f"holds ({cap:g})"
        )
    return check_metrics(metrics, limits.list_lengths if spec is not None else {})
