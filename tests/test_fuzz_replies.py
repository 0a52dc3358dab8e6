"""Property-based fuzzing of the reply validation (Hypothesis, fixed budget, derandomised).

Random RecordDicts (random, missing and extra array records and names, shapes,
dtypes, NaN/inf/huge values; random metric records with random keys and
values, lists, huge and negative numbers, missing weights; bools where a
record type accepts them) are mixed with honest replies and fed to
``check_reply`` and to ``ValidatedStrategy(WeightedFedAvg())`` as
``build_strategy`` makes it. Properties:

- nothing raises: a hostile reply is dropped with a non-empty reason, or accepted;
- when every hostile reply is dropped, the aggregate is bit-identical to the
  honest-only aggregate;
- every accepted reply is within the bounds documented in
  :mod:`fedrec_flwr.strategies.validation` (and evaluation HR stays in [0, 1]).
"""

import contextlib
import logging
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrec_flwr.config import RunConfig
from fedrec_flwr.strategies import (
    ReplyLimits,
    ValidatedStrategy,
    array_spec,
    check_reply,
    clip_bound,
    is_per_user_sum,
    update_norm,
)
from fedrec_flwr.strategies.registry import build_strategy
from fedrec_flwr.strategies.validation import MAX_MAGNITUDE

ROWS = 5
GLOBAL = {
    "item_gmf.weight": np.linspace(-1, 1, ROWS * 3, dtype=np.float32).reshape(ROWS, 3),
    "output.weight": np.ones((1, 3), dtype=np.float32),
    "output.bias": np.array(0.5, dtype=np.float32),
}
SPEC = array_spec(ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}))
K = 5
HONEST_WEIGHTS = [10, 20, 30, 40]
MAX_TRAIN, MAX_USERS, MAX_NORM, CLIP = 1000, 100, 5.0, 4.0
FUZZ = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


pytestmark = pytest.mark.usefixtures("server_identity")


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("flwr").setLevel(logging.CRITICAL)


class _Grid:
    def get_node_ids(self):
        return [1, 2]


def _message(node, content):
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    return Message(content, reply_to=instruction)


def _honest_arrays(k):
    rng = np.random.default_rng(k)
    return {n: np.asarray(v + rng.normal(0, 0.1, v.shape), v.dtype) for n, v in GLOBAL.items()}


def _honest_train():
    return [
        _message(
            100 + k,
            RecordDict(
                {
                    "arrays": ArrayRecord({n: Array(a) for n, a in _honest_arrays(k).items()}),
                    "metrics": MetricRecord(
                        {
                            "num-examples": w,
                            "num-users": 3,
                            "train-loss": 0.1 * (k + 1),
                            "partition-id": k,
                            "num-partitions": K,
                        }
                    ),
                }
            ),
        )
        for k, w in enumerate(HONEST_WEIGHTS)
    ]


def _honest_evaluate():
    return [
        _message(
            100 + k,
            RecordDict(
                {
                    "metrics": MetricRecord(
                        {
                            "num-examples": users,
                            "num-users": users,
                            "loss": 0.5 + k,
                            "partition-id": k,
                            "num-partitions": K,
                            "val-hr@10-sum": users * 0.5,
                            "val-ndcg@10-sum": users * 0.25,
                        }
                    )
                }
            ),
        )
        for k, users in enumerate([4, 6, 8, 10])
    ]


def _strategy():
    cfg = RunConfig.from_mapping({"max-update-norm": MAX_NORM, "weight-clip-multiple": CLIP})
    return build_strategy(cfg, max_train_weight=MAX_TRAIN, max_evaluate_weight=MAX_USERS)


# --- generators --------------------------------------------------------------------

SPECIAL = [math.nan, math.inf, -math.inf, 1e300, -1e300, 3e38, 1e30, 0.0, -0.0, 1e-300]
DTYPES = ["float32", "float32", "float32", "float64", "float16", "int32", "int64", "bool"]
NAMES = [*GLOBAL, "user_gmf.weight", "extra", ""]
METRIC_KEYS = [
    "num-examples",
    "num-users",
    "partition-id",
    "num-partitions",
    "train-loss",
    "loss",
    "item-counts",
    "val-hr@10-sum",
    "val-ndcg@10-sum",
    "val-loss-sum",
    "compute-seconds",
]

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**5000)]),  # beyond float range, beyond int printing
    st.integers(-3, 200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-50, 50),
    st.sampled_from(SPECIAL),
    st.booleans(),
)
values = st.one_of(numbers, st.lists(numbers, max_size=6), st.text(max_size=3))


@st.composite
def _array(draw, name):
    shape, _ = SPEC.get(name, ((2, 2), "float32"))
    if draw(st.integers(0, 4)) == 0:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    dtype = draw(st.sampled_from(DTYPES))
    if name in GLOBAL and shape == SPEC[name][0] and draw(st.booleans()):
        # Near the model: honest values, scaled, with a few special entries.
        base = np.asarray(GLOBAL[name]) * draw(st.sampled_from([1.0, 1.01, -1.0, 10.0, 1000.0]))
        value = np.array(base, dtype=np.float64)
        flat = value.reshape(-1)
        for _ in range(draw(st.integers(0, 2))):
            if flat.size:
                flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL))
        with np.errstate(all="ignore"):
            return np.asarray(value.astype(dtype))
    elements = st.floats(width=16) if dtype == "float16" else None
    return np.asarray(draw(hnp.arrays(dtype, shape, elements=elements)))


