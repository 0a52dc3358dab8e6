import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrec_flwr.strategies import (
    WeightedFedAvg,
    exact_metric_aggregation,
    order_replies,
    rowwise_average,
    weighted_average,
)

pytestmark = pytest.mark.usefixtures("server_identity")


def _reply(node_id, arrays, metrics):
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type="train")
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(content, reply_to=instruction)


def _records(*metrics):
    return [RecordDict({"m": MetricRecord(m)}) for m in metrics]


def test_sums_become_exact_global_means_not_means_of_means():
    records = _records(
        {"num-examples": 4, "val-hr@10-sum": 3.0, "partition-id": 0},
        {"num-examples": 6, "val-hr@10-sum": 1.0, "partition-id": 1},
    )
    out = exact_metric_aggregation(records, "num-examples")
    assert out["val-hr@10"] == pytest.approx(4 / 10)  # mean of means would be 0.458
    assert set(out) == {"val-hr@10"}  # weight and partition-id dropped


def test_plain_metrics_are_weighted_means():
    records = _records({"num-examples": 1, "loss": 1.0}, {"num-examples": 3, "loss": 5.0})
    out = exact_metric_aggregation(records, "num-examples")
    assert out["loss"] == pytest.approx(np.average([1.0, 5.0], weights=[1, 3]))


@pytest.mark.parametrize("weights", [[0, 0], [1, -1], [1, math.nan], [1, math.inf]])
def test_bad_weights_are_rejected(weights):
    records = _records(*({"num-examples": w, "loss": 1.0} for w in weights))
    with pytest.raises(ValueError, match="do not sum to a positive finite number"):
        exact_metric_aggregation(records, "num-examples")


def test_weighted_fedavg_matches_np_average_including_0d():
    rng = np.random.default_rng(0)
    weights = [10, 30, 60]
    arrays = [{"item": rng.normal(size=(4, 3)), "bias": np.array(rng.normal())} for _ in weights]
    replies = [
        _reply(100 + k, a, {"num-examples": w, "train-loss": 0.1 * k, "partition-id": k})
        for k, (a, w) in enumerate(zip(arrays, weights, strict=True))
    ]
    agg, metrics = WeightedFedAvg().aggregate_train(1, replies)
    for name in ("item", "bias"):
        expected = np.average([a[name] for a in arrays], axis=0, weights=weights)
        np.testing.assert_allclose(agg[name].numpy(), expected, rtol=1e-12)
    assert agg["bias"].numpy().shape == ()
    assert metrics["train-loss"] == pytest.approx(np.average([0.0, 0.1, 0.2], weights=weights))


def test_reply_order_does_not_change_a_bit():
    rng = np.random.default_rng(1)
    replies = [
        _reply(
            900 - k,
            {"w": rng.normal(size=50).astype(np.float32)},
            {"num-examples": int(rng.integers(1, 100)), "partition-id": k},
        )
        for k in range(6)
    ]
    first, _ = WeightedFedAvg().aggregate_train(1, replies)
    for seed in range(5):
        shuffled = [replies[i] for i in np.random.default_rng(seed).permutation(6)]
        again, _ = WeightedFedAvg().aggregate_train(1, shuffled)
        assert again["w"].numpy().tobytes() == first["w"].numpy().tobytes()
    assert [r.metadata.src_node_id for r in order_replies(replies[::-1])] == [
        900 - k for k in range(6)
    ]


# --- pure aggregation functions ---------------------------------------------------


def test_weighted_average_matches_np_average_including_0d():
    arrays = [np.array(1.0), np.array(4.0), np.array(-2.0)]
    weights = [1, 2, 1]
    # (1*1 + 4*2 - 2*1) / 4 = 7/4, by hand
    assert weighted_average(arrays, weights) == pytest.approx(1.75)
    assert weighted_average(arrays, weights).shape == ()
    tables = [np.arange(6.0).reshape(2, 3) * k for k in (1, 2, 3)]
    np.testing.assert_allclose(
        weighted_average(tables, [3, 1, 1]), np.average(tables, axis=0, weights=[3, 1, 1])
    )
    with pytest.raises(ValueError, match="do not sum to a positive finite number"):
        weighted_average(tables, [0, 0, 0])


def test_weighted_average_is_flowers_fedavg_to_the_bit():
    rng = np.random.default_rng(3)
    arrays = [{"w": rng.normal(size=(7, 5)).astype(np.float32)} for _ in range(4)]
    weights = [13, 2, 40, 7]
    replies = [
        _reply(10 + k, a, {"num-examples": w, "partition-id": k})
        for k, (a, w) in enumerate(zip(arrays, weights, strict=True))
    ]
    agg, _ = WeightedFedAvg().aggregate_train(1, replies)
    mine = weighted_average([a["w"] for a in arrays], weights)
    assert agg["w"].numpy().tobytes() == mine.tobytes()


def test_rowwise_average_by_hand():
    previous = np.array([[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]])
    a = np.array([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    b = np.array([[3.0, 3.0], [6.0, 6.0], [7.0, 7.0]])
    counts = [np.array([1, 3, 0]), np.array([3, 1, 0])]
    out = rowwise_average([a, b], counts, previous)
    # row 0: (1*1 + 3*3)/4 = 2.5; row 1: (3*2 + 1*6)/4 = 3; row 2: nobody -> previous
    np.testing.assert_allclose(out, [[2.5, 2.5], [3.0, 3.0], [9.0, 9.0]])
    np.testing.assert_allclose(out[0], np.average([a[0], b[0]], axis=0, weights=[1, 3]))
    with pytest.raises(ValueError, match="counts must be finite, >= 0"):
        rowwise_average([a, b], [np.array([1, -1, 0]), counts[1]], previous)


def test_rowwise_fedavg_keeps_untrained_items_and_averages_the_rest_densely():
    class _Grid:
        def get_node_ids(self):
            return [1, 2]

    glob = {"item_gmf.weight": np.zeros((3, 2), np.float32), "output.bias": np.array(0.0)}
    strategy = WeightedFedAvg(rowwise_items=True)
    messages = list(
        strategy.configure_train(
            1, ArrayRecord({k: Array(v) for k, v in glob.items()}), ConfigRecord(), _Grid()
        )
    )
    assert messages[0].content["config"]["item-counts"] is True  # clients are asked
    a = {"item_gmf.weight": np.full((3, 2), 1.0, np.float32), "output.bias": np.array(1.0)}
    b = {"item_gmf.weight": np.full((3, 2), 4.0, np.float32), "output.bias": np.array(4.0)}
    replies = [
        _reply(1, a, {"num-examples": 1, "partition-id": 0, "item-counts": [2, 1, 0]}),
        _reply(2, b, {"num-examples": 3, "partition-id": 1, "item-counts": [0, 1, 0]}),
    ]
    agg, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(agg["item_gmf.weight"].numpy()[:, 0], [1.0, 2.5, 0.0])
    assert agg["item_gmf.weight"].numpy().dtype == np.float32
    assert float(agg["output.bias"].numpy()) == pytest.approx(np.average([1, 4], weights=[1, 3]))
