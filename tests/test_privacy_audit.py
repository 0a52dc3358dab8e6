"""The server-side item-inference audit: known answers, negative controls, a run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import write_u_data

from fedrec_flwr.app.client_app import app as client_app
from fedrec_flwr.config import RunConfig
from fedrec_flwr.datasets import prepare_data
from fedrec_flwr.models import ARCHITECTURES, build_model, shared_arrays
from fedrec_flwr.privacy.audit import (
    ATTACKS,
    REPORTED_COUNTS,
    AttackResult,
    auc,
    audit_reply,
    direction_attack,
    score_attack,
    signature_attack,
)
from fedrec_flwr.privacy.grid import AuditedGrid, audit_summary, plot_audit
from fedrec_flwr.protocol import PARTITION_ID_KEY
from fedrec_flwr.runs.federated import initial_arrays, run_federated
from fedrec_flwr.strategies import WeightedFedAvg
from fedrec_flwr.testing.inprocess import InProcessGrid

logging.getLogger("flwr").setLevel(logging.WARNING)


def _model(arch: str, num_items: int = 10, seed: int = 0):
    return build_model(arch, 1, num_items, factors=4, mlp_layers=(8, 4), seed=seed)


def _moved(sent, table, plus, minus, direction, scale=0.1):
    """A reply where rows ``plus`` moved along +direction, ``minus`` along -direction."""
    reply = {k: v.copy() for k, v in sent.items()}
    reply[table][plus] += scale * direction
    reply[table][minus] -= scale * direction
    return reply


@pytest.mark.parametrize("arch", ["gmf", "neumf"])
def test_rows_moved_along_a_direction_are_found(arch):
    model = _model(arch)
    sent = shared_arrays(model)
    direction = np.array([1.0, -2.0, 0.5, 1.5], dtype=np.float32)
    reply = _moved(sent, "item_gmf.weight", [3, 5], [0, 1, 2, 4, 6, 7], direction)
    found = {r.attack: set(np.flatnonzero(r.predicted)) for r in audit_reply(sent, reply, model)}
    assert found == {"changed-rows": set(range(8)), "direction": {3, 5}, "signature": {3, 5}}
    truth = np.array([3, 5])
    for result in audit_reply(sent, reply, model):
        scored = score_attack(result, truth)
        assert scored["recall"] == 1.0 and scored["true-items"] == 2
        assert scored["base-rate"] == pytest.approx(0.2)
        if result.attack != "changed-rows":
            assert scored["precision"] == 1.0 and scored["auc"] == 1.0


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in ("gmf", "mlp", "neumf")])
def test_every_family_is_audited(arch):
    """MF, hybrid, LightGCN, SASRec: rows moved along +/- a direction of the first item
    table are read by both direction attacks (without a user row to fit, the
    signature is the table's main direction); an unchanged reply reveals nothing."""
    model = _model(arch, num_items=12)
    sent = shared_arrays(model)
    table = model.item_tables()[0]
    direction = np.array([1.0, -2.0, 0.5, 1.5], dtype=np.float32)
    reply = _moved(sent, table, [3, 5], [0, 1, 2, 4, 6, 7], direction)
    found = {r.attack: set(np.flatnonzero(r.predicted)) for r in audit_reply(sent, reply, model)}
    assert found == {"changed-rows": set(range(8)), "direction": {3, 5}, "signature": {3, 5}}
    for result in audit_reply(sent, dict(sent), model):
        assert not result.predicted.any(), result.attack


def test_direction_falls_back_to_the_first_item_table_for_mlp():
    model = _model("mlp")
    sent = shared_arrays(model)
    direction = np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    reply = _moved(sent, "item_mlp.weight", [1, 8], [0, 2, 3, 4, 5], direction)
    assert set(np.flatnonzero(direction_attack(sent, reply, model).predicted)) == {1, 8}


@pytest.mark.parametrize("arch", ["gmf", "mlp", "neumf"])
def test_an_unchanged_reply_reveals_nothing(arch):
    # Negative control: the server's own arrays echoed back.
    model = _model(arch)
    sent = shared_arrays(model)
    for result in audit_reply(sent, {k: v.copy() for k, v in sent.items()}, model):
        assert not result.predicted.any(), result.attack
        scored = score_attack(result, np.array([1, 2]))
        assert scored["inferred"] == 0 and scored["precision"] is None
        assert scored["recall"] == 0.0 and scored["auc"] == 0.5


def test_auc_known_values():
    truth = np.array([False, True, False, True, False])
    assert auc(np.array([0.0, 1.0, 0.2, 0.9, 0.1]), truth) == 1.0
    assert auc(np.array([1.0, 0.0, 0.9, 0.1, 0.8]), truth) == 0.0
    assert auc(np.zeros(5), truth) == 0.5
    assert auc(np.full(5, -np.inf), truth) == 0.5
    # Unchanged rows (-inf) rank below every changed one; ties count one half.
    assert auc(np.array([-np.inf, 0.3, -np.inf, 0.3, 0.3]), truth) == pytest.approx(5 / 6)
    assert np.isnan(auc(np.ones(3), np.ones(3, dtype=bool)))


def test_without_truth_only_the_inferred_count():
    result = AttackResult("direction", np.array([1.0, -1.0, 2.0]), np.array([True, False, True]))
    assert score_attack(result, None) == {
        "inferred": 2,
        "true-items": None,
        "base-rate": None,
        "precision": None,
        "recall": None,
        "auc": None,
        "auc-either-sign": None,
    }


def test_an_attack_that_ranks_in_reverse_is_read_as_leakage():
    truth = np.array([0, 1])
    scores = np.array([-2.0, -1.0, 1.0, 2.0, 3.0])  # the training items rank last
    scored = score_attack(AttackResult("direction", scores, scores > 0), truth)
    assert scored["auc"] == 0.0 and scored["auc-either-sign"] == 1.0
    fair = score_attack(AttackResult("direction", -scores, -scores > 0), truth)
    assert fair["auc"] == fair["auc-either-sign"] == 1.0


def test_unknown_attack_is_refused():
    model = _model("gmf")
    sent = shared_arrays(model)
    with pytest.raises(ValueError, match="unknown attack"):
        audit_reply(sent, sent, model, attacks=["oracle"])


def _one_user_reply(arch, positives, negatives, *, num_items=200, steps=5, seed=0):
    """Sent arrays and one user's reply after a few Adam steps of BCE, as a node trains."""
    model = build_model(arch, 1, num_items, factors=8, mlp_layers=(16, 8), seed=seed)
    sent = shared_arrays(model)
    items = torch.as_tensor(np.concatenate([positives, negatives]))
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    users = torch.zeros(len(items), dtype=torch.long)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(users, items), labels)
        loss.backward()
        optimiser.step()
    probe = build_model(arch, 1, num_items, factors=8, mlp_layers=(16, 8), seed=seed)
    return probe, sent, shared_arrays(model)


