"""Issue 12, "Runs": paths checked before any work, every bad number named by
its key, and the ``num-threads`` key (resolved, applied, recorded, bit-neutral)."""

import json
import re

import pytest
import torch
from conftest import checkerboard_rows, write_u_data
from flwr.app import RecordDict

from fedrec_flwr import threads
from fedrec_flwr.client.numpy_client import NCFClient
from fedrec_flwr.config import ConfigError, ModelOptions, RunConfig
from fedrec_flwr.datasets import load_client_data
from fedrec_flwr.ops.cli import main as fedrec_main
from fedrec_flwr.runs import centralized
from fedrec_flwr.runs.centralized import main as centralized_main
from fedrec_flwr.runs.results import check_run_paths, resolve_output_dir, write_run

SMALL = ["--num-eval-negatives", "20", "--factors", "4", "--mlp-layers", "8,4"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """torch's thread count is process-wide: give the next test what it had."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_u_data(tmp_path_factory.mktemp("checkerboard"), checkerboard_rows())


def _run(data, out, *extra):
    return centralized_main(
        [
            "--data-dir",
            str(data),
            "--output-dir",
            str(out),
            "--num-server-rounds",
            "1",
            *SMALL,
            *extra,
        ]
    )


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the paths were checked")

    monkeypatch.setattr(centralized, "train_epochs", refuse)
    monkeypatch.setattr(centralized, "prepare_data", refuse)


# --- case 11: every path is checked before any work -------------------------------


def test_output_dir_that_is_a_file_fails_before_training(data, tmp_path, monkeypatch, capsys):
    # Was: every epoch trained, then "error: [Errno 17] File exists: '...'".
    _no_training(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _run(data, afile) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: output-dir='{afile}': an existing file, not a folder; "
        "give a folder path (it is created if missing)"
    )
    assert _run(data, afile / "sub") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: output-dir='{afile / 'sub'}': cannot be created, {afile} is a file; "
        "give a folder path that does not pass through a file"
    )


def test_unwritable_output_dir_is_named(tmp_path, monkeypatch):
    # Tests may run as root, which may write anywhere: stand in for the permission.
    monkeypatch.setattr("fedrec_flwr.paths.os.access", lambda path, mode: False)
    with pytest.raises(ValueError, match=r"output-dir='.*': folder not writable by this user"):
        resolve_output_dir(str(tmp_path), "run-1")
    with pytest.raises(
        ValueError, match=rf"output-dir='.*': cannot be created, {tmp_path} is not writable"
    ):
        resolve_output_dir(str(tmp_path / "new"), "run-1")


def test_server_output_dir_check_runs_in_resolve_output_dir(tmp_path, monkeypatch):
    # server_app.main() calls resolve_output_dir before training starts.
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=r"output-dir='.*afile': an existing file, not a folder"):
        resolve_output_dir(str(afile), "run-1")
    monkeypatch.setenv("FEDREC_FLWR_HOME", str(afile))
    with pytest.raises(
        ValueError,
        match=r"output-dir='' \(default .*afile/runs/run-1; set output-dir or "
        r"\$FEDREC_FLWR_HOME\): cannot be created, .*afile is a file",
    ):
        resolve_output_dir("", "run-1")
    # Negative control: a missing folder under a writable one is fine, and not created.
    target = tmp_path / "a" / "b"
    assert resolve_output_dir(str(target), "run-1") == target
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--data-dir", "data"],
            "error: data-dir='data' is a relative path; give an absolute path (or start it "
            "with ~): Flower runs the app from the unpacked FAB, not from your working directory",
        ),
        (
            ["--data-dir", "/nonexistent/ml"],
            "error: data-dir='/nonexistent/ml': not a directory (no such path /nonexistent/ml); "
            "give the absolute path of the folder holding the ml-100k files, or '' to "
            "download them",
        ),
    ],
)
def test_input_paths_are_checked_first(data, tmp_path, monkeypatch, capsys, flags, message):
    _no_training(monkeypatch)
    assert _run(data, tmp_path / "out", *flags) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"item-catalogue": "/nonexistent/catalogue.txt"},
            "item-catalogue='/nonexistent/catalogue.txt': no such file "
            "/nonexistent/catalogue.txt; give the absolute path of the item catalogue "
            "(write it with `fedrec data catalogue`)",
        ),
        (
            {"node-weight-caps": "/"},
            "node-weight-caps='/': a directory, not a file; give the absolute path "
            "of the TOML file of per-node weight caps",
        ),
    ],
)
def test_server_input_paths_are_checked_first(tmp_path, override, message):
    # Server-side keys: no flags of the centralised baseline, checked all the same.
    cfg = RunConfig.from_mapping({**override, "output-dir": str(tmp_path / "out")})
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_run_paths(cfg, "run-1", reads_data=not cfg.item_catalogue)
    assert not (tmp_path / "out").exists()


def test_home_relative_data_dir_is_expanded(data, tmp_path, monkeypatch):
    # Was: "~/..." passed the relative check but reached the loader unexpanded.
    monkeypatch.setenv("HOME", str(data.parent))
    out = tmp_path / "out"
    assert _run(f"~/{data.name}", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data-dir"] == str(data)


def test_server_skips_data_dir_it_does_not_read(tmp_path):
    catalogue = tmp_path / "catalogue.txt"
    catalogue.write_text("1\n2\n")
    cfg = RunConfig.from_mapping(
        {
            "data-dir": "/on/the/nodes",
            "item-catalogue": str(catalogue),
            "output-dir": str(tmp_path / "out"),
        }
    )
    paths = check_run_paths(cfg, "run-1", reads_data=not cfg.item_catalogue)
    assert paths.data_dir is None and paths.item_catalogue == catalogue
    with pytest.raises(ValueError, match=r"^data-dir='/on/the/nodes': not a directory"):
        check_run_paths(cfg, "run-1")


# --- case 12: every bad number names its key ---------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"seed": -1}, "seed=-1: must be a non-negative integer"),
        (
            {"seed": 2**64},
            "seed=18446744073709551616: must be at most 9223372036854775807 "
            "(run-config integers are 64-bit)",
        ),
        (
            {"mlp-layers": f"{10**20},4"},
            f"mlp-layers={10**20},4: must be at most 9223372036854775807 "
            "(run-config integers are 64-bit)",
        ),
        ({"learning-rate": float("inf")}, "learning-rate=inf: must be a finite number"),
        ({"weight-decay": float("inf")}, "weight-decay=inf: must be a finite number"),
        ({"implicit-threshold": float("nan")}, "implicit-threshold=nan: must be a finite number"),
        ({"dirichlet-alpha": float("inf")}, "dirichlet-alpha=inf: must be a finite number"),
        ({"power-law-exponent": 10**400}, f"power-law-exponent={10**400}: must be a finite"),
        ({"factors": 10**14}, "factors=100000000000000: must be <= 65536"),
        ({"num-negatives": 10**11}, "num-negatives=100000000000: must be <= 65536"),
        ({"mlp-layers": "131072,8"}, "mlp-layers=131072,8: widths must be <= 65536"),
        ({"num-threads": 10**11}, "num-threads=100000000000: must be <= 1024 (0 = automatic)"),
        ({"num-threads": -1}, "num-threads=-1: must be a finite number >= 0"),
        (
            {"top-k": "1000"},
            "top-k=1000: cut-offs must be <= 100 (1 held-out item + num-eval-negatives=99); "
            "lower top-k or raise num-eval-negatives",
        ),
        (
            {"num-eval-negatives": 5},
            "top-k=10: cut-offs must be <= 6 (1 held-out item + num-eval-negatives=5)",
        ),
        ({"num-eval-negatives": 0}, "num-eval-negatives=0: must be >= 1"),
        ({"sequence-stride": 0}, "sequence-stride=0: must be in [1, max-seq-len=50]"),
        (
            {"sequence-stride": 20, "max-seq-len": 10},
            "sequence-stride=20: must be in [1, max-seq-len=10]",
        ),
    ],
)
def test_out_of_range_numbers_name_the_key(override, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        RunConfig.from_mapping(override)


def test_in_range_numbers_pass():
    # Negative controls for the bounds above.
    cfg = RunConfig.from_mapping(
        {
            "seed": 0,
            "factors": 65536,
            "num-negatives": 65536,
            "mlp-layers": "65536,8",
            "num-threads": 1024,
            "top-k": "5,100",
            "num-eval-negatives": 99,
        }
    )
    assert cfg.data.seed == 0 and cfg.training.ks == (5, 10, 100)
    big = RunConfig.from_mapping({"seed": 2**63 - 1, "num-eval-negatives": 9})
    assert big.data.seed == 2**63 - 1


def test_centralized_negative_seed_is_one_line(data, tmp_path, monkeypatch, capsys):
    # Was: "error: expected non-negative integer" (numpy's SeedSequence).
    _no_training(monkeypatch)
    assert _run(data, tmp_path / "out", "--seed", "-1") == 2
    assert capsys.readouterr().err.strip() == "error: seed=-1: must be a non-negative integer"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "-1"], "error: seed=-1: must be a non-negative integer"),
        (
            ["--seed", str(10**23)],
            f"error: seed={10**23}: must be at most 9223372036854775807 (64-bit integers)",
        ),
        (["--num-eval-negatives", "-1"], "error: num-eval-negatives=-1: must be >= 1"),
        (["--num-partitions", "0"], "error: num-partitions=0: must be >= 1"),
        (["--max-rows", "-1"], "error: max-rows=-1: must be >= 0"),
        (["--dirichlet-alpha", "inf"], "error: dirichlet-alpha=inf: must be a finite number"),
    ],
)
def test_fedrec_cli_numbers_name_the_key(data, monkeypatch, capsys, flags, message):
    def refuse(*args, **kwargs):
        raise AssertionError("data prepared before the flags were checked")

    monkeypatch.setattr("fedrec_flwr.ops.cli.build_partition_cache", refuse)
    assert fedrec_main(["data", "stats", "ml-100k", "--data-dir", str(data), *flags]) == 2
    assert capsys.readouterr().err.strip() == message


def test_fedrec_cli_accepts_seed_zero(data, capsys):
    # Negative control.
    flags = ["--seed", "0", "--num-eval-negatives", "20", "--num-partitions", "2"]
    assert fedrec_main(["data", "stats", "ml-100k", "--data-dir", str(data), *flags]) == 0
    assert "cache:" in capsys.readouterr().out


# --- case 13: num-threads -----------------------------------------------------------


def test_cgroup_quota_caps_available_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads.cgroup_cpu_limit(tmp_path) is None
    assert threads.available_cpus(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    assert threads.available_cpus(tmp_path) == 1  # rounded down, at least 1
    (tmp_path / "cpu.max").unlink()
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.available_cpus(tmp_path) == 4
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.available_cpus(tmp_path) == 8


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 4), (16, 16)])
def test_automatic_thread_rule(monkeypatch, cpus, expected):
    monkeypatch.setattr(threads, "available_cpus", lambda: cpus)
    assert threads.resolve_num_threads(0) == expected
    assert threads.resolve_num_threads(0, default=threads.CLIENT_DEFAULT_THREADS) == 1
    assert threads.resolve_num_threads(3) == 3  # explicit: as is
    assert threads.resolve_num_threads(3, default=1) == 3


def _centralized_results(data, out, n):
    assert _run(data, out, "--num-threads", str(n)) == 0
    return json.loads((out / "results.json").read_text())


def test_centralized_applies_and_records_threads(data, tmp_path, monkeypatch):
    seen = []
    real = centralized.train_epochs

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(centralized, "train_epochs", spy)
    torch.set_num_threads(3)
    one = _centralized_results(data, tmp_path / "one", 1)
    assert seen == [1] and one["num-threads"] == 1
    two = _centralized_results(data, tmp_path / "two", 2)
    assert seen == [1, 2] and two["num-threads"] == 2
    # Same seed, same bits, whatever the thread count.
    assert one["rounds"][0]["train-loss"] == two["rounds"][0]["train-loss"]
    for key in ("val", "test", "val-loss"):
        assert one["rounds"][0][key] == two["rounds"][0][key]
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    assert _centralized_results(data, tmp_path / "auto", 0)["num-threads"] == 1


def test_client_threads_default_to_one(data):
    for requested, expected in ((0, 1), (2, 2)):
        cfg = RunConfig.from_mapping(
            {"data-dir": str(data), "num-eval-negatives": 20, "num-threads": requested}
        )
        client_data = load_client_data(cfg.data, 0, 2)
        torch.set_num_threads(3)
        NCFClient(client_data, cfg, RecordDict())
        assert torch.get_num_threads() == expected


@pytest.mark.parametrize(("requested", "expected"), [(0, 1), (3, 3)])
def test_federated_results_record_client_threads(tmp_path, requested, expected):
    path = write_run(
        tmp_path,
        mode="federated",
        config=RunConfig.from_mapping({"num-threads": requested}).to_dict(),
        protocol={},
        dataset={},
        rounds=[],
        model_state={},
    )
    assert json.loads(path.read_text())["num-threads"] == expected


def test_out_of_memory_names_the_size_keys(data, tmp_path, monkeypatch, capsys):
    def oom(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
        )

    monkeypatch.setattr(ModelOptions, "build", oom)
    assert _run(data, tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == (
        "error: out of memory building or training the model; lower factors, "
        "mlp-layers, batch-size or num-negatives"
    )

    def other(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(ModelOptions, "build", other)  # negative control: not swallowed
    with pytest.raises(RuntimeError, match=r"^something else$"):
        _run(data, tmp_path / "out")
