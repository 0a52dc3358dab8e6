"""Reply checks run before any aggregation: pure functions, one reason each.

Flower 1.42's strategies check only the structure of replies. A reply from a
client we do not control can still carry NaN/inf values, arrays of another
shape or dtype, missing or extra arrays, a weight that is zero, negative,
non-finite or absurd, metric sums no honest client can reach, or an update far
larger than training produces; averaged in, one such reply poisons the model,
chooses the reported round, or ends the run. Each function here returns
``None`` for an acceptable value or a short reason naming the offending field;
:class:`~fedrec_flwr.strategies.guard.ValidatedStrategy` drops the reply and
logs the node and that reason.

Bounds an accepted reply satisfies (with ``limits`` its :class:`ReplyLimits`):

- arrays: the names, shapes and dtypes sent, every value finite, and (with
  ``max_update_norm``) ``||w_k - w||_2 <= max_update_norm`` over all arrays;
- weight: a finite number in ``(0, min(max_weight, 2**53)]``, and at most its
  partition's cap where one is known (``partition_caps``);
- ``num-users`` (if sent): a number in ``[0, user cap]``;
- every metric value (lists too): finite and within ``+-2**53`` (no count or
  mean we aggregate is larger; beyond it sums lose exactness and can
  overflow);
- per-user sums (keys ending in ``hr@K-sum`` or ``ndcg@K-sum``, any prefix
  such as ``val-``, ``test-``, ``global-val-``): in ``[0, n]`` with ``n`` the
  reply's ``num-users`` and weight, whichever is smaller, because each user's
  HR/NDCG lies in ``[0, 1]``. Other sums (a loss summed over samples may exceed
  the number of users) and other metrics are only required to be finite;
- ``partition-id`` and ``num-partitions`` travel together;
  ``0 <= partition-id < num-partitions`` and ``num-partitions`` equals the
  federation's value once the server has agreed one.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from ..protocol import NUM_EXAMPLES_KEY, NUM_PARTITIONS_KEY, NUM_USERS_KEY, PARTITION_ID_KEY

__all__ = [
    "MAX_MAGNITUDE",
    "ArraySpec",
    "PartitionSizes",
    "ReplyLimits",
    "array_spec",
    "check_arrays",
    "check_finite_aggregate",
    "check_metrics",
    "check_partition",
    "check_reply",
    "check_update_norm",
    "check_user_count",
    "check_user_sums",
    "check_weight",
    "clip_bound",
    "is_per_user_sum",
    "show",
    "update_norm",
]

ArraySpec = Mapping[str, tuple[tuple[int, ...], str]]
"""Array name -> (shape, dtype name) a reply must match exactly."""

MAX_MAGNITUDE = float(2**53)
"""Largest weight or metric magnitude accepted: the largest integer a float
holds exactly. No count (examples, users) or mean we aggregate comes near it,
and bounding every term keeps the sums over replies finite."""

# Per-user values in [0, 1] (HR@K, NDCG@K), summed over a reply's users.
_PER_USER_SUM = re.compile(r"(?:^|-)(?:hr|ndcg)@\d+-sum$")


@dataclass(frozen=True)
class ReplyLimits:
    """What a reply may claim.

    Parameters
    ----------
    weight_key : str (default: NUM_EXAMPLES_KEY)
        MetricRecord key holding the client's weight.
    max_weight : float (default: inf)
        Largest acceptable weight (e.g. the dataset's size: no partition can
        hold more). :data:`MAX_MAGNITUDE` applies whatever this is.
    partition_caps : mapping of int to float (default: empty)
        Largest acceptable weight per claimed ``partition-id``, when the server
        knows its partitions' sizes (from the data or declared in
        ``node-weight-caps``). A reply of a partition listed here is never
        clipped: its cap is exact.
    list_lengths : mapping of str to int (default: empty)
        Metric lists a reply must carry, with their length; their entries must
        be finite and >= 0 (e.g. ``item-counts``, one per item).
    user_caps : mapping of int to float (default: empty)
        Largest acceptable ``num-users`` per claimed ``partition-id``.
    max_users : float (default: inf)
        Largest acceptable ``num-users`` of any reply (e.g. the dataset's users).
    clip_multiple : float (default: 0.0)
        Weights of replies whose partition has no cap in ``partition_caps`` are
        clipped to this multiple of the round's lower median weight (see
        :func:`clip_bound`); 0 = off.
    max_update_norm : float (default: inf)
        Largest acceptable ``||w_k - w||_2`` of a training reply against the
        arrays it was sent (see :func:`update_norm`); inf = off.
    num_partitions : int or None (default: None)
        The ``num-partitions`` every node must report, once agreed.
    """

    weight_key: str = NUM_EXAMPLES_KEY
    max_weight: float = math.inf
    partition_caps: Mapping[int, float] = field(default_factory=dict)
    list_lengths: Mapping[str, int] = field(default_factory=dict)
    user_caps: Mapping[int, float] = field(default_factory=dict)
    max_users: float = math.inf
    clip_multiple: float = 0.0
    max_update_norm: float = math.inf
    num_partitions: int | None = None


@dataclass(frozen=True)
class PartitionSizes:
    """What each partition truly holds, as the server computes it from the data.

    Parameters
    ----------
    examples : mapping of int to int
        Partition id -> training interactions (an NCF client's ``num-examples``
        in training).
    users : mapping of int to int
        Partition id -> users (its ``num-users``, and its weight in evaluation).
    """

    examples: Mapping[int, int]
    users: Mapping[int, int]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _magnitude_ok(value: object) -> TypeGuard[int | float]:
    """A finite int or float (not bool) no larger than :data:`MAX_MAGNITUDE`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # Compared as Python numbers: no float() of an int beyond float range.
    return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE


