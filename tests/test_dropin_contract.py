"""Drop-in contract (issue 12): our strategies stand in for Flower's unchanged.

Flower's own Message-API strategy tests (run by ``benchmarks/flower_dropin.py``)
build replies as ``unittest.mock.Mock(spec=Message)`` objects whose metadata,
and so whose node id, is a bare Mock, and call ``aggregate_train`` directly,
without ``configure_train``. These tests, written here in the same style, pin
what standing in means:

- ``WeightedFedAvg`` returns FedAvg's arrays (to the bit) and the same metric
  values, for Mock, non-integer and integer node ids, and its result bits do
  not depend on the reply order (integer ids); malformed replies raise what
  FedAvg raises.
- ``ValidatedStrategy(S)`` for Flower's FedAvg, FedAvgM, FedMedian,
  FedTrimmedAvg, Krum, MultiKrum, FedAdam and FedYogi (and our
  WeightedFedAvg) returns, without ``configure_train``, what ``S`` returns on
  honest replies, to the bit, arrays and metrics; it drops the replies for
  which ``S`` raises; its ``configure_train``/``configure_evaluate`` send the
  messages ``S`` sends; attributes Flower's tests use on ``S``
  (``current_arrays``, ``_compute_deltat_and_mt``) reach ``S``.

"To the bit" holds whatever order the wrapper passes the replies in because
the honest values are multiples of 1/4 and the weights sum to 8: every product
and partial sum is exact, so summation order cannot change a bit. Where dtypes
differ by design, values are compared with a tolerance instead: ``np.average``
of float32 arrays is float64 while the strategies keep the clients' float32;
FedAdam/FedYogi return float64 (both bare and wrapped, so those comparisons
stay bit-exact).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from fedrec_flwr.strategies import ValidatedStrategy, WeightedFedAvg

# Weights sum to 8, so every weight factor w / 8 is exact in binary.
WEIGHTS = (1, 2, 1, 3, 1)
NODES = (11, 12, 13, 14, 15)
AUTO = object()  # "leave the Mock's metadata alone", as Flower's create_mock_reply does

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "FedAvg": FedAvg,
    "FedAvgM": lambda: FedAvgM(server_learning_rate=0.5, server_momentum=0.5),
    "FedMedian": FedMedian,
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2),
    "Krum": lambda: Krum(num_malicious_nodes=1),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2),
    "FedAdam": FedAdam,
    "FedYogi": FedYogi,
    "WeightedFedAvg": WeightedFedAvg,
}

# How each kind of reply names its sender (metadata.src_node_id).
NODE_ID_KINDS: dict[str, Callable[[int], object]] = {
    "mock": lambda k: AUTO,  # Flower's create_mock_reply: the id is a Mock
    "str": lambda k: f"node-{k}",
    "none": lambda k: None,
    "mixed": lambda k: (7, "x", None, 2.5, Mock())[k % 5],
    "int": lambda k: NODES[k],  # real Messages
}


pytestmark = pytest.mark.usefixtures("server_identity")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# --- replies ----------------------------------------------------------------------


def quarter_arrays(k: int) -> dict[str, np.ndarray]:
    """Reply ``k``'s arrays: multiples of 1/4 (exact sums), a float32, a float64, a 0-d."""
    rng = np.random.default_rng(100 + k)
    return {
        "w": (rng.integers(-16, 17, size=(2, 3)) / 4).astype(np.float32),
        "v": rng.integers(-16, 17, size=4) / 4,
        "b": np.array(rng.integers(-16, 17) / 4),
    }


def random_arrays(k: int) -> dict[str, np.ndarray]:
    """Reply ``k``'s arrays with arbitrary float values (sums depend on order)."""
    rng = np.random.default_rng(200 + k)
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": np.array(rng.normal()),
    }


