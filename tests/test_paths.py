"""Workdir file access (local here; gs:// goes through the same etils.epath calls)."""

import os

import pytest

from ssl_jax import parallel, paths


def test_local_files_round_trip_and_urls_stay_urls(tmp_path):
    run = paths.join(str(tmp_path), "run", "plots")
    paths.makedirs(run)
    target = paths.join(run, "a.txt")
    paths.write_text(target, "one\n")
    paths.append_text(target, "two\n")
    assert paths.read_text(target) == "one\ntwo\n"
    paths.write_text(target, "new")  # replaced whole, through a rename
    assert paths.read_text(target) == "new"
    assert sorted(paths.listdir(run)) == ["a.txt"]  # no temporary file left behind
    assert paths.isdir(run) and paths.exists(target)
    assert paths.absolute("gs://bucket/run") == "gs://bucket/run"
    assert paths.absolute("relative") == os.path.abspath("relative")


def test_probe_raises_for_a_missing_directory_and_leaves_nothing(tmp_path):
    paths.probe_writable(str(tmp_path), ".probe")
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError):
        paths.probe_writable(str(tmp_path / "missing"), ".probe")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(enabled=False, num_processes=2), "need --distributed"),
        (dict(enabled=True, coordinator_address="127.0.0.1:1", num_processes=2), "pass all of"),
        (
            dict(enabled=True, coordinator_address="127.0.0.1:1", num_processes=2, process_id=2),
            r"--process_id=2 is not in \[0, 2\)",
        ),
    ],
)
def test_distributed_flags_are_checked_before_joining(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parallel.initialize_distributed(**kwargs)