def show(value: object, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters, safe for any client value.

    A huge int is described by its size: Python refuses to print ints of more
    than 4300 digits, and a reason should stay one short line.
    """
    if _is_int(value) and abs(value) > MAX_MAGNITUDE:
        return f"<{value.bit_length()}-bit integer>"
    if isinstance(value, list) and any(_is_int(v) and abs(v) > MAX_MAGNITUDE for v in value):
        return f"<list of {len(value)} values>"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


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
    key: str = NUM_EXAMPLES_KEY,
    max_weight: float = math.inf,
) -> str | None:
    """A finite number in ``(0, min(max_weight, 2**53)]`` (bool is not a number here).

    Parameters
    ----------
    value : object
        The claimed weight.
    key : str (default: NUM_EXAMPLES_KEY)
        Its key, named in the reason.
    max_weight : float (default: inf)
        The cap.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"weight {key!r}={show(value)} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"weight {key!r}={show(value)} is not finite"
    if value <= 0:
        return f"weight {key!r}={show(value)} is not positive"
    if value > max_weight:
        return f"weight {key!r}={show(value)} exceeds the cap {max_weight:g}"
    if value > MAX_MAGNITUDE:
        return f"weight {key!r}={show(value)} exceeds 2**53, larger than any count"
    return None


def check_partition(metrics: MetricRecord, num_partitions: int | None = None) -> str | None:
    """``partition-id`` and ``num-partitions``: together, consistent, agreed.

    A reply with neither (not an NCF client, e.g. Flower's own tests) passes.

    Parameters
    ----------
    metrics : flwr.app.MetricRecord
        The reply's metrics.
    num_partitions : int or None (default: None)
        The federation's agreed ``num-partitions``; ``None`` = not agreed yet.
    """
    has_pid, has_k = PARTITION_ID_KEY in metrics, NUM_PARTITIONS_KEY in metrics
    if not (has_pid or has_k):
        return None
    if not has_k:
        return f"{NUM_PARTITIONS_KEY!r} is missing beside {PARTITION_ID_KEY!r}"
    if not has_pid:
        return f"{PARTITION_ID_KEY!r} is missing beside {NUM_PARTITIONS_KEY!r}"
    pid, k = metrics[PARTITION_ID_KEY], metrics[NUM_PARTITIONS_KEY]
    if not _is_int(pid) or not 0 <= pid <= MAX_MAGNITUDE:
        return f"{PARTITION_ID_KEY} {show(pid)} is not a non-negative integer"
    if not _is_int(k) or not 1 <= k <= MAX_MAGNITUDE:
        return f"{NUM_PARTITIONS_KEY} {show(k)} is not a positive integer"
    if num_partitions is not None and k != num_partitions:
        return f"{NUM_PARTITIONS_KEY}={k} differs from the federation's {num_partitions}"
    if pid >= k:
        return f"{PARTITION_ID_KEY} {pid} is not below {NUM_PARTITIONS_KEY}={k}"
    return None


def check_user_count(
    metrics: MetricRecord,
    user_caps: Mapping[int, float],
    max_users: float = math.inf,
) -> str | None:
    """``num-users`` (if sent) is a number in ``[0, cap]``.

    Parameters
    ----------
    metrics : flwr.app.MetricRecord
        The reply's metrics.
    user_caps : mapping of int to float
        Largest ``num-users`` per ``partition-id``.
    max_users : float (default: inf)
        Largest ``num-users`` of any reply.
    """
    if NUM_USERS_KEY not in metrics:
        return None
    users = metrics[NUM_USERS_KEY]
    if not _magnitude_ok(users) or users < 0:
        return f"{NUM_USERS_KEY}={show(users)} is not a number >= 0"
    if users > max_users:
        return f"{NUM_USERS_KEY}={show(users)} exceeds the cap {max_users:g}"
    pid = metrics.get(PARTITION_ID_KEY)
    cap = user_caps.get(pid) if _is_int(pid) else None
    if cap is not None and users > cap:
        return f"{NUM_USERS_KEY}={users!r} exceeds what partition {pid} holds ({cap:g})"
    return None


def check_metrics(record: MetricRecord, list_lengths: Mapping[str, int]) -> str | None:
    """Every metric finite and within ``+-2**53``; required lists present, of their length, >= 0."""
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if not all(_is_finite(v) for v in values):
            return f"metric {key!r} has non-finite values"
        if not all(_magnitude_ok(v) for v in values):
            return f"metric {key!r} has values beyond +-2**53"
    for key, length in list_lengths.items():
        listed = record.get(key)
        if not isinstance(listed, list) or len(listed) != length:
            got = len(listed) if isinstance(listed, list) else type(listed).__name__
            return f"metric {key!r} must be a list of {length} values, got {got}"
        if min(listed, default=0) < 0:
            return f"metric {key!r} has negative values"
    return None


def _is_finite(value: object) -> bool:
    if _is_int(value):
        return True  # ints are finite; math.isfinite would overflow on huge ones
    return isinstance(value, float) and math.isfinite(value)


def is_per_user_sum(key: str) -> bool:
    """Whether ``key`` sums a per-user value in ``[0, 1]`` (``...hr@K-sum``, ``...ndcg@K-sum``)."""
    return bool(_PER_USER_SUM.search(key))


def check_user_sums(metrics: MetricRecord, weight_key: str = NUM_EXAMPLES_KEY) -> str | None:
    """Per-user sums lie in ``[0, n]``, ``n`` = the reply's users (and weight).

    HR@K and NDCG@K of one user lie in ``[0, 1]``, so their sum over a reply's
    users lies in ``[0, num-users]``; the server divides summed sums by summed
    weights (the number of users in evaluation), so a sum above the reply's
    weight would push the global value above 1 too. Keys are chosen by name
    (:func:`is_per_user_sum`); other ``-sum`` keys are not bounded here.

    Parameters
    ----------
    metrics : flwr.app.MetricRecord
        The reply's metrics (numbers already checked finite).
    weight_key : str (default: NUM_EXAMPLES_KEY)
        The weight's key.
    """
    bounds = [metrics.get(k) for k in (NUM_USERS_KEY, weight_key)]
    numbers = [float(b) for b in bounds if _magnitude_ok(b)]
    limit = min(numbers, default=math.inf)
    for key, value in metrics.items():
        if not is_per_user_sum(key) or isinstance(value, list):
            continue
        if not 0 <= value <= limit:
            return (
                f"metric {key!r}={value!r} is outside [0, {limit:g}]: a per-user value in "
                f"[0, 1] summed over the reply's {limit:g} users"
            )
    return None


def check_finite_aggregate(arrays: ArrayRecord) -> str | None:
    """Every value of an aggregate finite (it becomes the next global model).

    Parameters
    ----------
    arrays : flwr.app.ArrayRecord
        What a strategy's ``aggregate_train`` returned.
    """
    for name, array in arrays.items():
        value = array.numpy()
        if np.issubdtype(value.dtype, np.number) and not np.isfinite(value).all():
            return f"the aggregate's array {name!r} has non-finite values (NaN or inf)"
    return None


def update_norm(record: ArrayRecord, sent: Mapping[str, np.ndarray]) -> float:
    """``||w_k - w||_2`` over every array of ``sent``, in float64.

    Parameters
    ----------
    record : flwr.app.ArrayRecord
        The reply's arrays (names and shapes already checked against ``sent``).
    sent : mapping of str to numpy.ndarray
        The global arrays the node was sent.
    """
    total = 0.0
    with np.errstate(over="ignore"):  # an overflow is a huge norm: inf, and dropped
        for name, reference in sent.items():
            diff = record[name].numpy().astype(np.float64) - np.asarray(reference, np.float64)
            total += float(np.square(diff).sum())
    return math.sqrt(total)


def check_update_norm(
    record: ArrayRecord, sent: Mapping[str, np.ndarray], max_norm: float
) -> str | None:
    """``||w_k - w||_2 <= max_norm`` (see :func:`update_norm`); ``inf`` = off.

    Parameters
    ----------
    record : flwr.app.ArrayRecord
        The reply's arrays.
    sent : mapping of str to numpy.ndarray
        The global arrays the node was sent.
    max_norm : float
        The bound.
    """
    if not math.isfinite(max_norm):
        return None
    norm = update_norm(record, sent)
    if not norm <= max_norm:
        return f"update norm ||w_k - w|| = {norm:.6g} exceeds max-update-norm {max_norm:g}"
    return None


def clip_bound(weights: Sequence[float], multiple: float) -> float:
    """``multiple`` times the lower median of ``weights``; inf when off or empty.

    The bound this gives: with ``K`` valid replies, ``m >= 1`` and every
    uncapped weight clipped to ``m * med`` (``med`` = the lower median, itself
    one of the claimed weights), at least ``floor(K/2) + 1`` replies claim
    ``>= med`` and keep ``>= med`` after clipping. So besides any one uncapped
    node at least ``floor(K/2)`` others weigh ``>= med``, and that node's share
    of the aggregate is at most ``m / (m + floor(K/2))`` whatever it claims
    (``m = 4``: 4/9 with ``K = 10``, 4/5 with ``K = 2``). It holds while fewer
    than half of the replies inflate their weights; a majority can raise the
    median itself.

    Parameters
    ----------
    weights : sequence of float
        The round's valid claimed weights.
    multiple : float
        ``m``; 0 or less = off.
    """
    if multiple <= 0 or not weights:
        return math.inf
    return multiple * float(statistics.median_low(weights))


def check_reply(
    content: RecordDict,
    limits: ReplyLimits,
    spec: ArraySpec | None,
    sent: Mapping[str, np.ndarray] | None = None,
) -> str | None:
    """All checks for one reply's content; ``spec=None`` for evaluate replies.

    Parameters
    ----------
    content : flwr.app.RecordDict
        The reply's content.
    limits : ReplyLimits
        What it may claim.
    spec : ArraySpec or None
        Names, shapes and dtypes of the arrays it must carry; ``None``: no
        ArrayRecord is checked (evaluate replies).
    sent : mapping of str to numpy.ndarray, optional (default: None)
        The arrays the node was sent, for ``limits.max_update_norm``; ``None``
        skips that check.

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
    reason = check_weight(weight, limits.weight_key, limits.max_weight) or check_partition(
        metrics, limits.num_partitions
    )
    if reason:
        return reason
    partition = metrics.get(PARTITION_ID_KEY)
    cap = limits.partition_caps.get(partition) if _is_int(partition) else None
    if cap is not None and weight > cap:  # type: ignore[operator]
        return (
            f"weight {limits.weight_key!r}={weight!r} exceeds what partition {partition} "
            f"holds ({cap:g})"
        )
    reason = (
        check_user_count(metrics, limits.user_caps, limits.max_users)
        or check_metrics(metrics, limits.list_lengths if spec is not None else {})
        or check_user_sums(metrics, limits.weight_key)
    )
    if reason or spec is None or sent is None:
        return reason
    return check_update_norm(
        next(iter(content.array_records.values())), sent, limits.max_update_norm
    )
