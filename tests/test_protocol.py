"""Each wire key is spelled once: in fedrec_flwr/protocol.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedrec_flwr import protocol
from fedrec_flwr.protocol import legacy_rounds, rounds_of

PACKAGE = Path(protocol.__file__).parent
# Flower's RecordDict names ("arrays", "metrics", "config") are constants here
# too, but "config" and "metrics" are also plain words of results.json and the
# dataset protocol record, so only our own keys are held to one module.
_FLOWER_RECORDS = {"ARRAYS_RECORD", "METRICS_RECORD", "CONFIG_RECORD"}
KEYS = sorted(
    {
        value
        for name, value in vars(protocol).items()
        if name.isupper()
        and isinstance(value, str)
        and name != "SUM_SUFFIX"
        and name not in _FLOWER_RECORDS
    }
)


def _modules_spelling(key: str) -> list[str]:
    literal = re.compile(r"""(["'])""" + re.escape(key) + r"""\1""")
    return sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if literal.search(path.read_text())
    )


def test_the_keys_are_found() -> None:
    # Negative control for the scan below: the defining module itself is found.
    assert _modules_spelling(protocol.PARTITION_ID_KEY) == ["protocol.py"]
    assert len(KEYS) >= 20


@pytest.mark.parametrize("key", KEYS)
def test_each_wire_key_literal_lives_in_protocol_only(key: str) -> None:
    assert _modules_spelling(key) == ["protocol.py"]


def test_the_sum_suffix_is_defined_once() -> None:
    assert _modules_spelling(protocol.SUM_SUFFIX) == ["protocol.py"]


def test_node_metrics_and_sum_keys() -> None:
    assert protocol.node_metrics(3, 10, 94) == {
        "partition-id": 3,
        "num-partitions": 10,
        "num-users": 94,
    }
    assert protocol.sum_key("val", "hr@10") == "val-hr@10-sum"
    assert protocol.sum_key("test", "ndcg@5", protocol.GLOBAL_PREFIX) == "global-test-ndcg@5-sum"
    aggregated = {"val-hr@10": 0.5, "global-val-hr@10": 0.25, "test-hr@10": 0.75}
    assert protocol.prefixed(aggregated, "val") == {"hr@10": 0.5}
    assert protocol.prefixed(aggregated, "val", protocol.GLOBAL_PREFIX) == {"hr@10": 0.25}


@pytest.mark.parametrize(
    ("config", "expected"), [({"server-round": 4}, 4), ({}, 0), ({"server-round": True}, 0)]
)
def test_server_round(config: dict[str, object], expected: int) -> None:
    assert protocol.server_round(config) == expected


@pytest.mark.parametrize(
    ("value", "rounds"),
    [
        ([2, 5], [2, 5]),  # a Message-API config's list
        (legacy_rounds([2, 5]), [2, 5]),  # a legacy (SecAgg+) config's one string
        ("3", [3]),
        (4, [4]),
        (True, []),  # not a round
        ("2,x", []),
        (None, []),
    ],
)
def test_keep_rounds_read_the_same_from_either_config(value, rounds):
    assert legacy_rounds([2, 5]) == "2,5"
    assert rounds_of(value) == rounds
