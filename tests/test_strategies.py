import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrec_flwr.strategies import (
    WeightedFedAvg,
    exact_metric_aggregation,
    order_replies,
)


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    # Flower stamps instruction messages with the process's task identity.
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


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
