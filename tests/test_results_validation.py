"""Tests of the value checks applied when results.json is loaded for report, compare and check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench import check
from vqbench.check import write_baseline
from vqbench.cli import app
from vqbench.compare import compare_runs
from vqbench.errors import DataError
from vqbench.report import render_reports
from vqbench.report.loader import load_results
from vqbench.results import figure_problem, results_problem

STUDENT = ("edge-vq-student", "k512-14x14")
STUDENT_LABEL = "edge-vq-student/k512-14x14 (link wifi, edge device raspberry-pi-4)"


def _write_run(tmp_path: Path, name: str = "run") -> Path:
    return synthetic_run(0, with_samples=False).write(tmp_path / name)


def _edit_student_row(run_dir: Path, field: str, value: object) -> Path:
    """Set one field of the student's row in results.json; json writes NaN and infinity as NaN and Infinity."""
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    for row in content["rows"]:
        if (row["pipeline"], row["variant"]) == STUDENT:
            row[field] = value
    path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


def _edit_content(run_dir: Path, edit) -> Path:
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    edit(content)
    path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


#: (field, value written to results.json, text the error must contain)
IMPOSSIBLE_VALUES = [
    ("total_energy_j_per_inference", math.inf, "total_energy_j_per_inference = inf, but an infinite value"),
    ("payload_bytes_p95", -math.inf, "payload_bytes_p95 = -inf, but an infinite value"),
    ("lfw_accuracy_mean", math.nan, "lfw_accuracy_mean = nan, but NaN is not a measurement"),
    ("lfw_accuracy_mean", 1.5, "lfw_accuracy_mean = 1.5, but lfw_accuracy_mean is a fraction and cannot exceed 1"),
    ("payload_bytes_mean", -5.0, "payload_bytes_mean = -5, but payload_bytes_mean cannot be negative"),
    ("n_pairs", -3, "n_pairs = -3, but n_pairs cannot be negative"),
    ("lfw_accuracy_std", -0.5, "lfw_accuracy_std = -0.5, but lfw_accuracy_std cannot be negative"),
    ("co2e_g_per_inference", -1.0, "co2e_g_per_inference = -1, but co2e_g_per_inference cannot be negative"),
    ("edge_macs", 10**30, "edge_macs = 1.000e+30, but edge_macs is too large for a 64-bit integer"),
    ("folds", [0, 1], "folds[0] = 0, but folds are numbered from 1"),
    ("cloud_energy_j_per_inference_repeats", [0.05, math.inf],
     "the cloud_energy_j_per_inference sample inf (cloud_energy_j_per_inference_repeats[1])"),
]


@pytest.mark.parametrize(("field", "value", "expected"), IMPOSSIBLE_VALUES)
def test_load_rejects_impossible_value(tmp_path, field, value, expected):
    run_dir = _edit_student_row(_write_run(tmp_path), field, value)
    with pytest.raises(DataError) as caught:
        load_results(run_dir)
    message = str(caught.value)
    assert "results.json is not a valid results file" in message
    assert f"row {STUDENT_LABEL} has" in message
    assert expected in message
    assert "rerun `vqbench run`" in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("field", "value", "expected"), IMPOSSIBLE_VALUES[:6])
def test_report_and_compare_reject_impossible_value(tmp_path, field, value, expected):
    good_dir = _write_run(tmp_path, "good")
    bad_dir = _edit_student_row(_write_run(tmp_path, "bad"), field, value)
    with pytest.raises(DataError, match="not a valid results file") as from_report:
        render_reports(bad_dir)
    assert expected in str(from_report.value)
    assert not (bad_dir / "report.html").exists()
    with pytest.raises(DataError, match="not a valid results file") as from_compare:
        compare_runs(good_dir, bad_dir)
    assert expected in str(from_compare.value)


def test_byte_order_mark_named(tmp_path):
    run_dir = _write_run(tmp_path)
    results_file = run_dir / "results.json"
    results_file.write_bytes(b"\xef\xbb\xbf" + results_file.read_bytes())
    with pytest.raises(DataError, match="starts with a UTF-8 byte order mark"):
        load_results(run_dir)


def test_repeated_key_named(tmp_path):
    run_dir = _write_run(tmp_path)
    results_file = run_dir / "results.json"
    text = results_file.read_text(encoding="utf-8")
    results_file.write_text(text.replace('"lfw_accuracy_mean": ', '"lfw_accuracy_mean": 0.5, "lfw_accuracy_mean": ', 1),
                            encoding="utf-8")
    with pytest.raises(DataError, match=r"gives the key 'rows\.0\.lfw_accuracy_mean' twice"):
        load_results(run_dir)


