"""Writes to paths that are links, devices or pipes, and outputs aimed at another run's files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench.check import check_output_path, run_check, write_baseline, write_check_outputs
from vqbench.cli import app
from vqbench.errors import DataError
from vqbench.io import write_json_atomic, write_text_atomic


def test_atomic_write_follows_symlink(tmp_path):
    target = tmp_path / "target.md"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink()
    assert target.read_text(encoding="utf-8") == "new"


def test_atomic_write_through_dangling_symlink(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "created.json")
    write_json_atomic(link, {"a": 1})
    assert link.is_symlink()
    assert (tmp_path / "created.json").read_text(encoding="utf-8") == '{\n  "a": 1\n}\n'


def test_atomic_write_into_fifo_keeps_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert received == [b"through the pipe"]
    assert fifo.is_fifo()


_WRITE_TO_STDOUT = "from pathlib import Path; from vqbench.io import write_text_atomic; write_text_atomic(Path('/dev/stdout'), 'gate table')"


def test_dev_stdout_into_pipe_written():
    completed = subprocess.run([sys.executable, "-c", _WRITE_TO_STDOUT], stdout=subprocess.PIPE, check=True)
    assert completed.stdout == b"gate table"


def test_dev_stdout_appended_to_redirected_file(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("previous step\n", encoding="utf-8")
    with summary.open("ab") as stream:
        subprocess.run([sys.executable, "-c", _WRITE_TO_STDOUT], stdout=stream, check=True)
    assert summary.read_text(encoding="utf-8") == "previous step\ngate table"


def test_atomic_write_to_dev_null_keeps_device():
    write_text_atomic(Path("/dev/null"), "discarded")
    assert Path("/dev/null").is_char_device()


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_full_device_write_fails_cleanly(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    with pytest.raises(DataError, match="--write-baseline /dev/full could not be written"):
        write_baseline(run_dir, Path("/dev/full"))
    assert Path("/dev/full").is_char_device()


def test_output_onto_other_run_file_rejected(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    other_dir = synthetic_run(1, with_samples=False).write(tmp_path / "other")
    before = (other_dir / "results.json").read_bytes()
    with pytest.raises(DataError, match="would replace results.json of the run folder .*other"):
        write_baseline(run_dir, other_dir / "results.json")
    assert (other_dir / "results.json").read_bytes() == before
    with pytest.raises(DataError, match="would replace report.html of the run folder .*other"):
        check_output_path(run_dir, other_dir / "report.html", "--markdown")


def test_output_beside_other_run_files_allowed(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    other_dir = synthetic_run(1, with_samples=False).write(tmp_path / "other")
    baseline_file = write_baseline(run_dir, other_dir / "baseline.json")
    report = run_check(run_dir, baseline_file)
    assert write_check_outputs(report, {"--markdown": other_dir / "check.md"}) == [other_dir / "check.md"]


def test_run_folder_as_output_suggests_sibling(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    result = CliRunner().invoke(app, ["check", str(run_dir), "--write-baseline", str(run_dir)])
    assert result.exit_code == 2
    assert f"such as {tmp_path / 'run-baseline.json'}" in " ".join(result.output.split())

