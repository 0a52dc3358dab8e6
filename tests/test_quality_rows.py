"""``benchmarks/quality.py --rows``: which rows a partial re-run takes."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import quality  # benchmarks/ is a script directory, not a package


def test_rows_by_label_or_slug_in_table_order():
    picked = quality.select_rows(
        quality.ROWS, "centralisedNeuMF-leakypool, centralised NeuMF,centralisedGMF"
    )
    assert [row[0] for row in picked] == [
        "centralised GMF",
        "centralised NeuMF",
        "centralised NeuMF · leaky pool",
    ]
    assert picked[2][2] == {"negative-pool": "history"}


@pytest.mark.parametrize("spec", ["centralisedNeuMF,nope", " , "])
def test_unknown_row_names_the_accepted_ones(spec):
    with pytest.raises(ValueError, match=r"--rows .*accepted: centralisedGMF, centralisedMLP"):
        quality.select_rows(quality.ROWS, spec)


def test_cli_refuses_an_unknown_row(capsys):
    with pytest.raises(SystemExit) as exc:
        quality.main(["--rows", "centralisedNeuMF-typo"])
    assert exc.value.code == 2
    assert "unknown row(s) centralisedNeuMF-typo" in capsys.readouterr().err


def test_set_pairs_become_typed_run_config_overrides():
    got = quality.parse_sets(["embedding-l2=0.003", "factors = 128", "full-ranking=false"])
    assert got == {"embedding-l2": 0.003, "factors": 128, "full-ranking": False}
    assert quality.parse_sets(["model=mf"]) == {"model": "mf"}
    assert isinstance(got["factors"], int)


@pytest.mark.parametrize("item", ["embedding-l3=0.1", "factors", "=3"])
def test_a_bad_set_pair_names_itself(item):
    with pytest.raises(ValueError, match=r"^--set '.*': expected KEY=VALUE with a run-config key$"):
        quality.parse_sets([item])