def content(
    arrays: dict[str, np.ndarray] | None, metrics: dict[str, Any], **extra: Any
) -> RecordDict:
    """A reply's RecordDict: ``arrays`` (None: evaluate reply), ``metrics``, extra records."""
    records: dict[str, Any] = {}
    if arrays is not None:
        records["arrays"] = ArrayRecord({n: Array(np.asarray(a)) for n, a in arrays.items()})
    records["metrics"] = MetricRecord(metrics)
    records.update(extra)
    return RecordDict(records)


def reply(body: RecordDict, node_id: object = AUTO) -> Message:
    """A reply carrying ``body``: a real Message for an int id, else a Mock like Flower's."""
    if isinstance(node_id, int) and not isinstance(node_id, bool):
        instruction = Message(RecordDict(), dst_node_id=node_id, message_type="train")
        return Message(body, reply_to=instruction)
    message = Mock(spec=Message)
    message.content = body
    message.has_error.side_effect = lambda: False
    message.has_content.side_effect = lambda: True
    if node_id is not AUTO:
        message.metadata.src_node_id = node_id
    return message


def honest_bodies(
    weights: Sequence[float] = WEIGHTS,
    arrays: Callable[[int], dict[str, np.ndarray]] = quarter_arrays,
    train: bool = True,
) -> list[RecordDict]:
    """One honest reply body per weight (fresh records: some strategies pop them)."""
    return [
        content(
            arrays(k) if train else None,
            {"num-examples": w, "train-loss": k / 4, "val-hr": (8 - k) / 8},
        )
        for k, w in enumerate(weights)
    ]


# The dtypes the replies (and so the model) use. FedAdam/FedYogi return float64
# whatever they receive; the wrapper casts the aggregate back to these, by design
# (a float64 model would get every later float32 reply dropped as of the wrong
# dtype). For the other strategies the cast changes nothing.
REPLY_DTYPES = {name: a.dtype for name, a in quarter_arrays(0).items()}


def replies_for(kind: str, bodies: Sequence[RecordDict]) -> list[Message]:
    """Wrap ``bodies`` as replies whose node ids are of ``kind``."""
    return [reply(b, NODE_ID_KINDS[kind](k)) for k, b in enumerate(bodies)]


# --- strategies -------------------------------------------------------------------


def prime(strategy: Strategy) -> Strategy:
    """Give stateful strategies the global arrays, as Flower's tests do (no configure)."""
    initial = quarter_arrays(99)
    if isinstance(strategy, FedAvgM):
        strategy.current_arrays = ArrayRecord({n: Array(a) for n, a in initial.items()})
    elif isinstance(strategy, (FedAdam, FedYogi)):
        strategy.current_arrays = dict(initial)
    return strategy


def bare(name: str) -> Strategy:
    """Flower's (or our) strategy ``name``, primed."""
    return prime(STRATEGIES[name]())


def wrapped(name: str) -> ValidatedStrategy:
    """``ValidatedStrategy`` around a primed ``name``; the wrapper is never configured."""
    return ValidatedStrategy(bare(name))


def assert_bit_identical(
    ours: tuple[ArrayRecord | None, MetricRecord | None],
    theirs: tuple[ArrayRecord | None, MetricRecord | None],
    dtypes: dict[str, np.dtype] | None = None,
) -> None:
    """Same array names, dtypes, shapes and bytes; same metrics.

    With ``dtypes``, ours must have those dtypes and theirs is cast to them first.
    """
    (our_arrays, our_metrics), (their_arrays, their_metrics) = ours, theirs
    assert our_arrays is not None and their_arrays is not None
    assert list(our_arrays.keys()) == list(their_arrays.keys())
    for name in their_arrays:
        a, b = our_arrays[name].numpy(), their_arrays[name].numpy()
        if dtypes is not None:
            b = b.astype(dtypes[name])
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        assert a.tobytes() == b.tobytes(), name
    assert our_metrics is not None and their_metrics is not None
    assert dict(our_metrics) == dict(their_metrics)