@pytest.mark.parametrize("arch", ["gmf", "neumf"])
def test_a_trained_one_user_reply_is_read_exactly(arch):
    rng = np.random.default_rng(1)
    order = rng.permutation(200)
    positives, negatives = order[:15], order[15:75]
    model, sent, reply = _one_user_reply(arch, positives, negatives)
    results = {r.attack: r for r in audit_reply(sent, reply, model)}
    assert set(np.flatnonzero(results["changed-rows"].predicted)) == set(order[:75])
    for name in ("direction", "signature"):
        scored = score_attack(results[name], positives)
        assert scored["precision"] == 1.0 and scored["recall"] == 1.0, name
        assert scored["auc"] == 1.0, name


def test_noise_on_the_update_pulls_the_auc_towards_one_half():
    rng = np.random.default_rng(2)
    order = rng.permutation(200)
    positives, negatives = order[:15], order[15:75]
    model, sent, reply = _one_user_reply("neumf", positives, negatives)
    tables = model.item_tables()
    scale = np.mean([np.abs(reply[t] - sent[t]).max() for t in tables])
    aucs = []
    for sigma in (0.0, 0.3, 3.0, 300.0):
        noisy = dict(reply)
        for table in tables:
            noise = rng.normal(0.0, sigma * scale, size=reply[table].shape)
            noisy[table] = (reply[table] + noise).astype(np.float32)
        result = signature_attack(sent, noisy, model)
        aucs.append(score_attack(result, positives)["auc"])
    assert aucs[0] == 1.0
    assert aucs[0] >= aucs[1] >= aucs[3] - 0.05 and aucs[1] > aucs[2]
    assert abs(aucs[3] - 0.5) < 0.15


def test_signature_is_deterministic():
    rng = np.random.default_rng(3)
    order = rng.permutation(200)
    model, sent, reply = _one_user_reply("neumf", order[:10], order[10:50])
    first = signature_attack(sent, reply, model, seed=4).scores
    assert np.array_equal(first, signature_attack(sent, reply, model, seed=4).scores)


