"""Messages of `vqbench check`: energy method changes and ratios that shrink."""

from __future__ import annotations

import json
from pathlib import Path

from conftest_report import synthetic_run
from vqbench.check import run_check, write_baseline

STUDENT = ("edge-vq-student", "k512-14x14")


def _baseline_with_methods(tmp_path: Path, old: str, new: str) -> Path:
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "baseline-run")
    baseline_file = write_baseline(run_dir, tmp_path / "baseline.json")
    document = json.loads(baseline_file.read_text(encoding="utf-8"))
    for entry in document["entries"]:
        entry["methods"] = {metric: new if method == old else method for metric, method in entry["methods"].items()}
    baseline_file.write_text(json.dumps(document), encoding="utf-8")
    return baseline_file


def test_check_summary_names_method_change(tmp_path):
    baseline_file = _baseline_with_methods(tmp_path, "measured-rapl", "estimated-codecarbon")
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    [note] = [note for note in report.summary_notes if "another method" in note]
    assert "(estimated-codecarbon to measured-rapl)" in note
    assert "record a baseline on this kind of machine" in note


def test_check_summary_quiet_on_same_method(tmp_path):
    baseline_file = _baseline_with_methods(tmp_path, "measured-rapl", "measured-rapl")
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    assert not [note for note in report.summary_notes if "another method" in note]


def test_shrinking_ratio_says_shrank(tmp_path):
    base_dir = synthetic_run(0, repeats=3, with_samples=False).write(tmp_path / "base")
    baseline_file = write_baseline(base_dir, tmp_path / "baseline.json")
    run = synthetic_run(1, repeats=3, with_samples=False)
    row = run.row(*STUDENT)
    row.edge_energy_j_per_inference_repeats = [value * 0.6 for value in row.edge_energy_j_per_inference_repeats]
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    [verdict] = [result for result in report.results
                 if result.metric == "edge_energy_j_per_inference" and "edge-vq-student" in result.row]
    assert "ratio shrank" in verdict.message
    assert "ratio grew" not in verdict.message