def expected_average(
    bodies_arrays: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """``np.average`` of each array over the replies, weighted (float64)."""
    return {
        n: np.average([a[n] for a in bodies_arrays], axis=0, weights=weights)
        for n in bodies_arrays[0]
    }


# --- WeightedFedAvg in place of FedAvg --------------------------------------------


@pytest.mark.parametrize("kind", list(NODE_ID_KINDS))
def test_weighted_fedavg_returns_fedavgs_bits_without_configure(kind: str) -> None:
    ours = WeightedFedAvg().aggregate_train(1, replies_for(kind, honest_bodies()))
    theirs = FedAvg().aggregate_train(1, replies_for(kind, honest_bodies()))
    assert_bit_identical(ours, theirs)
    expected = expected_average([quarter_arrays(k) for k in range(5)], WEIGHTS)
    arrays, metrics = ours
    assert arrays is not None and metrics is not None
    for name, value in expected.items():  # exact data: np.average agrees to the bit too
        got = arrays[name].numpy()
        assert got.tobytes() == value.astype(got.dtype).tobytes(), name
    assert metrics["train-loss"] == np.average([k / 4 for k in range(5)], weights=WEIGHTS)


@pytest.mark.parametrize("kind", list(NODE_ID_KINDS))
def test_weighted_fedavg_evaluate_matches_fedavg(kind: str) -> None:
    ours = WeightedFedAvg().aggregate_evaluate(1, replies_for(kind, honest_bodies(train=False)))
    theirs = FedAvg().aggregate_evaluate(1, replies_for(kind, honest_bodies(train=False)))
    assert ours is not None and theirs is not None
    assert dict(ours) == dict(theirs)
    assert ours["val-hr"] == np.average([(8 - k) / 8 for k in range(5)], weights=WEIGHTS)


@pytest.mark.parametrize("kind", list(NODE_ID_KINDS))
def test_weighted_fedavg_matches_np_average_on_arbitrary_values(kind: str) -> None:
    weights = [3, 1, 4, 1, 5]
    arrays, _ = WeightedFedAvg().aggregate_train(
        1, replies_for(kind, honest_bodies(weights, random_arrays))
    )
    assert arrays is not None
    expected = expected_average([random_arrays(k) for k in range(5)], weights)
    for name, value in expected.items():
        got = arrays[name].numpy()
        # The clients' dtype is kept (float32 here); np.average computes in float64.
        assert got.dtype == random_arrays(0)[name].dtype
        np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-7)


def test_a_different_weight_moves_the_result_as_np_average_predicts() -> None:
    """Negative control: the weights are read, and from the right replies."""
    heavier = [5, *WEIGHTS[1:]]  # reply 0: 1 -> 5 examples (sum 12: no longer exact)
    before, _ = WeightedFedAvg().aggregate_train(1, replies_for("mock", honest_bodies()))
    after, _ = WeightedFedAvg().aggregate_train(1, replies_for("mock", honest_bodies(heavier)))
    assert before is not None and after is not None
    values = [quarter_arrays(k) for k in range(5)]
    old, new = expected_average(values, WEIGHTS), expected_average(values, heavier)
    for name in old:
        moved = after[name].numpy().astype(np.float64) - before[name].numpy()
        predicted = new[name] - old[name]
        assert np.abs(predicted).max() > 0.01, name  # the change is not lost in rounding
        np.testing.assert_allclose(moved, predicted, rtol=1e-5, atol=1e-5)


def test_reply_order_does_not_change_weighted_fedavg_bits() -> None:
    weights = [3, 1, 4, 1, 5]
    rng = np.random.default_rng(7)
    orders = [list(range(5)), *(list(rng.permutation(5)) for _ in range(30))]

    def bits(strategy: Strategy, order: list[int]) -> bytes:
        bodies = honest_bodies(weights, random_arrays)
        arrays, _ = strategy.aggregate_train(1, [reply(bodies[k], NODES[k]) for k in order])
        assert arrays is not None
        return b"".join(arrays[n].numpy().tobytes() for n in arrays)

    assert len({bits(WeightedFedAvg(), order) for order in orders}) == 1
    # Negative control: Flower's FedAvg, summing in arrival order, changes bits on
    # this data, so the check above would notice an order-dependent sum.
    assert len({bits(FedAvg(), order) for order in orders}) > 1


