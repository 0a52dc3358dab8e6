import dataclasses
import json
import tomllib

import pytest
from conftest import REPO, checkerboard_rows, write_u_data

from fedrec_flwr import config, settings
from fedrec_flwr.config import ConfigError, RunConfig
from fedrec_flwr.datasets.options import SOURCES, DataOptions
from fedrec_flwr.datasets.partitioners import PARTITIONERS
from fedrec_flwr.models import ARCHITECTURES
from fedrec_flwr.ops import cli
from fedrec_flwr.paths import resolve_user_path
from fedrec_flwr.protocol import KNOB_KEYS
from fedrec_flwr.runs import centralized
from fedrec_flwr.runs.centralized import main as centralized_main
from fedrec_flwr.runs.results import resolve_output_dir
from fedrec_flwr.strategies.registry import STRATEGIES, WEIGHT_KEYS


def _table_disagreements(table):
    """Keys missing or extra, and defaults differing in value or type, vs RunConfig."""
    expected = RunConfig().to_dict()
    problems = [f"missing {k}" for k in expected if k not in table]
    problems += [f"extra {k}" for k in table if k not in expected]
    problems += [
        f"{k}: {table[k]!r} != {v!r}"
        for k, v in expected.items()
        if k in table and (table[k] != v or type(table[k]) is not type(v))
    ]
    return problems


def _pyproject_table():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_exactly_the_run_config():
    defaults = _pyproject_table()
    assert _table_disagreements(defaults) == []
    # Grouped in table order, and reading the table gives the same config back.
    assert list(defaults) == list(RunConfig().to_dict())
    assert RunConfig.from_mapping(defaults) == RunConfig()


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"factors": 8}, "factors: 8 != 16"),
        ({"learning-rate": 0.01}, "learning-rate: 0.01 != 0.001"),
        ({"weight-decay": 0}, "weight-decay: 0 != 0.0"),  # an int where a float belongs
        ({"mlp-layers": "64,32"}, "mlp-layers: '64,32' != '64,32,16'"),
        ({"seed": None}, "missing seed"),
        ({"mystery": 1}, "extra mystery"),
    ],
)
def test_the_pyproject_check_detects_a_changed_or_missing_default(edit, problem):
    # Negative control for the test above.
    table = {**_pyproject_table(), **edit}
    table = {k: v for k, v in table.items() if v is not None}
    assert _table_disagreements(table) == [problem]


def test_pyproject_holds_the_generated_table():
    text = (REPO / "pyproject.toml").read_text()
    assert config.toml_table() in text
    assert "# model (ModelOptions): The model family and its widths\n" in config.toml_table()


def test_readme_holds_exactly_the_generated_table():
    readme = (REPO / "README.md").read_text()
    table = config.markdown_table()
    assert table in readme
    start = readme.index("| key | default | meaning |")
    rows = readme[start:].split("\n\n", 1)[0] + "\n"
    assert rows == table  # no stale row after the generated ones
    assert len(table.splitlines()) == 2 + len(RunConfig().to_dict())
    assert "| `model` | `neumf` | Model: the NCF architectures `gmf` (generalised" in table
    assert '| `mlp-layers` | `"64,32,16"` |' in table and "| `seed` | 42 |" in table


def test_markdown_and_toml_come_from_the_command_line(capsys):
    assert config._main(["--markdown"]) == 0
    assert capsys.readouterr().out == config.markdown_table()
    assert config._main(["--toml"]) == 0
    assert capsys.readouterr().out == config.toml_table()


def test_every_key_lives_in_one_group_with_help():
    keys = [settings.key_of(f.name) for _, f in RunConfig.settings()]
    assert len(keys) == len(set(keys)) == 87
    groups = {g for g, _ in RunConfig.settings()}
    assert groups == {None, "data", "model", "training", "strategy", "privacy", "serving"}
    for _, f in RunConfig.settings():
        assert settings.setting(f).help.endswith((".", ")")), f.name
    owner = {settings.key_of(f.name): g for g, f in RunConfig.settings()}
    assert (owner["seed"], owner["num-eval-negatives"], owner["top-k"]) == (
        "data",
        "data",
        "training",
    )
    assert owner["num-server-rounds"] is None and owner["node-weight-caps"] == "strategy"