def test_summary_and_figure(tmp_path):
    records = [
        {"round": r, "node": n, PARTITION_ID_KEY: n, "attack": a, **values}
        for r in (1, 3)
        for n in (0, 1)
        for a, values in (
            ("direction", {"inferred": 5 + n, "auc": 0.8 + 0.1 * n, "precision": 1.0}),
            ("changed-rows", {"inferred": 9, "auc": 0.6, "precision": 0.5}),
        )
    ]
    summary = audit_summary(records)
    assert [(s["round"], s["attack"]) for s in summary] == [
        (1, "changed-rows"),
        (1, "direction"),
        (3, "changed-rows"),
        (3, "direction"),
    ]
    assert summary[1]["auc"] == pytest.approx({"mean": 0.85, "min": 0.8, "max": 0.9})
    assert summary[1]["nodes"] == 2 and summary[1]["recall"] is None
    plot_audit(records, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 10_000
    # Deployment: no truth, the figure shows the inferred counts only.
    blind = [
        {k: v for k, v in r.items() if k in ("round", "node", "attack", "inferred")}
        for r in records
    ]
    plot_audit(blind, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 5_000


def _sparse_rows(users=16, items=120, per_user=12, seed=0):
    """Each user rated a few random items: a node's training items are a small share."""
    rng = np.random.default_rng(seed)
    return [
        (u + 1, int(i) + 1, 4, 1_000_000 + t)
        for u in range(users)
        for t, i in enumerate(rng.choice(items, per_user, replace=False))
    ]


def _audited_run(tmp_path, **overrides):
    """An audited in-process run over two nodes of :func:`_sparse_rows`; its results."""
    data_dir = write_u_data(tmp_path / "data", _sparse_rows())
    rc = {
        "data-dir": str(data_dir),
        "local-epochs": 1,
        "num-eval-negatives": 20,
        "factors": 8,
        "batch-size": 64,
        "top-k": "1",
        "privacy-audit": True,
        **overrides,
    }
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    grid = InProcessGrid(client_app, nodes, rc)
    path = run_federated(grid, RunConfig.from_mapping(rc), tmp_path / "out")
    return path, json.loads(path.read_text())


def test_an_audited_in_process_run_writes_the_audit(tmp_path):
    path, results = _audited_run(
        tmp_path, **{"num-server-rounds": 3, "mlp-layers": "16,8", "privacy-audit-every": 2}
    )
    audit = results["privacy-audit"]
    records = audit["records"]
    assert {(r["round"], r[PARTITION_ID_KEY]) for r in records} == {
        (1, 0),
        (1, 1),
        (3, 0),
        (3, 1),
    }
    assert {r["attack"] for r in records} == set(ATTACKS)
    for record in records:
        assert record["node"] in (101, 102) and record["true-items"] > 0
        assert 0 <= record["auc"] <= 1 and 0 <= record["recall"] <= 1
        assert 0 < record["base-rate"] < 1
    changed = [r for r in records if r["attack"] == "changed-rows"]
    assert all(r["recall"] == 1.0 for r in changed)  # every positive row moved
    # Round 1 of an 8-user node: the signature reads it above chance.
    first = [r for r in records if r["attack"] == "signature" and r["round"] == 1]
    assert all(r["auc"] > 0.6 for r in first), first
    assert {(s["round"], s["attack"]) for s in audit["summary"]} == {
        (r, a) for r in (1, 3) for a in ATTACKS
    }
    assert (path.parent / "privacy-audit.png").stat().st_size > 10_000


_SHORT_SASREC = {"model": "sasrec", "max-seq-len": 8, "sequence-stride": 4}


@pytest.mark.parametrize(
    ("overrides", "every_row_moves"),
    [
        ({**_SHORT_SASREC, "sequence-loss": "ce"}, True),
        ({**_SHORT_SASREC, "sequence-loss": "bce"}, False),
        ({"model": "lightgcn", "gcn-layers": 1}, False),
    ],
)
def test_an_audited_run_of_a_non_pairwise_family(tmp_path, overrides, every_row_moves):
    """SASRec and LightGCN replies are audited too. Softmax CE moves every item row,
    so which rows changed says nothing; sampled negatives leave the rest unchanged."""
    _, results = _audited_run(tmp_path, **{"num-server-rounds": 1, **overrides})
    records = results["privacy-audit"]["records"]
    assert {(r[PARTITION_ID_KEY], r["attack"]) for r in records} == {
        (p, a) for p in (0, 1) for a in ATTACKS
    }
    for record in records:
        assert 0 <= record["auc"] <= 1 and record["true-items"] > 0, record
    changed = [r for r in records if r["attack"] == "changed-rows"]
    assert all(r["recall"] == 1.0 for r in changed)
    catalogue = {round(r["true-items"] / r["base-rate"]) for r in records}
    assert len(catalogue) == 1
    assert all((r["inferred"] == min(catalogue)) == every_row_moves for r in changed), changed


def test_no_audit_by_default(tmp_path):
    data_dir = write_u_data(tmp_path / "data", _sparse_rows(users=4))
    rc = {
        "data-dir": str(data_dir),
        "num-server-rounds": 1,
        "local-epochs": 1,
        "num-eval-negatives": 20,
        "factors": 4,
        "mlp-layers": "8,4",
        "top-k": "1",
    }
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    path = run_federated(InProcessGrid(client_app, nodes, rc), RunConfig.from_mapping(rc), tmp_path)
    assert "privacy-audit" not in json.loads(path.read_text())
    assert not (tmp_path / "privacy-audit.png").exists()


def test_rowwise_replies_report_their_items(tmp_path):
    data_dir = write_u_data(tmp_path / "data", _sparse_rows(users=8))
    rc = {
        "data-dir": str(data_dir),
        "num-server-rounds": 1,
        "local-epochs": 1,
        "num-eval-negatives": 20,
        "factors": 4,
        "mlp-layers": "8,4",
        "top-k": "1",
        "item-aggregation": "rowwise",
        "privacy-audit": True,
    }
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    path = run_federated(InProcessGrid(client_app, nodes, rc), RunConfig.from_mapping(rc), tmp_path)
    records = json.loads(path.read_text())["privacy-audit"]["records"]
    reported = [r for r in records if r["attack"] == REPORTED_COUNTS]
    assert len(reported) == 2
    assert all(r["precision"] == r["recall"] == r["auc"] == 1.0 for r in reported)


def test_without_truth_the_grid_reports_what_it_infers(tmp_path):
    # A deployment: the server does not know the nodes' items.
    data_dir = write_u_data(tmp_path / "data", _sparse_rows(users=8))
    rc = {
        "data-dir": str(data_dir),
        "local-epochs": 1,
        "num-eval-negatives": 20,
        "factors": 4,
        "mlp-layers": "8,4",
        "top-k": "1",
    }
    cfg = RunConfig.from_mapping(rc)
    num_items = prepare_data(cfg.data).num_items
    nodes = [{"partition-id": p, "num-partitions": 2} for p in range(2)]
    model = build_model("neumf", 1, num_items, factors=4, mlp_layers=(8, 4))
    grid = AuditedGrid(InProcessGrid(client_app, nodes, rc), model)
    WeightedFedAvg().start(grid=grid, initial_arrays=initial_arrays(cfg, num_items), num_rounds=1)
    assert {(r["round"], r["attack"]) for r in grid.records} == {(1, a) for a in ATTACKS}
    for record in grid.records:
        assert record["inferred"] > 0 and record[PARTITION_ID_KEY] in (0, 1)
        assert record["precision"] is record["auc"] is record["true-items"] is None
    summary = audit_summary(grid.records)
    assert all(s["auc"] is None and s["inferred"]["mean"] > 0 for s in summary)


def test_identical_sent_models_are_kept_once(server_identity):
    # One user per node: the same global model must not be held once per node.
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from fedrec_flwr.privacy.grid import _sent_arrays

    def content(value):
        return RecordDict({"arrays": ArrayRecord({"w": Array(np.full(3, value, np.float32))})})

    messages = [
        Message(content=content(v), dst_node_id=n, message_type="train")
        for n, v in ((1, 1.0), (2, 1.0), (3, 2.0))
    ]
    sent = _sent_arrays(messages)
    assert sent[1] is sent[2] and sent[3] is not sent[1]
    assert sent[3]["w"].tolist() == [2.0, 2.0, 2.0]


def test_an_unreadable_reply_or_truth_does_not_stop_the_audit(server_identity):
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    model = _model("gmf")
    sent = shared_arrays(model)

    def bad_truth(partition_id, num_partitions):
        raise ValueError("partition-id out of range")

    grid = AuditedGrid(InProcessGrid(client_app, [], {}), model, truth=bad_truth)
    wrong = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))})})
    grid._audit(1, 7, sent, wrong)  # no item tables: skipped, with a warning
    assert grid.records == []
    reply = _moved(sent, "item_gmf.weight", [3, 5], [0, 1, 2], np.ones(4, np.float32))
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in reply.items()}),
            "metrics": MetricRecord({PARTITION_ID_KEY: 9, "num-partitions": 10}),
        }
    )
    grid._audit(1, 7, sent, content)
    assert [r["attack"] for r in grid.records] == list(ATTACKS)
    assert all(r["true-items"] is None and r["inferred"] > 0 for r in grid.records)
