"""Tests of the input guards of `vqbench check`: damaged baselines, other settings, option and policy mistakes.

Each guard turns input that would otherwise give a passing gate with verdicts dropped or skipped
into exit code 2 with a message that names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench.check import (
    CHECKED_SETTINGS,
    NUMERIC_COLUMNS,
    CheckPolicy,
    check_summary,
    load_baseline,
    load_policy,
    render_check_markdown,
    run_check,
    write_baseline,
)
from vqbench.check.baseline import _validate_baseline
from vqbench.cli import app
from vqbench.compare import EVALUATION_ASSUMPTIONS
from vqbench.errors import DataError

REPOSITORY = Path(__file__).resolve().parents[1]
STUDENT = ("edge-vq-student", "k512-14x14")
REFERENCE = ("cloud-raw", "original")
SETTINGS = {
    "dataset": {"kind": "lfw", "folds": list(range(1, 11)), "max_pairs": None, "seed": 0},
    "alignment": {"upsample": 0, "face_choice": "center", "chip_size_px": 150, "padding": 0.25},
    "measurement": {"latency_samples": 40, "warmup": 20, "repeats": 10, "min_window_s": 2.0, "idle_s": 1.0,
                    "memory": True},
}


def _run(seed: int, **settings_changes: dict):
    """A synthetic run that records data set, alignment and measurement settings, changed as given."""
    run = synthetic_run(seed, with_samples=False)
    for name, values in SETTINGS.items():
        run.results.assumptions[name] = {**values, **settings_changes.get(name, {})}
    return run


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guards")
    return write_baseline(_run(0).write(folder / "run"), folder / "baseline.json")


def _edited(baseline_file: Path, tmp_path: Path, edit) -> Path:
    content = json.loads(baseline_file.read_text(encoding="utf-8"))
    edit(content)
    path = tmp_path / "edited-baseline.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def _entries(content: dict, key: tuple[str, str]) -> list[dict]:
    return [entry for entry in content["entries"] if (entry["pipeline"], entry["variant"]) == key]


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Baseline entries without the samples of their noisy figures


def test_unchanged_run_passes(baseline_file, tmp_path):
    report = run_check(_run(1).write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 0, render_check_markdown(report)


@pytest.mark.parametrize("key", [STUDENT, REFERENCE], ids=["gated-row", "reference-row"])
def test_entry_without_samples_is_usage_error(baseline_file, tmp_path, key):
    def drop_samples(content):
        for entry in _entries(content, key):
            entry["samples"] = {}

    with pytest.raises(DataError) as caught:
        run_check(_run(1).write(tmp_path / "run"), _edited(baseline_file, tmp_path, drop_samples))
    message = str(caught.value)
    assert f"row {key[0]}/{key[1]}" in message
    assert "no samples entry for cloud_energy_j_per_inference, cloud_latency_ms" in message
    assert "--write-baseline" in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("key", [STUDENT, REFERENCE], ids=["gated-row", "reference-row"])
def test_entry_with_empty_samples_is_usage_error(baseline_file, tmp_path, key):
    def empty_samples(content):
        for entry in _entries(content, key):
            entry["samples"]["cloud_latency_ms"] = []

    with pytest.raises(DataError) as caught:
        run_check(_run(1).write(tmp_path / "run"), _edited(baseline_file, tmp_path, empty_samples))
    message = str(caught.value)
    assert f"row {key[0]}/{key[1]}" in message
    assert "no samples for cloud_latency_ms (cloud_latency_ms_p50 = " in message
    assert caught.value.exit_code == 2


def test_unmeasured_figure_is_listed_as_skipped(baseline_file, tmp_path):
    # cloud-raw does no edge work, so the synthetic run has no edge energy for it: null, no samples.
    report = run_check(_run(1).write(tmp_path / "run"), baseline_file)
    verdicts = [r for r in report.results
                if r.metric == "edge_energy_j_per_inference" and r.row.startswith("cloud-raw/")]
    assert [r.status for r in verdicts] == ["skipped"]
    assert "was not measured in the baseline's run" in verdicts[0].message


def test_committed_ci_baseline_passes_validation():
    baseline_file = REPOSITORY / "reports" / "baselines" / "ci.json"
    baseline = load_baseline(baseline_file)
    for policy in (CheckPolicy(), load_policy(REPOSITORY / "reports" / "baselines" / "ci-policy.yaml")):
        _validate_baseline(baseline_file, baseline, policy)


def test_recorded_baseline_has_samples_for_every_noisy_gate(tmp_path):
    gates = "\n".join(
        f"  - {{metric: {metric}, reference_metric: cloud_latency_ms}}"
        for metric in ("edge_latency_ms", "cloud_latency_ms", "transfer_latency_ms", "end_to_end_latency_ms")
    )
    policy = load_policy(_policy(tmp_path, f"noisy:\n{gates}\n"))
    baseline_file = write_baseline(_run(0).write(tmp_path / "run"), tmp_path / "baseline.json")
    _validate_baseline(baseline_file, load_baseline(baseline_file), policy)


# ---------------------------------------------------------------------------------------------
# Settings that change what is measured


def test_baseline_records_settings(baseline_file):
    content = json.loads(baseline_file.read_text(encoding="utf-8"))
    assert content["settings"] == SETTINGS


def test_checked_settings_include_compare_ones():
    assert set(EVALUATION_ASSUMPTIONS) <= set(CHECKED_SETTINGS)
    assert "measurement" in CHECKED_SETTINGS


@pytest.mark.parametrize(
    ("changes", "found"),
    [
        ({"alignment": {"padding": 0.5, "face_choice": "score"}},
         "alignment: face_choice 'center' vs 'score', padding 0.25 vs 0.5"),
        ({"dataset": {"seed": 3}}, "dataset: seed 0 vs 3"),
        ({"measurement": {"min_window_s": 0.1}}, "measurement: min_window_s 2.0 vs 0.1"),
    ],
    ids=["alignment", "dataset", "measurement"],
)
def test_other_settings_are_usage_error(baseline_file, tmp_path, changes, found):
    with pytest.raises(DataError) as caught:
        run_check(_run(1, **changes).write(tmp_path / "run"), baseline_file)
    message = str(caught.value)
    assert found in message
    assert "baseline value first" in message
    assert caught.value.exit_code == 2


def test_setting_known_on_one_side_only_is_noted(baseline_file, tmp_path):
    run = _run(1)
    run.results.assumptions["measurement"]["new_setting"] = 1
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 0, render_check_markdown(report)
    assert any("measurement.new_setting" in note for note in report.notes)


def test_old_baseline_without_settings_is_noted(baseline_file, tmp_path):
    old = _edited(baseline_file, tmp_path, lambda content: content.pop("settings"))
    report = run_check(_run(1, alignment={"padding": 0.5}).write(tmp_path / "run"), old)
    assert report.exit_code == 0, render_check_markdown(report)
    note = next(note for note in report.notes if "does not record the dataset, alignment, measurement" in note)
    assert "re-record the baseline" in note


def test_run_without_settings_is_noted(baseline_file, tmp_path):
    run = _run(1)
    del run.results.assumptions["alignment"]
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 0, render_check_markdown(report)
    assert any("does not record its alignment settings" in note for note in report.notes)


# ---------------------------------------------------------------------------------------------
# A reference figure of 0


def _zero_reference(content_or_row) -> None:
    for entry in _entries(content_or_row, REFERENCE):
        entry["figures"]["cloud_energy_j_per_inference"] = 0.0
        entry["samples"]["cloud_energy_j_per_inference"] = [0.0] * len(entry["samples"]["cloud_energy_j_per_inference"])


def test_zero_reference_in_baseline_is_undefined_not_missing(baseline_file, tmp_path):
    report = run_check(_run(1).write(tmp_path / "run"), _edited(baseline_file, tmp_path, _zero_reference))
    verdict = next(r for r in report.results
                   if r.metric == "edge_energy_j_per_inference" and r.row.startswith(STUDENT[0]))
    assert verdict.status == "skipped"
    assert "is 0 in the baseline, and a ratio to 0 is undefined" in verdict.message
    assert "no figure" not in verdict.message
    assert "a ratio to 0 is undefined" in check_summary(report)


def test_zero_reference_in_run_is_undefined_not_missing(baseline_file, tmp_path):
    run = _run(1)
    for row in run.results.rows:
        if (row.pipeline, row.variant) == REFERENCE:
            row.cloud_energy_j_per_inference = 0.0
            row.cloud_energy_j_per_inference_repeats = [0.0] * len(row.cloud_energy_j_per_inference_repeats)
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    verdict = next(r for r in report.results
                   if r.metric == "edge_energy_j_per_inference" and r.row.startswith(STUDENT[0]))
    assert verdict.status == "missing"
    assert "is 0 in this run, and a ratio to 0 is undefined" in verdict.message
    assert "is missing from this run" not in verdict.message


# ---------------------------------------------------------------------------------------------
# Options and policy


def test_cli_baseline_with_write_baseline_exits_2(baseline_file, tmp_path):
    run_dir = _run(1).write(tmp_path / "run")
    target = tmp_path / "new-baseline.json"
    result = CliRunner().invoke(
        app, ["check", str(run_dir), "--baseline", str(baseline_file), "--write-baseline", str(target)]
    )
    assert result.exit_code == 2
    assert "--baseline would be ignored" in result.output
    assert not target.exists()


def test_cli_report_option_with_write_baseline_exits_2(tmp_path):
    run_dir = _run(1).write(tmp_path / "run")
    result = CliRunner().invoke(
        app, ["check", str(run_dir), "--write-baseline", str(tmp_path / "b.json"), "--junit", str(tmp_path / "j.xml")]
    )
    assert result.exit_code == 2
    assert "--junit would be ignored" in result.output


@pytest.mark.parametrize("metric", ["pipeline", "edge_energy_method", "link_feasible", "folds"])
def test_policy_gate_on_non_numeric_column_rejected(tmp_path, metric):
    path = _policy(tmp_path, f"deterministic:\n  - {{metric: {metric}}}\n")
    with pytest.raises(DataError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert f"results column '{metric}' is not numeric" in message
    assert "payload_bytes_mean" in message  # the list of numeric columns
    assert caught.value.exit_code == 2


def test_numeric_columns():
    assert {"payload_bytes_mean", "edge_params", "n_pairs", "detection_fallbacks"} <= set(NUMERIC_COLUMNS)
    assert not {"pipeline", "folds", "link_feasible", "edge_energy_j_per_inference_repeats"} & set(NUMERIC_COLUMNS)


def test_policy_contradictory_gates_rejected(tmp_path):
    path = _policy(tmp_path, "deterministic:\n  - {metric: payload_bytes_mean}\n"
                             "  - {metric: payload_bytes_mean, direction: larger_is_better}\n")
    with pytest.raises(DataError, match="'payload_bytes_mean' is gated in both directions"):
        load_policy(path)


def test_policy_repeated_gates_rejected(tmp_path):
    deterministic = _policy(tmp_path, "deterministic:\n  - {metric: edge_macs, relative_tolerance: 0.01}\n"
                                      "  - {metric: edge_macs, relative_tolerance: 0.5}\n")
    with pytest.raises(DataError, match="'edge_macs' is gated more than once"):
        load_policy(deterministic)
    noisy = _policy(tmp_path, "noisy:\n"
                              "  - {metric: edge_latency_ms, reference_metric: cloud_latency_ms}\n"
                              "  - {metric: edge_latency_ms, reference_metric: end_to_end_latency_ms}\n")
    with pytest.raises(DataError, match="'edge_latency_ms' is gated more than once"):
        load_policy(noisy)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("min_change_ms: .inf", "finite number at 'noisy.0.min_change_ms'"),
        ("max_ratio_growth: .inf", "finite number at 'noisy.0.max_ratio_growth'"),
        ("min_change_ms: .nan", "finite number at 'noisy.0.min_change_ms'"),
        ("min_change_ms: true", "valid number at 'noisy.0.min_change_ms'"),
        ("max_ratio_growth: '2'", "valid number at 'noisy.0.max_ratio_growth'"),
    ],
)
def test_policy_limit_that_disables_gate_rejected(tmp_path, setting, expected):
    path = _policy(tmp_path, f"noisy:\n  - {{metric: edge_latency_ms, reference_metric: cloud_latency_ms, {setting}}}\n")
    with pytest.raises(DataError, match=expected) as caught:
        load_policy(path)
    assert caught.value.exit_code == 2


def test_policy_integer_limit_accepted(tmp_path):
    path = _policy(tmp_path, "noisy:\n  - {metric: edge_latency_ms, reference_metric: cloud_latency_ms, "
                             "max_ratio_growth: 2, min_change_ms: 1}\n")
    [gate] = load_policy(path).noisy
    assert gate.max_ratio_growth == 2.0
    assert gate.min_change == 1.0


# ----- policy file encoding and syntax ---------------------------------------------------------


def test_policy_not_utf8_rejected(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(b"p_value_threshold: \xff\n")
    with pytest.raises(DataError, match=r"policy file .*policy.yaml is not UTF-8 text: byte 0xff at offset 19"):
        load_policy(policy)


def test_policy_yaml_error_names_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("deterministic: [\n  - {metric: x\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_policy(policy)
    assert "<unicode string>" not in str(caught.value)
    assert "line " in str(caught.value)