@st.composite
def _array_record(draw):
    names = draw(st.one_of(st.just(list(GLOBAL)), st.lists(st.sampled_from(NAMES), max_size=4)))
    return ArrayRecord({n: Array(draw(_array(n))) for n in dict.fromkeys(names)})


@st.composite
def _metric_record(draw, honest):
    out = dict(next(iter(honest.content.metric_records.values())))
    for key in draw(st.lists(st.sampled_from([*METRIC_KEYS, "random"]), max_size=5)):
        if draw(st.integers(0, 3)) == 0:
            out.pop(key, None)  # a missing weight, partition-id, ...
        else:
            out[key] = draw(values)
    record = MetricRecord()
    for key, value in out.items():
        with contextlib.suppress(TypeError):  # bool, str, mixed lists: refused by MetricRecord
            record[key] = value
    return record


@st.composite
def _hostile(draw, honest, train):
    template = draw(st.sampled_from(honest))
    content = RecordDict()
    for i in range(draw(st.sampled_from([1, 1, 1, 0, 2]) if train else st.just(0))):
        content[f"arrays{i}"] = draw(_array_record())
    for i in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        content[f"metrics{i}"] = draw(_metric_record(template))
    if draw(st.integers(0, 5)) == 0:
        # A ConfigRecord takes bools and strings.
        content["config"] = ConfigRecord({"flag": draw(st.booleans()), "s": "x"})
    node = draw(st.one_of(st.integers(900, 903), st.sampled_from([100, 101, 102, 103])))
    return _message(node, content)


@st.composite
def _near_honest(draw, honest, train):
    """An honest reply with at most one field changed: often valid, sometimes not."""
    k = draw(st.integers(0, len(honest) - 1))
    node = draw(st.sampled_from([900, 901, 100 + k]))
    metrics = dict(_metrics(honest[k]))
    metrics["partition-id"] = 4 if node >= 900 else k  # a free partition, or its own
    metrics["num-examples"] = draw(st.sampled_from([1, 25, 35, 200, 10**4, 999.5]))
    metrics["num-users"] = min(metrics["num-examples"], draw(st.sampled_from([2, 3, 50])))
    key = draw(st.sampled_from([None, *METRIC_KEYS]))
    if key is not None:
        with contextlib.suppress(TypeError):
            MetricRecord({key: (value := draw(values))})
            metrics[key] = value
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if train:
        arrays = {n: a.numpy() for n, a in honest[k].content["arrays"].items()}
        name = draw(st.sampled_from([None, *GLOBAL]))
        if name is not None:
            factor = draw(st.sampled_from([0.0, 1.5, 3.0, 1e3]))
            arrays[name] = np.asarray(GLOBAL[name] + factor * (arrays[name] - GLOBAL[name]))
        content["arrays"] = ArrayRecord({n: Array(np.asarray(a)) for n, a in arrays.items()})
    return _message(node, content)


def _mixed(draw, honest, train):
    one = st.one_of(_hostile(honest, train), _near_honest(honest, train))
    hostile = draw(st.lists(one, min_size=1, max_size=3))
    order = draw(st.permutations(list(range(len(honest) + len(hostile)))))
    everything = [*honest, *hostile]
    return [everything[i] for i in order], hostile


# --- properties ----------------------------------------------------------------------


def _spy(strategy):
    seen = []
    inner = strategy.strategy
    train, evaluate = inner.aggregate_train, inner.aggregate_evaluate

    def on_train(rnd, replies):
        seen[:] = list(replies)
        return train(rnd, seen)

    def on_evaluate(rnd, replies):
        seen[:] = list(replies)
        return evaluate(rnd, seen)

    inner.aggregate_train, inner.aggregate_evaluate = on_train, on_evaluate
    return seen


def _warm(strategy):
    """One honest round first: it fixes num-partitions (a first-round
    disagreement stops the run by design) and the partition claims."""
    record = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, record, ConfigRecord(), _Grid()))
    strategy.aggregate_train(1, _honest_train())
    list(strategy.configure_train(2, record, ConfigRecord(), _Grid()))


def _assert_dropped_with_reasons(strategy, accepted, hostile):
    assert all(isinstance(why, str) and why for _, _, why in strategy.dropped)
    assert len(strategy.dropped) >= len(hostile) - len(accepted)


def _metrics(msg):
    return next(iter(msg.content.metric_records.values()))


def _claimed(strategy, seen):
    """The weights the aggregated replies claimed, before any clipping."""
    before = {c["node"]: c["claimed"] for c in strategy.clipped if c["round"] == 2}
    return [before.get(m.metadata.src_node_id, float(_metrics(m)["num-examples"])) for m in seen]