def test_choices_come_from_their_owners():
    by_key = {settings.key_of(f.name): settings.setting(f) for _, f in RunConfig.settings()}
    assert by_key["model"].choices == ARCHITECTURES
    assert by_key["strategy"].choices == tuple(STRATEGIES)
    assert by_key["dataset"].choices == SOURCES
    assert by_key["partitioner"].choices == PARTITIONERS
    assert by_key["weight-key"].choices == WEIGHT_KEYS


def test_to_dict_round_trips_and_groups_are_frozen():
    rc = {"model": "gmf", "mlp-layers": "8,4", "top-k": "5,20", "proximal-mu": 0.5}
    cfg = RunConfig.from_mapping({**rc, "strategy": "krum", "a-drop-in-key": 1})  # ignored
    assert cfg.model.model == "gmf" and cfg.model.mlp_layers == (8, 4)
    assert cfg.training.top_k == (5, 20) and cfg.strategy.strategy == "krum"
    out = cfg.to_dict()
    assert {k: out[k] for k in rc} == rc and out["strategy"] == "krum"
    assert RunConfig.from_mapping(out) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.learning_rate = 1.0  # type: ignore[misc]


def test_generated_docstrings_list_every_field():
    for cls in (config.DataOptions, config.ModelOptions, config.TrainingOptions,
                config.StrategyOptions, RunConfig):  # fmt: skip
        doc = cls.__doc__
        for f in dataclasses.fields(cls):
            assert f"\n{f.name} : " in doc, (cls.__name__, f.name)
    assert "mlp_layers : tuple of int (default: (64, 32, 16)) [mlp-layers]" in (
        config.ModelOptions.__doc__
    )
    assert "``gmf``" in config.ModelOptions.__doc__  # Markdown literals become RST


def test_round_knobs_message_wins_and_is_checked():
    cfg = RunConfig.from_mapping({"proximal-mu": 0.1, "private-layers": "output, mlp"})
    base = cfg.round_knobs({})
    assert base == config.RoundKnobs(0.1, ("output", "mlp"), 0, "private")
    sent = cfg.round_knobs(
        {"proximal-mu": 0, "finetune-epochs": 2.0, "finetune-scope": "all", "server-round": 3}
    )
    assert sent == config.RoundKnobs(0.0, ("output", "mlp"), 2, "all")
    assert isinstance(sent.proximal_mu, float) and isinstance(sent.finetune_epochs, int)
    assert cfg.round_knobs({"private-layers": ""}).private_layers == ()
    with pytest.raises(ConfigError, match=r"^proximal-mu=-1.0: must be a finite number >= 0$"):
        cfg.round_knobs({"proximal-mu": -1.0})
    with pytest.raises(ConfigError, match=r"^finetune-scope='items': unknown; accepted: all"):
        cfg.round_knobs({"finetune-scope": "items"})
    with pytest.raises(ConfigError, match=r"^finetune-epochs='2': expected an integer$"):
        cfg.round_knobs({"finetune-epochs": "2"})
    # Fine-tuning only the private part of a model that has none trains nothing.
    with pytest.raises(
        ConfigError,
        match=r"^finetune-epochs=2 with finetune-scope='private': model='sasrec' has no "
        r"private parameters, so nothing would be fine-tuned; set finetune-scope='all'",
    ):
        RunConfig.from_mapping({"model": "sasrec", "finetune-epochs": 2})
    for ok in ({"finetune-scope": "all"}, {"finetune-epochs": 0}):  # negative controls
        RunConfig.from_mapping({"model": "sasrec", "finetune-epochs": 2, **ok})
    RunConfig.from_mapping({"model": "mf", "finetune-epochs": 2})
    # Checks across groups too: per-user fine-tuning has no personal layers.
    per_user = RunConfig.from_mapping({"finetune-unit": "user"})
    with pytest.raises(ConfigError, match="with per-user fine-tuning"):
        per_user.round_knobs({"private-layers": "output"})