def _one_bad(bad: Callable[[], RecordDict]) -> list[RecordDict]:
    return [*honest_bodies(), bad()]


BAD_PAYLOADS: dict[str, tuple[Callable[[], RecordDict], str]] = {
    "no weight": (
        lambda: content(quarter_arrays(5), {"train-loss": 0.5, "val-hr": 0.5}),
        "All MetricRecords must have the same keys",
    ),
    "weight is a list": (
        lambda: content(quarter_arrays(5), {"num-examples": [1], "train-loss": 0.5, "val-hr": 0.5}),
        "must be a single value",
    ),
    "two ArrayRecords": (
        lambda: content(
            quarter_arrays(5),
            {"num-examples": 1, "train-loss": 0.5, "val-hr": 0.5},
            more=ArrayRecord({"w": Array(quarter_arrays(6)["w"])}),
        ),
        "Expected exactly one ArrayRecord",
    ),
    "other array names": (
        lambda: content(
            {("w2" if n == "w" else n): a for n, a in quarter_arrays(5).items()},
            {"num-examples": 1, "train-loss": 0.5, "val-hr": 0.5},
        ),
        "All ArrayRecords must have the same keys",
    ),
    "two MetricRecords": (
        lambda: content(
            quarter_arrays(5),
            {"num-examples": 1, "train-loss": 0.5, "val-hr": 0.5},
            more=MetricRecord({"num-examples": 1}),
        ),
        "Expected exactly one MetricRecord",
    ),
}


@pytest.mark.parametrize("strategy_cls", [FedAvg, WeightedFedAvg])
@pytest.mark.parametrize("bad", list(BAD_PAYLOADS))
def test_weighted_fedavg_refuses_what_fedavg_refuses(strategy_cls: type[FedAvg], bad: str) -> None:
    make, match = BAD_PAYLOADS[bad]
    with pytest.raises(InconsistentMessageReplies, match=match):
        strategy_cls().aggregate_train(1, replies_for("mock", _one_bad(make)))


@pytest.mark.parametrize("strategy_cls", [FedAvg, WeightedFedAvg])
def test_replies_without_any_weight_are_refused(strategy_cls: type[FedAvg]) -> None:
    bodies = [content(quarter_arrays(k), {"train-loss": 0.5}) for k in range(3)]
    with pytest.raises(InconsistentMessageReplies, match="Missing required key `num-examples`"):
        strategy_cls().aggregate_train(1, replies_for("mock", bodies))


# --- ValidatedStrategy around Flower's strategies ---------------------------------


@pytest.mark.parametrize("kind", list(NODE_ID_KINDS))
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_wrapper_aggregates_like_the_bare_strategy_without_configure(name: str, kind: str) -> None:
    ours, theirs = wrapped(name), bare(name)
    for server_round in (1, 2):  # round 2: FedAvgM's momentum, FedAdam/FedYogi's moments
        assert_bit_identical(
            ours.aggregate_train(server_round, replies_for(kind, honest_bodies())),
            theirs.aggregate_train(server_round, replies_for(kind, honest_bodies())),
            REPLY_DTYPES,
        )


def test_wrapper_comparison_sees_a_changed_weighting() -> None:
    """Negative control: a wrapper that reweights is told apart from the bare strategy.

    With ``uniform_weights`` every weight becomes 1, so the aggregate must move
    to the unweighted ``np.average`` and away from FedAvg's.
    """
    strategy = ValidatedStrategy(FedAvg(), uniform_weights=True)
    ours = strategy.aggregate_train(1, replies_for("mock", honest_bodies()))
    theirs = FedAvg().aggregate_train(1, replies_for("mock", honest_bodies()))
    with pytest.raises(AssertionError):
        assert_bit_identical(ours, theirs, REPLY_DTYPES)
    arrays, _ = ours
    assert arrays is not None
    values = [quarter_arrays(k) for k in range(5)]
    for name, value in expected_average(values, [1] * 5).items():
        np.testing.assert_allclose(arrays[name].numpy(), value, rtol=1e-6)


