"""``paths.staged``: every file and folder the package publishes appears whole or not at all."""

import os

import pytest

from fedrec_flwr.paths import replace_symlink, runs_home, staged


class _CrashError(Exception):
    pass


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_is_replaced_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with staged(target) as tmp:
        assert tmp.parent == target.parent and not tmp.exists()
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the end
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(_CrashError), staged(target) as tmp:
        tmp.write_text("half")
        raise _CrashError
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []
    # Negative control: written in place, the same crash leaves the half file.
    with pytest.raises(_CrashError):
        target.write_text("half")
        raise _CrashError
    assert target.read_text() == "half"


def test_a_failure_before_the_first_byte_creates_nothing(tmp_path):
    with pytest.raises(_CrashError), staged(tmp_path / "sub" / "new.txt"):
        raise _CrashError
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_folder_is_published_whole(tmp_path):
    target = tmp_path / "cache"
    with staged(target, directory=True) as tmp:
        assert tmp.is_dir() and list(tmp.iterdir()) == []
        (tmp / "a.npy").write_bytes(b"1")
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["a.npy"]
    with pytest.raises(_CrashError), staged(tmp_path / "other", directory=True) as tmp:
        (tmp / "a.npy").write_bytes(b"1")
        raise _CrashError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_folder_published_first_by_another_writer(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "theirs").write_text("x")
    # Kept: ours is dropped.
    with staged(target, directory=True, keep_existing=lambda _: True) as tmp:
        (tmp / "ours").write_text("y")
    assert [p.name for p in target.iterdir()] == ["theirs"] and _leftovers(tmp_path) == []

    # Cleared by the callback (a damaged copy): ours takes its place.
    def clear(existing):
        for p in existing.iterdir():
            p.unlink()
        existing.rmdir()
        return False

    with staged(target, directory=True, keep_existing=clear) as tmp:
        (tmp / "ours").write_text("y")
    assert [p.name for p in target.iterdir()] == ["ours"] and _leftovers(tmp_path) == []

    # No callback: the rename error surfaces and nothing is left behind.
    with pytest.raises(OSError), staged(target, directory=True) as tmp:
        (tmp / "third").write_text("z")
    assert [p.name for p in target.iterdir()] == ["ours"] and _leftovers(tmp_path) == []


def test_replace_symlink_repoints_atomically(tmp_path):
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-b").mkdir()
    link = replace_symlink(tmp_path / "latest", "run-a")
    assert os.readlink(link) == "run-a"
    replace_symlink(link, "run-b")
    assert os.readlink(link) == "run-b" and link.resolve() == tmp_path / "run-b"
    assert _leftovers(tmp_path) == []


def test_write_run_points_latest_at_the_newest_run(tmp_path, monkeypatch):
    from fedrec_flwr.runs.results import write_run

    monkeypatch.setenv("FEDREC_FLWR_HOME", str(tmp_path))
    for name in ("one", "two"):
        write_run(
            runs_home() / name,
            mode="federated",
            config={},
            protocol={},
            dataset={},
            rounds=[],
            model_state={},
        )
        assert os.readlink(runs_home() / "latest") == name
    assert _leftovers(runs_home()) == []
