"""`flwr run .` for real: local SuperLink, simulation engine, Ray, the FAB.

The SuperLink that `flwr run` starts is detached by Flower's design; this test
gives it its own FLWR_HOME and ports, and stops it and every child by pid in a
`finally`, so no Flower process outlives the test.
"""

import json

import pytest
import torch
from conftest import flwr_run

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.runs.federated import run_federated
from fedrec_flwr.testing.inprocess import InProcessGrid

pytestmark = pytest.mark.flower


def test_flwr_run_trains_and_writes_results(tmp_path, ml100k_dir):
    out = tmp_path / "results"
    run_config = f"num-server-rounds=2 local-epochs=1 data-dir='{ml100k_dir}' output-dir='{out}'"
    code, log, _ = flwr_run(tmp_path, run_config)
    assert code == 0 and (out / "results.json").is_file(), log[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num-clients"] == 2 and [r["round"] for r in results["rounds"]] == [
        1,
        2,
    ]
    assert all(r["failures"] == 0 and r["bytes-received"] > 0 for r in results["rounds"])
    assert results["rounds"][-1]["test"]["hr@10"] > 0.3
    assert not any("user" in k for k in torch.load(out / "model.pt")["state_dict"])
    assert (out / "metrics.png").is_file()
    assert f"wrote {out}" in log
    # After the last round every node wrote the top-k of its users: all 943.
    delivery = results["delivery"]
    assert delivery["failures"] == [] and delivery["users-served"] == 943, delivery

    # The same seed and config in this process (no Ray, shuffled reply order)
    # gives the very same per-round metrics and model bits.
    rc = {"num-server-rounds": 2, "local-epochs": 1, "data-dir": str(ml100k_dir)}
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc, shuffle_seed=1)
    again = json.loads(
        run_federated(grid, RunConfig.from_mapping(rc), tmp_path / "again").read_text()
    )

    def comparable(rounds):
        timing = ("wall-seconds", "client-train-seconds", "client-eval-seconds")
        return [{k: v for k, v in r.items() if k not in timing} for r in rounds]

    assert comparable(results["rounds"]) == comparable(again["rounds"])
    ours = torch.load(tmp_path / "again" / "model.pt")["state_dict"]
    theirs = torch.load(out / "model.pt")["state_dict"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
