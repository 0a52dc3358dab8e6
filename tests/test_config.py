import dataclasses
import json
import tomllib

import pytest
from conftest import REPO, checkerboard_rows, write_u_data

from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.paths import resolve_user_path
from fedrec_flwr.runs.centralized import main as centralized_main
from fedrec_flwr.runs.results import resolve_output_dir


def test_pyproject_defaults_are_exactly_the_run_config():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    assert set(defaults) == {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig.from_mapping(defaults)
    assert cfg.to_dict() == defaults


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"model": "bpr"}, r"model='bpr': unknown; accepted: gmf, mlp, neumf"),
        ({"strategy": "fedsgd"}, r"strategy='fedsgd': unknown; accepted: fedavg"),
        ({"dataset": "ml-2m"}, r"dataset='ml-2m': unknown; accepted: ml-100k, ml-1m"),
        ({"batch-size": 0}, r"batch-size=0: must be >= 1"),
        ({"learning-rate": -1.0}, r"learning-rate=-1.0: must be > 0"),
        ({"fraction-train": 1.5}, r"fraction-train=1.5: must be in \(0, 1\]"),
        (
            {"mlp-layers": "64,x"},
            r"mlp-layers='64,x': expected comma-separated positive",
        ),
        ({"mlp-layers": "63,32"}, r"mlp-layers=63,32: the first width must be even"),
        ({"seed": "one"}, r"seed='one': expected an integer"),
        ({"local-epochs": True}, r"local-epochs=True: expected int"),
    ],
)
def test_bad_values_name_the_key_and_what_is_accepted(override, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_mapping(override)


def test_top_k_always_reports_ten():
    assert RunConfig.from_mapping({"top-k": "20,5"}).ks == (5, 10, 20)


def test_relative_paths_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="output-dir='out' is a relative path"):
        resolve_output_dir("out", "run-1")
    monkeypatch.setenv("FEDREC_FLWR_HOME", str(tmp_path))
    assert resolve_output_dir("", "run-1") == tmp_path / "runs" / "run-1"
    assert resolve_user_path("~/x", key="k").is_absolute()


def test_centralized_cli_writes_the_federated_results_shape(tmp_path, capsys):
    data = write_u_data(tmp_path / "data", checkerboard_rows())
    out = tmp_path / "out"
    code = centralized_main(
        [
            "--data-dir",
            str(data),
            "--output-dir",
            str(out),
            "--num-server-rounds",
            "2",
            "--num-eval-negatives",
            "20",
            "--factors",
            "4",
            "--mlp-layers",
            "8,4",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "centralized" and len(results["rounds"]) == 2
    assert {
        "round",
        "train-loss",
        "val",
        "test",
        "wall-seconds",
        "bytes-sent",
        "bytes-received",
    } <= set(results["rounds"][0])
    assert results["selected"]["by"] == "val-hr@10"
    assert (out / "model.pt").is_file() and (out / "metrics.png").is_file()
    assert str(out) in capsys.readouterr().out


def test_centralized_cli_bad_input_is_one_line(tmp_path, capsys):
    assert centralized_main(["--model", "bpr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: model='bpr': unknown; accepted: gmf, mlp, neumf"
    assert centralized_main(["--data-dir", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"proximal-mu": 0.1}, "proximal-mu"),
        ({"private-layers": "output"}, "private-layers"),
        ({"item-aggregation": "rowwise"}, "item-aggregation"),
        ({"weight-key": "users"}, "weight-key"),
    ],
)
def test_per_user_mode_refuses_knobs_it_cannot_honour(extra, named):
    with pytest.raises(ConfigError, match=f"client-mode='per-user'.*reset {named}"):
        RunConfig.from_mapping({"client-mode": "per-user", **extra})


def test_modes_and_pools_are_named():
    with pytest.raises(ConfigError, match="client-mode='solo': unknown; accepted: group, per-user"):
        RunConfig.from_mapping({"client-mode": "solo"})
    with pytest.raises(ConfigError, match="negative-pool='x': unknown; accepted: train, history"):
        RunConfig.from_mapping({"negative-pool": "x"})