def test_results_folder_named(tmp_path):
    (tmp_path / "results.json").mkdir()
    with pytest.raises(DataError, match="results.json is a folder, not a results file"):
        load_results(tmp_path)


def test_unknown_energy_method_rejected(tmp_path):
    run_dir = _edit_student_row(_write_run(tmp_path), "cloud_energy_method", "measured-magic")
    with pytest.raises(DataError, match="cloud_energy_method = 'measured-magic', but that is no method vqbench writes"):
        load_results(run_dir)


def test_every_meter_method_known():
    from vqbench.meters.registry import METERS
    from vqbench.results import known_energy_methods

    assert {meter_class.method for meter_class in METERS.values()} <= known_energy_methods()
    assert {"modeled-link", "modeled-device-profile", "measured-nvml-power-sampling"} <= known_energy_methods()


def test_negative_dynamic_energy_loads(tmp_path):
    # Dynamic energy is measured minus idle energy, so noise can make it negative.
    run_dir = _edit_student_row(_write_run(tmp_path), "cloud_dynamic_energy_j_per_inference", -0.01)
    row = next(row for row in load_results(run_dir).rows if (row.pipeline, row.variant) == STUDENT)
    assert row.cloud_dynamic_energy_j_per_inference == -0.01


@pytest.mark.parametrize(
    ("field", "value"),
    [("lfw_accuracy_mean", "0.9"), ("payload_bytes_mean", True), ("n_pairs", 300.0), ("link_feasible", 1)],
)
def test_load_rejects_value_of_other_type(tmp_path, field, value):
    run_dir = _edit_student_row(_write_run(tmp_path), field, value)
    with pytest.raises(DataError, match=f"is not a valid results file .*first at 'rows.[0-9]+.{field}'") as caught:
        load_results(run_dir)
    assert caught.value.exit_code == 2


def test_synthetic_run_has_no_problem():
    assert results_problem(synthetic_run(0, with_samples=False).results) is None


def test_duplicate_row_key_rejected(tmp_path):
    def duplicate_student(content):
        index = next(i for i, row in enumerate(content["rows"]) if (row["pipeline"], row["variant"]) == STUDENT)
        content["rows"].append(dict(content["rows"][index]))

    run_dir = _edit_content(_write_run(tmp_path), duplicate_student)
    with pytest.raises(DataError) as caught:
        load_results(run_dir)
    message = str(caught.value)
    assert "not a valid results file" in message
    assert f"both have the key {STUDENT_LABEL}" in message
    assert "one row per pipeline, variant, link and edge device" in message
    with pytest.raises(DataError, match="both have the key"):
        compare_runs(run_dir, run_dir)
    with pytest.raises(DataError, match="both have the key"):
        write_baseline(run_dir, tmp_path / "baseline.json")
    assert not (tmp_path / "baseline.json").exists()


def test_rows_differing_in_link_are_not_duplicates(tmp_path):
    def copy_student_to_lte(content):
        student = next(row for row in content["rows"] if (row["pipeline"], row["variant"]) == STUDENT)
        content["rows"].append({**student, "link": "lte"})

    run_dir = _edit_content(_write_run(tmp_path), copy_student_to_lte)
    assert len(load_results(run_dir).rows) == len(synthetic_run(0, with_samples=False).results.rows) + 1


def test_infinite_assumption_rejected(tmp_path):
    def set_intensity(content):
        content["assumptions"]["grid_intensity_edge"] = {"gco2e_per_kwh": math.inf}

    run_dir = _edit_content(_write_run(tmp_path), set_intensity)
    with pytest.raises(DataError, match=r"assumptions\.grid_intensity_edge\.gco2e_per_kwh is NaN or infinite"):
        render_reports(run_dir)


def test_check_shares_range_rules():
    assert check.figure_problem is figure_problem
    assert "cloud_dynamic_energy_j_per_inference" in check.MAY_BE_NEGATIVE
    assert "eer" in check.FRACTION_METRICS


def test_cli_report_infinity_is_one_line_error(tmp_path):
    run_dir = _edit_student_row(_write_run(tmp_path), "total_energy_j_per_inference", math.inf)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "total_energy_j_per_inference = inf" in result.output
    assert "not a valid results file" in result.output


def test_cli_compare_infinity_is_one_line_error(tmp_path):
    good_dir = _write_run(tmp_path, "good")
    bad_dir = _edit_student_row(_write_run(tmp_path, "bad"), "total_energy_j_per_inference", math.inf)
    result = CliRunner().invoke(app, ["compare", str(good_dir), str(bad_dir)])
    assert result.exit_code == 2
    assert "total_energy_j_per_inference = inf" in result.output
    assert "+inf" not in result.output
