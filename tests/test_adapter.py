"""The NumPyClient -> Message-API adapter keeps names and refuses mismatches."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.compat.client.numpy_client import NumPyClient

from fedrec_flwr.client.adapter import numpy_client_app

pytestmark = pytest.mark.usefixtures("server_identity")


class Doubler(NumPyClient):
    """Named arrays 'b' then 'a'; fit doubles them, evaluate sums them."""

    def array_names(self):
        return ["b", "a"]

    def fit(self, parameters, config):
        self.seen = config
        return [2 * p for p in parameters], 7, {"ok": True, "lr": np.float32(0.5)}

    def evaluate(self, parameters, config):
        return float(sum(p.sum() for p in parameters)), 3, {"score": 1}


def _message(arrays, kind):
    record = ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()})
    content = RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 4})})
    return Message(content, dst_node_id=5, message_type=kind)


def _ctx():
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def test_train_keeps_names_and_weight():
    client = Doubler()
    app = numpy_client_app(lambda ctx: client)
    reply = app(_message({"a": [1.0, 2.0], "b": [10.0]}, "train"), _ctx())
    arrays = reply.content["arrays"]
    np.testing.assert_array_equal(arrays["a"].numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(arrays["b"].numpy(), [20.0])
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 7 and metrics["ok"] == 1 and metrics["lr"] == 0.5
    assert client.seen["server-round"] == 4


def test_evaluate_reports_loss_and_weight():
    app = numpy_client_app(lambda ctx: Doubler())
    reply = app(_message({"a": [1.0, 2.0], "b": [10.0]}, "evaluate"), _ctx())
    assert dict(reply.content["metrics"]) == {
        "loss": 13.0,
        "score": 1,
        "num-examples": 3,
    }


def test_unknown_or_missing_array_names_are_errors():
    app = numpy_client_app(lambda ctx: Doubler())
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['user_gmf.weight'\]"):
        app(_message({"a": [1.0], "user_gmf.weight": [0.0]}, "train"), _ctx())


def test_string_metrics_are_refused():
    class Chatty(Doubler):
        def evaluate(self, parameters, config):
            return 0.0, 1, {"note": "hi"}

    app = numpy_client_app(lambda ctx: Chatty())
    with pytest.raises(TypeError, match="metric 'note'='hi'"):
        app(_message({"a": [1.0], "b": [1.0]}, "evaluate"), _ctx())