@pytest.mark.parametrize("kind", ["mock", "int"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_wrapper_evaluates_like_the_bare_strategy(name: str, kind: str) -> None:
    ours = wrapped(name).aggregate_evaluate(1, replies_for(kind, honest_bodies(train=False)))
    theirs = bare(name).aggregate_evaluate(1, replies_for(kind, honest_bodies(train=False)))
    assert ours is not None and theirs is not None
    assert dict(ours) == dict(theirs)


@pytest.mark.parametrize("bad", list(BAD_PAYLOADS))
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_wrapper_drops_the_reply_the_bare_strategy_refuses(name: str, bad: str) -> None:
    make, match = BAD_PAYLOADS[bad]
    with pytest.raises(InconsistentMessageReplies, match=match):
        bare(name).aggregate_train(1, replies_for("mock", _one_bad(make)))
    strategy = wrapped(name)
    assert_bit_identical(
        strategy.aggregate_train(1, replies_for("mock", _one_bad(make))),
        bare(name).aggregate_train(1, replies_for("mock", honest_bodies())),
        REPLY_DTYPES,
    )
    assert len(strategy.dropped) == 1


class _Grid:
    """Just enough of a Grid for configure_* (node ids only)."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def sent(messages: Iterable[Message]) -> list[tuple[Any, ...]]:
    """What a configure_* call sends, per destination, comparable across strategies."""
    out = []
    for msg in messages:
        body = msg.content
        out.append(
            (
                msg.metadata.dst_node_id,
                msg.metadata.message_type,
                msg.metadata.group_id,
                {k: r.object_id for k, r in body.array_records.items()},
                {k: dict(r) for k, r in body.config_records.items()},
                sorted(body.metric_records),
            )
        )
    return sorted(out, key=lambda row: row[0])


def _configure(strategy: Strategy, which: str, server_round: int) -> list[tuple[Any, ...]]:
    arrays = ArrayRecord({n: Array(a) for n, a in quarter_arrays(99).items()})
    method = strategy.configure_train if which == "train" else strategy.configure_evaluate
    grid: Any = _Grid(NODES)
    return sent(method(server_round, arrays, ConfigRecord({"lr": 0.5}), grid))


@pytest.mark.parametrize("which", ["train", "evaluate"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_wrapper_configures_like_the_bare_strategy(name: str, which: str) -> None:
    ours = _configure(ValidatedStrategy(STRATEGIES[name]()), which, 3)
    theirs = _configure(STRATEGIES[name](), which, 3)
    assert ours == theirs
    assert [row[0] for row in theirs] == sorted(NODES)  # everyone is asked


@pytest.mark.parametrize("which", ["train", "evaluate"])
def test_configure_comparison_sees_a_different_round(which: str) -> None:
    """Negative control: ``sent`` tells apart messages that differ (server-round)."""
    assert _configure(FedAvg(), which, 3) != _configure(FedAvg(), which, 4)


def test_wrapper_passes_on_the_attributes_flowers_tests_use() -> None:
    """Flower's fedopt tests set ``current_arrays`` and call a FedOpt helper."""
    inner = FedAdam()
    strategy: Any = ValidatedStrategy(inner)
    current = {"0": np.array(0.0)}
    strategy.current_arrays = current
    assert inner.current_arrays is current
    assert strategy.eta == inner.eta
    good = ArrayRecord({"0": Array(np.array(1.0))})
    strategy._compute_deltat_and_mt(good)
    with pytest.raises(AggregationError, match="Keys of the aggregated arrays"):
        strategy._compute_deltat_and_mt(ArrayRecord({"1": Array(np.array(1.0))}))
    assert strategy.dropped == []  # the wrapper's own attributes stay its own
    assert not hasattr(inner, "dropped")
    with pytest.raises(AttributeError):
        _ = strategy.no_such_attribute