def _assert_within_bounds(msg, limits, weights, train):
    """The documented bounds of an accepted (possibly clipped) reply."""
    content = msg.content
    assert len(content.metric_records) == 1
    metrics = _metrics(msg)
    weight = metrics[limits.weight_key]
    assert not isinstance(weight, (bool, list)) and 0 < weight <= min(limits.max_weight, 2**53)
    if limits.clip_multiple:
        assert weight <= clip_bound(weights, limits.clip_multiple) or (
            metrics["partition-id"] in limits.partition_caps
        )
    assert metrics["num-partitions"] == K and 0 <= metrics["partition-id"] < K
    if "num-users" in metrics:
        assert 0 <= metrics["num-users"] <= limits.max_users
    for key, value in metrics.items():
        for v in value if isinstance(value, list) else [value]:
            assert math.isfinite(v) and abs(v) <= MAX_MAGNITUDE, key
        if is_per_user_sum(key) and not isinstance(value, list):
            assert 0 <= value <= min(weight, metrics.get("num-users", math.inf)) * (1 + 1e-12)
    if train:
        assert len(content.array_records) == 1
        record = next(iter(content.array_records.values()))
        assert array_spec(record) == SPEC
        assert all(np.isfinite(a.numpy()).all() for a in record.values())
        assert update_norm(record, GLOBAL) <= limits.max_update_norm


def _bits(record):
    return {k: v.numpy().tobytes() for k, v in record.items()}


@FUZZ
@given(st.data())
def test_fuzzed_training_replies(data):
    honest = _honest_train()
    mixed, hostile = _mixed(data.draw, honest, train=True)
    strategy = _strategy()
    _warm(strategy)
    seen = _spy(strategy)
    agg, metrics = strategy.aggregate_train(2, mixed)  # must not raise
    accepted = [m for m in seen if not any(m is h for h in honest)]
    event(f"hostile accepted: {len(accepted)}, clipped: {len(strategy.clipped)}")
    _assert_dropped_with_reasons(strategy, accepted, hostile)
    if agg is not None:
        assert {k: str(v.dtype) for k, v in agg.items()} == {k: d for k, (_, d) in SPEC.items()}
        assert all(np.isfinite(v.numpy()).all() for v in agg.values())
    claimed = _claimed(strategy, seen)
    for msg in accepted:
        _assert_within_bounds(msg, strategy.train_limits, claimed, train=True)
    if len(seen) == len(honest) and not accepted:
        reference = _strategy()
        _warm(reference)
        expected, expected_metrics = reference.aggregate_train(2, _honest_train())
        assert _bits(agg) == _bits(expected)
        assert dict(metrics) == dict(expected_metrics)


@FUZZ
@given(st.data())
def test_fuzzed_evaluate_replies(data):
    honest = _honest_evaluate()
    mixed, hostile = _mixed(data.draw, honest, train=False)
    strategy = _strategy()
    _warm(strategy)
    seen = _spy(strategy)
    out = strategy.aggregate_evaluate(2, mixed)  # must not raise
    accepted = [m for m in seen if not any(m is h for h in honest)]
    event(f"hostile accepted: {len(accepted)}, clipped: {len(strategy.clipped)}")
    _assert_dropped_with_reasons(strategy, accepted, hostile)
    claimed = _claimed(strategy, seen)
    for msg in accepted:
        _assert_within_bounds(msg, strategy.evaluate_limits, claimed, train=False)
    if out is not None and "val-hr@10" in out:
        # Sums bounded by each reply's weight: the global value is a mean in [0, 1].
        assert 0 <= out["val-hr@10"] <= 1 + 1e-12
    if len(seen) == len(honest) and not accepted:
        reference = _strategy()
        _warm(reference)
        assert dict(out) == dict(reference.aggregate_evaluate(2, _honest_evaluate()))


@FUZZ
@given(st.data())
def test_fuzzed_check_reply_returns_a_reason_or_none(data):
    honest = _honest_train()
    message = data.draw(_hostile(honest, train=data.draw(st.booleans())))
    limits = ReplyLimits(max_weight=MAX_TRAIN, max_update_norm=MAX_NORM, num_partitions=K)
    for spec, sent in ((SPEC, GLOBAL), (None, None)):
        reason = check_reply(message.content, limits, spec, sent)
        assert reason is None or (isinstance(reason, str) and reason)
        if reason is None:
            metrics = _metrics(message)
            assert 0 < metrics["num-examples"] <= MAX_TRAIN


def test_a_wrapper_without_configure_train_survives_fuzzed_shapes():
    """Majority-spec mode (no configure_train): the honest spec wins, others are dropped."""
    wrapped = ValidatedStrategy(build_strategy(RunConfig()).strategy)
    odd = _honest_train()[0]
    content = RecordDict(
        {
            "arrays": ArrayRecord({"item_gmf.weight": Array(np.zeros((6, 3), np.float32))}),
            "metrics": MetricRecord(dict(_metrics(odd))),
        }
    )
    agg, _ = wrapped.aggregate_train(1, [*_honest_train(), _message(999, content)])
    assert agg is not None and [d[1] for d in wrapped.dropped] == [999]
