"""Client modes: personalised fine-tuning, private layers, FedProx (in-process, small)."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import checkerboard_rows, write_u_data
from flwr.app import Context, RecordDict

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.app.client_app import client_fn
from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import InteractionSet
from fedrec_flwr.models import NCF
from fedrec_flwr.protocol import PERSONAL_STATE_KEY
from fedrec_flwr.runs.federated import initial_arrays, run_federated
from fedrec_flwr.testing.inprocess import InProcessGrid
from fedrec_flwr.train.group import train_epochs

logging.getLogger("flwr").setLevel(logging.WARNING)

SMALL = {"factors": 8, "mlp-layers": "16,8", "batch-size": 64, "top-k": "1"}


def _grid(rc, n, **kwargs):
    nodes = [{"partition-id": p, "num-partitions": n} for p in range(n)]
    return InProcessGrid(client_app, nodes, rc, **kwargs)


@pytest.fixture(scope="module")
def personal_run(tmp_path_factory):
    data = write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())
    rc = {
        "data-dir": str(data),
        "num-server-rounds": 2,
        "finetune-epochs": 1,
        "private-layers": "output",
        "num-eval-negatives": 20,
        **SMALL,
    }
    grid = _grid(rc, 2)
    out = tmp_path_factory.mktemp("personal")
    cfg = RunConfig.from_mapping(rc)
    path = run_federated(grid, cfg, out)
    return grid, json.loads(path.read_text()), out, initial_arrays(cfg, 60)


def test_each_round_reports_global_and_personalised_metrics(personal_run):
    _, results, _, _ = personal_run
    for entry in results["rounds"]:
        assert (
            set(entry["global-val"])
            == set(entry["val"])
            == {"hr@1", "ndcg@1", "hr@10", "ndcg@10"}
            | {f"full-{m}@{k}" for m in ("hr", "recall", "ndcg") for k in (1, 10)}
        )
        assert set(entry["global-test"]) == set(entry["test"])
        # Fine-tuning changed the model: personalised and global numbers differ.
        assert entry["val"] != entry["global-val"]
    assert results["selected"]["by"] == "val-hr@10"  # selected on personalised validation


def test_private_layers_never_leave_the_client(personal_run):
    grid, _, out, initial_record = personal_run
    initial = initial_record["output.weight"].numpy()
    for reply in grid.replies:
        for record in reply.content.array_records.values():
            # Every client echoes the server's copy, which therefore does not move
            # (up to the rounding of averaging identical copies).
            np.testing.assert_allclose(record["output.weight"].numpy(), initial, atol=1e-7)
            assert not np.allclose(record["item_gmf.weight"].numpy(), 0, atol=1e-3)
    saved = torch.load(out / "model.pt")["state_dict"]
    np.testing.assert_allclose(saved["output.weight"].numpy(), initial, atol=1e-7)
    personal = [
        ctx.state.array_records[PERSONAL_STATE_KEY]["output.weight"].numpy()
        for ctx in grid.contexts.values()
    ]
    assert np.abs(personal[0] - initial).max() > 1e-3  # trained
    assert not np.array_equal(personal[0], personal[1])  # and personal to each client


def test_unknown_private_layer_is_a_clear_error(personal_run):
    grid, _, _, _ = personal_run
    rc = {**next(iter(grid.contexts.values())).run_config, "private-layers": "outptu"}
    ctx = Context(1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), rc)
    client = client_fn(ctx)
    with pytest.raises(ValueError, match=r"private-layers=outptu: \['outptu'\] match no shared"):
        client.fit(client.get_parameters({}), {"server-round": 1})


@pytest.mark.parametrize("mu", [0.0, 10.0])
def test_proximal_term_pulls_towards_the_global_model(mu):
    users = np.repeat(np.arange(4), 5)
    items = np.tile(np.arange(5), 4)

    deltas = {}
    for m in (0.0, mu):
        model = NCF(4, 30, "gmf", 4, (8,), seed=0)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if "user" not in n}
        train_epochs(
            model,
            users,
            items,
            InteractionSet(users, items, 30),
            epochs=3,
            batch_size=8,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
            num_negatives=2,
            rng=np.random.default_rng(0),
            proximal_mu=m,
            anchor=anchor,
        )
        params = dict(model.named_parameters())
        deltas[m] = sum(float((params[n].detach() - a).norm() ** 2) for n, a in anchor.items())
    if mu == 0.0:
        assert deltas[0.0] > 0
    else:
        assert deltas[mu] < 0.5 * deltas[0.0]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"model": "mf"}, id="mf-private-scope"),
        pytest.param({"model": "gmf", "finetune-scope": "all"}, id="gmf-all-scope"),
        pytest.param({"model": "gmf", "client-mode": "per-user"}, id="gmf-per-user"),
        pytest.param({"model": "lightgcn"}, id="lightgcn"),
        pytest.param({"model": "sasrec", "finetune-scope": "all"}, id="sasrec"),
    ],
)
def test_fine_tuning_leaves_the_global_runs_series_bit_identical(tmp_path, extra):
    # benchmarks/quality.py reads a FedAvg row off its fine-tuned twin's global-*
    # columns; that is exact only if fine-tuning never feeds back into training.
    data = write_u_data(tmp_path / "data", checkerboard_rows())
    rc = {"data-dir": str(data), "num-server-rounds": 3, "num-eval-negatives": 20}
    rc |= {**SMALL, **extra}
    runs = {}
    for name, tuned in (("plain", {}), ("tuned", {"finetune-epochs": 2})):
        cfg = RunConfig.from_mapping({**rc, **tuned})
        path = run_federated(_grid({**rc, **tuned}, 2), cfg, tmp_path / name)
        runs[name] = json.loads(path.read_text())["rounds"]
    plain, tuned_rounds = runs["plain"], runs["tuned"]
    assert [r["val"] for r in plain] == [r["global-val"] for r in tuned_rounds]
    assert [r["test"] for r in plain] == [r["global-test"] for r in tuned_rounds]
    # Negative control: the personalised numbers do differ from the global ones.
    assert [r["val"] for r in tuned_rounds] != [r["global-val"] for r in tuned_rounds]
