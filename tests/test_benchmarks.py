"""The benchmark scripts run from a clean clone (their ``--quick`` sizes).

Numbers are not asserted against targets here (those are read off the full
runs); these tests keep the scripts working and their outputs well formed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.flower, pytest.mark.benchmark]  # speed.py starts `flwr run`


def _run(script: str, out, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out", str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_quality_quick(tmp_path, ml100k_dir):
    text = _run("quality.py", tmp_path, "--data-dir", str(ml100k_dir))
    assert "| centralised NeuMF |" in text and "| FedAvg · one user per client |" in text
    summary = json.loads((tmp_path / "quality.json").read_text())
    assert [s["label"] for s in summary] == [
        "centralised NeuMF",
        "FedAvg · 10 groups",
        "FedAvg · one user per client",
    ]
    for row in summary:
        assert 0 < row["hr"][0] <= 1 and 0 < row["ndcg"][0] <= row["hr"][0]
        # The sampled negatives are a subset of the items a full ranking ranks
        # against: no user's full rank is better than its sampled one.
        assert 0 <= row["full-hr"][0] <= row["hr"][0] and row["full-ndcg"][0] <= row["ndcg"][0]
    assert "| full HR@10 |" in text
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_speed_quick(tmp_path, ml100k_dir):
    text = _run("speed.py", tmp_path, "--data-dir", str(ml100k_dir))
    assert "centralised epoch" in text and "| 10 groups |" in text
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["central-epoch"] > 0
    per_user = result["rows"][1]
    assert per_user["clients"] == 10 and per_user["bytes-up"] > 0
    for row in result["rows"]:
        assert row["train-seconds"] > 0 and math.isfinite(row["overhead-share"])
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_scale_quick(tmp_path):
    text = _run("scale.py", tmp_path)
    assert "| interactions |" in text
    points = json.loads((tmp_path / "scale.json").read_text())
    assert sorted({p["clients"] for p in points}) == [10, 100]
    assert all(p["round-seconds"] > 0 and p["peak-rss-gib"] > 0 for p in points)
    assert (tmp_path / "scale.png").stat().st_size > 0
    # --reuse takes the saved points instead of measuring again: timings are
    # never reproduced to the last digit, so equal points prove nothing re-ran.
    (tmp_path / "scale.json").unlink()
    _run("scale.py", tmp_path, "--reuse")
    assert json.loads((tmp_path / "scale.json").read_text()) == points


def test_privacy_quick(tmp_path, ml100k_dir):
    text = _run("privacy.py", tmp_path, "--data-dir", str(ml100k_dir))
    assert "User-level DP" in text and "Node-level DP" in text and "pseudo items" in text
    assert "SecAgg+ against plain FedAvg" in text
    result = json.loads((tmp_path / "privacy.json").read_text())
    user = {r["epsilon"]: r for r in result["user"]}
    assert set(user) == {8.0, math.inf}
    assert user[8.0]["one-node"][0]["epsilon"] == pytest.approx(8.0, abs=1e-3)
    # The control: without protection one-user replies give their items away.
    assert user[math.inf]["audit"]["direction"]["auc"] > 0.95
    assert (tmp_path / "privacy.png").stat().st_size > 0


def test_serve_quick(tmp_path):
    text = _run("serve.py", tmp_path)
    assert "| gmf | ml-100k |" in text and "| neumf | 20m |" in text
    result = json.loads((tmp_path / "serve.json").read_text())
    assert result["threads"] == 2 and result["k"] == 10
    assert [(r["model"], r["size"]) for r in result["rows"]] == [
        ("gmf", "ml-100k"),
        ("neumf", "ml-100k"),
        ("gmf", "20m"),
        ("neumf", "20m"),
    ]
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["users-per-second"] > 0
        assert row["naive-users-per-second"] > 0 and row["peak-rss-mib"] > 0
        # The fast path and forward() on every pair recommend the same items.
        assert row["sample-agreement"] == 1.0
        assert row["target-met"] is None  # quick sizes check no targets


def test_rating_quick(tmp_path, ml100k_dir):
    text = _run("rating.py", tmp_path, "--data-dir", str(ml100k_dir))
    assert "| MF · federated | 1 |" in text and "| Surprise SVD, KFold(5, random_state=0) |" in text
    result = json.loads((tmp_path / "rating.json").read_text())
    assert [(r["split"], r["fold"], r["mode"]) for r in result["rows"]] == [
        ("kfold", 0, "centralized"),
        ("kfold", 0, "federated"),
    ]
    for row in result["rows"]:
        assert 0.5 < row["test-rmse"] < 1.5 and 0 < row["test-mae"] < row["test-rmse"]


def test_quality_saved_only_reports_saved_runs_and_trains_nothing(tmp_path, ml100k_dir):
    # A saved run of one seed is reported with that seed; the row's other seeds are
    # not trained (a training run would take minutes and write their folders).
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    saved = tmp_path / "centralisedMF-seed42"
    saved.mkdir()
    label, _, overrides, _ = next(r for r in quality.ROWS if r[0] == "centralised MF")
    rc = {"data-dir": str(ml100k_dir), "seed": 42, "num-server-rounds": 20, **overrides}
    entry = {"round": 3, "val": {"hr@10": 0.5}, "test": {"hr@10": 0.4, "ndcg@10": 0.2}}
    (saved / "results.json").write_text(json.dumps({"config": rc, "selected": entry}))
    argv = ["--saved-only", "--rows", "centralisedMF", "--out", str(tmp_path)]
    assert quality.main([*argv, "--data-dir", str(ml100k_dir), "--workers", "1"]) == 0
    summary = json.loads((tmp_path / "quality-rows.json").read_text())
    assert [(s["label"], [r["seed"] for r in s["runs"]]) for s in summary] == [(label, [42])]
    assert not (tmp_path / "centralisedMF-seed1").exists()


def test_a_fedavg_row_is_read_off_its_fine_tuned_twins_global_model(tmp_path, ml100k_dir):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    rows = {row[0]: row for row in quality.ROWS}
    twin = quality.fine_tuned_twin
    assert twin(rows["FedAvg MF · 10 groups"], quality.ROWS) == rows["Fine-tuned MF · 10 groups"]
    assert twin(rows["FedAvg · 10 groups"], quality.ROWS) == rows["Fine-tuned · 10 groups"]
    one_user = rows["FedAvg · one user per client"]
    assert twin(one_user, quality.ROWS) == rows["Fine-tuned · one user per client"]
    # Negative controls: other training, or no twin in the selection, is trained itself.
    assert twin(rows["centralised MF"], quality.ROWS) is None
    assert twin(rows["FedAvg MF · 10 groups"], [rows["Fine-tuned · 10 groups"]]) is None
    assert twin(rows["Fine-tuned MF · 10 groups"], quality.ROWS) is None

    # The twin's saved run: the global model peaks on validation at round 2, the
    # fine-tuned copies at round 3; the FedAvg row must report round 2's global test.
    overrides = rows["Fine-tuned MF · 10 groups"][2]
    rc = {"data-dir": str(ml100k_dir), "seed": 42, "num-server-rounds": 25, **overrides}

    def part(hr):
        return {"hr@10": hr, "ndcg@10": hr / 2}

    rounds = [
        {
            "round": r,
            "val": part(v),
            "test": part(t),
            "global-val": part(gv),
            "global-test": part(gt),
        }
        for r, v, t, gv, gt in (
            (1, 0.1, 0.1, 0.2, 0.3),
            (2, 0.2, 0.2, 0.5, 0.4),
            (3, 0.6, 0.6, 0.3, 0.9),
        )
    ]
    saved = tmp_path / "Fine-tunedMF-10groups-seed42"
    saved.mkdir()
    selected = {"round": 3, "val": part(0.6), "test": part(0.6)}
    (saved / "results.json").write_text(
        json.dumps({"config": rc, "rounds": rounds, "selected": selected})
    )
    # Seed 1 has a saved run of its own (no twin): that one is taken.
    own = tmp_path / "FedAvgMF-10groups-seed1"
    own.mkdir()
    own_rc = {**rc, "seed": 1}
    for key in [k for k in own_rc if k.startswith("finetune-")]:
        del own_rc[key]
    own_sel = {"round": 7, "val": part(0.45), "test": part(0.35)}
    (own / "results.json").write_text(json.dumps({"config": own_rc, "selected": own_sel}))
    argv = ["--saved-only", "--seeds", "1,42", "--out", str(tmp_path), "--workers", "1"]
    argv += ["--rows", "FedAvgMF-10groups,Fine-tunedMF-10groups"]
    assert quality.main([*argv, "--data-dir", str(ml100k_dir)]) == 0
    summary = {s["label"]: s for s in json.loads((tmp_path / "quality-rows.json").read_text())}
    fedavg, tuned = summary["FedAvg MF · 10 groups"], summary["Fine-tuned MF · 10 groups"]
    got = [(r["seed"], r["round"], r["hr"], r["val-hr"]) for r in fedavg["runs"]]
    assert got == [(1, 7, 0.35, 0.45), (42, 2, 0.4, 0.5)]
    assert [(r["round"], r["hr"]) for r in tuned["runs"]] == [(3, 0.6)]
    assert not (tmp_path / "FedAvgMF-10groups-seed42").exists()  # nothing trained


def test_privacy_merge_concatenates_seeds_of_one_section_and_refuses_mismatch():
    # Seeds run separately (e.g. 42 first, then 1 and 2) make one table: the
    # same epsilon's runs are concatenated; other sections are taken as they are.
    sys.path.insert(0, str(REPO / "benchmarks"))
    import privacy

    def node(hrs):
        return [
            {"epsilon": e, "groups": [{"hr": h} for h in hrs], "audit": {"a": e}} for e in (8, 16)
        ]

    first = {"stamp": "s", "node": node([0.1]), "secagg": {"bound": 1}}
    second = {"stamp": "t", "node": node([0.2, 0.3])}
    merged = privacy._merge([first, second])
    assert [[x["hr"] for x in r["groups"]] for r in merged["node"]] == [[0.1, 0.2, 0.3]] * 2
    assert merged["node"][0]["audit"] == {"a": 8} and merged["secagg"] == {"bound": 1}
    assert [x["hr"] for x in first["node"][0]["groups"]] == [0.1]  # inputs untouched
    other = {"node": [{"epsilon": 4, "groups": [], "audit": {}}]}
    with pytest.raises(SystemExit, match="section 'node' has different epsilons"):
        privacy._merge([first, other])


def test_dp_users_quick(tmp_path, ml100k_dir):
    text = _run("dp_users.py", tmp_path, "--data-dir", str(ml100k_dir), "--limit")
    result = json.loads((tmp_path / "dp_users.json").read_text())
    # The clipping-only limit: DP's clipping without its noise beats DP at epsilon 8.
    assert all(p["clip-only"]["hr"] > p["dp"]["hr"] for p in result["points"])
    assert [p["dp"]["users"] for p in result["points"]] == [943, 1886]
    assert all(p["dp"]["epsilon"] == pytest.approx(8.0, abs=1e-3) for p in result["points"])
    assert all(math.isinf(p["no-dp"]["epsilon"]) for p in result["points"])
    assert "| 1,886 |" in text


def test_dp_users_generator_keeps_ml100k_activity_and_is_seeded(tmp_path, ml100k_dir):
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(REPO / "benchmarks"))
    import dp_users

    counts, popularity = dp_users._ml100k_shape(str(ml100k_dir))
    assert len(counts) == 943 and counts.sum() == 100_000 and len(popularity) == 1682
    a, b, c = (tmp_path / n for n in ("a.csv", "b.csv", "c.csv"))
    assert dp_users.generate(a, counts, popularity, 2, seed=3) == 1886
    dp_users.generate(b, counts, popularity, 2, seed=3)
    dp_users.generate(c, counts, popularity, 2, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    log = pd.read_csv(a)
    per_user = log.groupby("user").size().to_numpy()
    assert np.array_equal(np.sort(per_user), np.sort(np.tile(counts, 2)))
    assert not log.duplicated(["user", "item"]).any()
    # Popular items stay popular: ML-100K's most popular item is drawn far more
    # often than its least popular one (the logits carry log popularity).
    freq = log["item"].value_counts()
    assert freq.get(1, 0) > 20 * freq.get(len(popularity), 0) + 10