def test_every_knob_is_a_training_key():
    training = {settings.key_of(f.name) for f in dataclasses.fields(config.TrainingOptions)}
    assert set(KNOB_KEYS) <= training


def test_centralized_cli_has_exactly_the_applicable_keys():
    parser = centralized._parser()
    flags = {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}
    applicable = {f.name for f in centralized.centralized_fields()}
    defaults = {
        f.name: settings.shown(f.default) for _, f in RunConfig.settings() if f.name in applicable
    }
    assert flags == defaults
    # Written out, not read from the metadata: the keys that apply without a federation.
    assert set(flags) == {
        "num_server_rounds", "output_dir", "num_threads",
        "dataset", "data_dir", "seed", "num_eval_negatives", "implicit_threshold", "k_core",
        "duplicates", "validation", "split", "log_columns",
        "task", "fold", "val_fraction", "test_fraction",
        "model", "factors", "mlp_layers", "user_features", "item_features", "feature_buckets",
        "gcn_layers", "max_seq_len", "attention_blocks", "attention_heads", "dropout",
        "test_input", "sequence_loss", "sequence_stride",
        "learning_rate", "weight_decay", "embedding_l2", "batch_size", "num_negatives", "top_k",
        "negative_pool", "full_ranking",
    }  # fmt: skip
    inapplicable = {f.name for _, f in RunConfig.settings()} - set(flags)
    assert {f.name for f in dataclasses.fields(config.StrategyOptions)} <= inapplicable
    federation_only = {
        "item_catalogue", "client_mode", "proximal_mu", "private_layers", "local_epochs",
        "finetune_epochs", "finetune_scope", "finetune_unit", "finetune_learning_rate",
        "partitioner", "partition_by", "dirichlet_alpha", "power_law_exponent",
    }  # fmt: skip
    assert federation_only <= inapplicable
    model = next(a for a in parser._actions if a.dest == "model")
    assert model.metavar == "{" + ",".join(ARCHITECTURES) + "}"
    assert "NCF architectures" in model.help


def test_centralized_cli_refuses_a_federation_key(capsys):
    with pytest.raises(SystemExit) as exc:
        centralized_main(["--strategy", "krum"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --strategy krum" in capsys.readouterr().err


def test_fedrec_cli_flags_are_the_data_options():
    parser = cli._parser()
    stats = parser._subparsers._group_actions[0].choices["data"]
    stats = stats._subparsers._group_actions[0].choices["stats"]
    flags = {a.dest: a.default for a in stats._actions if a.option_strings and a.dest != "help"}
    expected = {f.name: f.default for f in dataclasses.fields(DataOptions) if f.name != "dataset"}
    assert {k: flags[k] for k in expected} == expected
    assert set(flags) - set(expected) == {"num_partitions", "figure", "json", "max_rows"}


def test_fedrec_cli_bad_choice_is_one_line(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    assert cli.main(["data", "stats", "ml-100k", *data, "--partitioner", "metis"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: partitioner='metis': unknown; accepted: random, natural")
    assert "\n" not in err
    assert cli.main(["data", "stats", "ml-2m", *data]) == 2
    assert capsys.readouterr().err.startswith("error: dataset='ml-2m': unknown; accepted: ml-100k")


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
    assert RunConfig.from_mapping({"top-k": "20,5"}).training.ks == (5, 10, 20)


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
    assert err == "error: model='bpr': unknown; accepted: " + ", ".join(ARCHITECTURES)
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
