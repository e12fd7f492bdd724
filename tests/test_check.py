"""Tests of the regression gate (vqbench.check), its U test, and run comparison."""

from __future__ import annotations

import itertools
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench.check import (
    CheckPolicy,
    check_output_paths,
    check_summary,
    exact_u_counts,
    figure_problem,
    mann_whitney_greater,
    normal_p_value,
    plural,
    render_check_benchmark_json,
    render_check_junit,
    render_check_markdown,
    render_check_table,
    run_check,
    smallest_p_value,
    write_baseline,
    write_check_outputs,
)
from vqbench.cli import app
from vqbench.compare import compare_runs, render_comparison_markdown, render_comparison_table
from vqbench.errors import DataError
from vqbench.results import RunResults

STUDENT = ("edge-vq-student", "k512-14x14")


# ---------------------------------------------------------------------------------------------
# Mann-Whitney U test


def _enumerated_p_greater(x: list[float], y: list[float]) -> float:
    """P(U >= observed) by enumerating every split of the pooled values (the test's definition)."""
    pooled = x + y

    def u_of(group: tuple[int, ...]) -> float:
        first = [pooled[i] for i in group]
        second = [pooled[i] for i in range(len(pooled)) if i not in group]
        return sum((a > b) + 0.5 * (a == b) for a in first for b in second)

    observed = u_of(tuple(range(len(x))))
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    return sum(u_of(s) >= observed for s in splits) / len(splits)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([6.0, 7.0, 8.0, 9.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0]),
        ([1.1, 2.5, 3.9, 0.2], [2.0, 0.5, 1.7]),
        ([19.0, 22.0, 16.0, 29.0, 24.0], [20.0, 11.0, 17.0, 12.0]),
        ([0.3, 0.1, 0.2], [0.9, 0.8, 0.7, 0.6]),
    ],
)
def test_u_test_exact_matches_enumeration(x, y):
    result = mann_whitney_greater(np.array(x), np.array(y))
    assert result.method == "exact"
    assert result.p_value == pytest.approx(_enumerated_p_greater(x, y), rel=1e-9)


def test_u_test_separated_samples_known_p():
    result = mann_whitney_greater(np.arange(6.0, 11.0), np.arange(1.0, 6.0))
    assert result.u_statistic == 25
    assert result.p_value == pytest.approx(1 / 252, rel=1e-12)


def test_exact_counts_sum_to_binomial():
    counts = exact_u_counts(7, 5)
    assert len(counts) == 36
    assert counts.sum() == math.comb(12, 5)
    assert np.allclose(counts, counts[::-1])


@pytest.mark.parametrize("shift", [0.0, 0.3, 0.8])
def test_u_test_normal_close_to_exact(shift):
    rng = np.random.default_rng(3)
    x, y = rng.normal(shift, 1, 30), rng.normal(0, 1, 30)
    exact = mann_whitney_greater(x, y)
    assert exact.method == "exact"
    assert normal_p_value(exact.u_statistic, 30, 30) == pytest.approx(exact.p_value, abs=0.005)


def test_u_test_ties_use_normal():
    result = mann_whitney_greater(np.array([1.0, 2.0, 2.0, 3.0]), np.array([2.0, 0.5]))
    assert result.method == "normal"
    assert 0 < result.p_value < 1


def test_u_test_all_tied_is_not_significant():
    assert mann_whitney_greater(np.ones(5), np.ones(5)).p_value == 1.0


def test_smallest_p_value():
    assert smallest_p_value(3, 3) == pytest.approx(0.05)
    assert smallest_p_value(10, 10) == pytest.approx(1 / 184756)


# ---------------------------------------------------------------------------------------------
# Gate scenarios


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("baseline")
    run_dir = synthetic_run(0, with_samples=False).write(folder / "run")
    return write_baseline(run_dir, folder / "baseline.json")


def _verdict(report, metric: str, row_prefix: str):
    return next(r for r in report.results if r.metric == metric and r.row.startswith(row_prefix))


def _statuses(report, metric: str, row_prefix: str) -> list[str]:
    return [r.status for r in report.results if r.metric == metric and r.row.startswith(row_prefix)]


def test_unchanged_run_passes(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    assert report.exit_code == 0, render_check_markdown(report)
    assert not report.failures


def test_payload_growth_fails(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    row = run.row(*STUDENT)
    row.payload_bytes_mean = row.payload_bytes_mean * 1.10
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 1
    assert _statuses(report, "payload_bytes_mean", "edge-vq-student") == ["regression"]


def test_small_payload_change_within_tolerance(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.row(*STUDENT).payload_bytes_mean = 221.0 * 1.005
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 0


def test_accuracy_drop_fails(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.row(*STUDENT).lfw_accuracy_mean -= 0.003
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert _statuses(report, "lfw_accuracy_mean", "edge-vq-student") == ["regression"]


def test_edge_energy_ratio_growth_fails(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    row = run.row(*STUDENT)
    row.edge_energy_j_per_inference_repeats = [v * 1.3 for v in row.edge_energy_j_per_inference_repeats]
    row.edge_energy_j_per_inference *= 1.3
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 1
    verdict = _verdict(report, "edge_energy_j_per_inference", "edge-vq-student")
    assert verdict.status == "regression"
    assert verdict.change == pytest.approx(1.3, rel=0.05)
    assert verdict.p_value is not None and verdict.p_value < 0.05


def test_uniformly_slower_machine_passes(baseline_file, tmp_path):
    run_dir = synthetic_run(2, machine_slowdown=2.0, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    assert report.exit_code == 0, render_check_markdown(report)


def test_missing_metric_fails(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.row(*STUDENT).edge_params = None
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 1
    verdict = next(r for r in report.results if r.status == "missing")
    assert verdict.metric == "edge_params"
    assert "missing from this run" in verdict.message


def test_missing_row_fails(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.results.rows = [r for r in run.results.rows if r.pipeline != "edge-embed"]
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    assert report.exit_code == 1
    assert [r.row.split(" ")[0] for r in report.failures] == ["edge-embed/int8"]
    assert check_summary(report).startswith("vqbench check FAILED: 1 missing row, ")
    assert "missing figure" not in check_summary(report)


def test_malformed_baseline_is_usage_error(tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    bad = tmp_path / "baseline.json"
    bad.write_text('{"baseline_schema_version": 1, "entries": "not a list"}', encoding="utf-8")
    with pytest.raises(DataError, match="baseline.json") as caught:
        run_check(run_dir, bad)
    assert caught.value.exit_code == 2


def test_missing_baseline_is_usage_error(tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    with pytest.raises(DataError, match="not found") as caught:
        run_check(run_dir, tmp_path / "absent.json")
    assert caught.value.exit_code == 2


def test_unknown_policy_key_is_usage_error(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    policy = tmp_path / "policy.yaml"
    policy.write_text("p_value_threshold: 0.01\nthreshold_factor: 2\n", encoding="utf-8")
    with pytest.raises(DataError, match="threshold_factor"):
        run_check(run_dir, baseline_file, policy)


def test_policy_factor_is_configurable(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    row = run.row(*STUDENT)
    row.edge_energy_j_per_inference_repeats = [v * 1.3 for v in row.edge_energy_j_per_inference_repeats]
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "noisy:\n  - {metric: edge_energy_j_per_inference, reference_metric: cloud_energy_j_per_inference,"
        " max_ratio_growth: 1.5}\n",
        encoding="utf-8",
    )
    report = run_check(run.write(tmp_path / "run"), baseline_file, policy)
    assert report.exit_code == 0


def _tiny_cloud_energy_growth(tmp_path, policy_text: str | None):
    """Grow edge-embed's 1 mJ cloud energy 1.5x; return the run folder and the policy file, if any."""
    run = synthetic_run(1, with_samples=False)
    row = run.row("edge-embed", "int8")
    row.cloud_energy_j_per_inference_repeats = [v * 1.5 for v in row.cloud_energy_j_per_inference_repeats]
    policy = None
    if policy_text is not None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(policy_text, encoding="utf-8")
    return run.write(tmp_path / "run"), policy


def test_change_under_floor_passes(baseline_file, tmp_path):
    run_dir, _ = _tiny_cloud_energy_growth(tmp_path, None)
    verdict = _verdict(run_check(run_dir, baseline_file), "cloud_energy_j_per_inference", "edge-embed")
    assert verdict.change == pytest.approx(1.5, rel=0.05)
    assert verdict.status == "pass"
    assert "under the gate's floor of 0.001 J" in verdict.message
    assert "a change under 0.001 J passes" in verdict.limit


def test_floor_of_zero_gates_every_change(baseline_file, tmp_path):
    run_dir, policy = _tiny_cloud_energy_growth(
        tmp_path,
        "noisy:\n  - {metric: cloud_energy_j_per_inference, reference_metric: cloud_energy_j_per_inference,"
        " min_change_j: 0}\n",
    )
    verdict = _verdict(run_check(run_dir, baseline_file, policy), "cloud_energy_j_per_inference", "edge-embed")
    assert verdict.status == "regression"
    assert "floor" not in verdict.message


def test_floor_in_wrong_unit_is_usage_error(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "noisy:\n  - {metric: edge_latency_ms, reference_metric: cloud_latency_ms, min_change_j: 0.5}\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="edge_latency_ms is in ms, so its floor is min_change_ms") as caught:
        run_check(run_dir, baseline_file, policy)
    assert caught.value.exit_code == 2


def test_too_few_repeats_uses_ratio_alone(tmp_path):
    base_dir = synthetic_run(0, repeats=3, with_samples=False).write(tmp_path / "base")
    baseline = write_baseline(base_dir, tmp_path / "baseline.json")
    run = synthetic_run(1, repeats=3, with_samples=False)
    row = run.row(*STUDENT)
    row.edge_energy_j_per_inference_repeats = [v * 1.3 for v in row.edge_energy_j_per_inference_repeats]
    report = run_check(run.write(tmp_path / "run"), baseline)
    verdict = _verdict(report, "edge_energy_j_per_inference", "edge-vq-student")
    assert verdict.status == "regression"
    assert "the ratio threshold decides alone" in verdict.message


def test_renderers(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.row(*STUDENT).payload_bytes_mean = 300.0
    report = run_check(run.write(tmp_path / "run"), baseline_file)

    markdown = render_check_markdown(report)
    assert "vqbench check failed" in markdown
    assert "| regression | edge-vq-student/k512-14x14" in markdown

    suite = ET.fromstring(render_check_junit(report).split("?>", 1)[1])
    assert suite.get("failures") == "1"
    assert len(suite.findall("testcase")) == len(report.results)

    entries = json.loads(render_check_benchmark_json(report))
    assert all(set(entry) >= {"name", "unit", "value"} for entry in entries)
    error_rates = [e for e in entries if e["name"].endswith("lfw_error_rate")]
    assert error_rates and all(0 <= e["value"] < 0.05 for e in error_rates)

    assert _table_rows(render_check_table(report, show_passing=True)) == len(report.results)
    assert _table_rows(render_check_table(report)) == sum(r.status not in ("pass", "skipped") for r in report.results)


def _table_rows(renderable) -> int:
    from rich.table import Table

    tables = [part for part in renderable.renderables if isinstance(part, Table)]
    return tables[0].row_count if tables else 0


def _console_text(renderable) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def test_default_table_shows_failures_and_one_line_summary(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.row(*STUDENT).payload_bytes_mean = 300.0
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    text = _console_text(render_check_table(report))
    assert text.startswith("vqbench check FAILED: 1 regression, ")
    assert " passed" in check_summary(report)
    assert "payload_bytes_mean" in text
    assert "lfw_accuracy_mean" not in text  # passing verdicts are hidden by default


def test_plural():
    assert plural(1, "row") == "1 row"
    assert plural(4, "row") == "4 rows"
    assert plural(4, "regression") == "4 regressions"


def test_default_growth_limits():
    limits = {gate.metric: gate.max_ratio_growth for gate in CheckPolicy().noisy}
    assert limits["edge_latency_ms"] == limits["cloud_latency_ms"] == 1.5
    assert limits["edge_energy_j_per_inference"] == limits["cloud_energy_j_per_inference"] == 1.2


def test_host_figures_gated_once_per_variant(tmp_path):
    links, devices = ("wifi", "lte"), ("host", "raspberry-pi-4")
    base_dir = synthetic_run(0, links=links, devices=devices, with_samples=False).write(tmp_path / "base")
    baseline = write_baseline(base_dir, tmp_path / "baseline.json")
    run_dir = synthetic_run(1, links=links, devices=devices, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline)
    cloud_latency = [r.row for r in report.results if r.metric == "cloud_latency_ms"]
    variants = {row.split(" ")[0] for row in cloud_latency}
    assert len(cloud_latency) == len(variants) > 1  # one verdict per pipeline variant, not four
    assert all(row.endswith("[wifi, host]") for row in cloud_latency)
    student = [r for r in report.results if r.metric == "edge_energy_j_per_inference" and r.row.startswith(STUDENT[0])]
    assert [r.row for r in student] == ["edge-vq-student/k512-14x14 [wifi, host]"]
    assert report.exit_code == 0, render_check_markdown(report)


def test_latency_growth_below_default_limit_passes(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    cloud = (run.latency["pipeline"] == STUDENT[0]) & (run.latency["stage"] == "cloud")
    run.latency.loc[cloud, "latency_ms"] *= 1.35
    report = run_check(run.write(tmp_path / "run"), baseline_file)
    verdict = _verdict(report, "cloud_latency_ms", STUDENT[0])
    assert verdict.status in ("pass", "warn")
    assert verdict.change == pytest.approx(1.35, rel=0.1)
    assert report.exit_code == 0


# ---------------------------------------------------------------------------------------------
# Bad input: figure values, baseline version and content, evaluation set, reference


def _set_row_figure(run_dir: Path, key: tuple[str, str], metric: str, value: float) -> Path:
    """Set a figure in results.json directly: the schema writes NaN and infinity as null, json writes them as is."""
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    for row in content["rows"]:
        if (row["pipeline"], row["variant"]) == key:
            row[metric] = value
    path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("lfw_accuracy_mean", math.nan, "lfw_accuracy_mean = nan"),
        ("lfw_accuracy_mean", 1.5, "lfw_accuracy_mean = 1.5"),
        ("payload_bytes_mean", -5.0, "payload_bytes_mean = -5"),
        ("payload_bytes_p95", math.inf, "payload_bytes_p95 = inf"),
    ],
)
def test_invalid_figure_is_usage_error(baseline_file, tmp_path, metric, value, expected):
    run_dir = _set_row_figure(synthetic_run(1, with_samples=False).write(tmp_path / "run"), STUDENT, metric, value)
    with pytest.raises(DataError, match=expected) as caught:
        run_check(run_dir, baseline_file)
    assert "edge-vq-student/k512-14x14" in str(caught.value)
    assert caught.value.exit_code == 2


def test_negative_energy_sample_is_usage_error(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    run.row(*STUDENT).cloud_energy_j_per_inference_repeats[0] = -0.5
    with pytest.raises(DataError, match="cloud_energy_j_per_inference sample -0.5"):
        run_check(run.write(tmp_path / "run"), baseline_file)


def test_nan_latency_sample_is_usage_error(baseline_file, tmp_path):
    run = synthetic_run(1, with_samples=False)
    edge = (run.latency["pipeline"] == STUDENT[0]) & (run.latency["stage"] == "edge")
    run.latency.loc[edge, "latency_ms"] = math.nan
    with pytest.raises(DataError, match="edge_latency_ms sample nan"):
        run_check(run.write(tmp_path / "run"), baseline_file)


def test_figure_problem_rules():
    assert figure_problem("cloud_dynamic_energy_j_per_inference", -0.01) is None
    assert figure_problem("payload_bytes_mean", 0.0) is None
    assert figure_problem("lfw_accuracy_mean", 1.0) is None
    assert "negative" in figure_problem("edge_energy_j_per_inference", -1e-6)
    assert "fraction" in figure_problem("eer", 1.01)
    assert "NaN" in figure_problem("cloud_params", math.nan)


def test_write_baseline_rejects_nan_figure(tmp_path):
    # A NaN would be stored as null, which leaves the figure ungated in every later check.
    run_dir = _set_row_figure(synthetic_run(0, with_samples=False).write(tmp_path / "run"), STUDENT,
                              "lfw_accuracy_mean", math.nan)
    target = tmp_path / "baseline.json"
    with pytest.raises(DataError, match="lfw_accuracy_mean = nan"):
        write_baseline(run_dir, target)
    assert not target.exists()


def _edited_baseline(baseline_file: Path, tmp_path: Path, edit) -> Path:
    content = json.loads(baseline_file.read_text(encoding="utf-8"))
    edit(content)
    path = tmp_path / "edited-baseline.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (lambda content: content.update(baseline_schema_version=2), "baseline_schema_version 2"),
        (lambda content: content.update(baseline_schema_version="1"), "baseline_schema_version '1'"),
        (lambda content: content.pop("baseline_schema_version"), "has no baseline_schema_version"),
    ],
)
def test_unsupported_baseline_version_is_usage_error(baseline_file, tmp_path, edit, found):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    with pytest.raises(DataError, match=found) as caught:
        run_check(run_dir, _edited_baseline(baseline_file, tmp_path, edit))
    message = str(caught.value)
    assert "reads only version 1" in message
    assert "--write-baseline" in message


def test_empty_baseline_is_usage_error(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    empty = _edited_baseline(baseline_file, tmp_path, lambda content: content.update(entries=[]))
    with pytest.raises(DataError, match="has no entries, so it gates nothing") as caught:
        run_check(run_dir, empty)
    assert caught.value.exit_code == 2


def test_negative_baseline_figure_is_usage_error(baseline_file, tmp_path):
    def edit(content):
        content["entries"][0]["figures"]["payload_bytes_mean"] = -5.0

    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    with pytest.raises(DataError, match=r"baseline file .* payload_bytes_mean = -5.*--write-baseline"):
        run_check(run_dir, _edited_baseline(baseline_file, tmp_path, edit))


def test_baseline_records_evaluation_set(baseline_file):
    content = json.loads(baseline_file.read_text(encoding="utf-8"))
    assert content["scenario_name"] == "synthetic"
    assert content["n_pairs"] == 600
    assert content["folds"] == list(range(1, 11))


def _with_pairs(run, n_pairs: int, folds: list[int] | None = None):
    for row in run.results.rows:
        row.n_pairs = n_pairs
        row.folds = folds if folds is not None else row.folds
    return run


def test_other_scenario_is_usage_error(baseline_file, tmp_path):
    run = _with_pairs(synthetic_run(1, with_samples=False), 40)
    run.results.scenario_name = "quickstart"
    with pytest.raises(DataError) as caught:
        run_check(run.write(tmp_path / "run"), baseline_file)
    message = str(caught.value)
    assert "scenario 'quickstart', 40 pairs" in message
    assert "scenario 'synthetic', 600 pairs" in message
    assert caught.value.exit_code == 2


def test_other_folds_is_usage_error(baseline_file, tmp_path):
    run = _with_pairs(synthetic_run(1, with_samples=False), 600, folds=[9, 10])
    with pytest.raises(DataError, match="folds 9, 10.*folds 1, 2, 3"):
        run_check(run.write(tmp_path / "run"), baseline_file)


def test_old_baseline_without_evaluation_set_still_checks(baseline_file, tmp_path):
    def drop_new_fields(content):
        for name in ("n_pairs", "folds", "max_load_average_1min_while_timing", "cpu_logical_cores"):
            content.pop(name)

    old = _edited_baseline(baseline_file, tmp_path, drop_new_fields)
    report = run_check(synthetic_run(1, with_samples=False).write(tmp_path / "same"), old)
    assert report.exit_code == 0, render_check_markdown(report)
    fewer_pairs = _with_pairs(synthetic_run(1, with_samples=False), 40).write(tmp_path / "fewer")
    with pytest.raises(DataError, match="40 pairs.*600 pairs"):
        run_check(fewer_pairs, old)


def test_unknown_reference_is_usage_error(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    policy = tmp_path / "policy.yaml"
    policy.write_text("reference: {pipeline: cloud-raw, variant: nope}\n", encoding="utf-8")
    with pytest.raises(DataError, match="reference cloud-raw/nope") as caught:
        run_check(run_dir, baseline_file, policy)
    assert "cloud-codec/jpeg-q50, cloud-codec/webp-q30" in str(caught.value)
    assert caught.value.exit_code == 2


def _run_without_cloud_raw(seed: int):
    run = synthetic_run(seed, with_samples=False)
    run.results.rows = [row for row in run.results.rows if row.pipeline != "cloud-raw"]
    return run


def test_missing_default_reference_is_usage_error(tmp_path):
    baseline = write_baseline(_run_without_cloud_raw(0).write(tmp_path / "base"), tmp_path / "baseline.json")
    run_dir = _run_without_cloud_raw(1).write(tmp_path / "run")
    with pytest.raises(DataError, match="reference cloud-raw/original.*set `reference` in a --policy file"):
        run_check(run_dir, baseline)


def _check_without_cloud_raw(tmp_path, policy_text):
    """Check a run without cloud-raw against a baseline without it, under the given policy."""
    baseline = write_baseline(_run_without_cloud_raw(0).write(tmp_path / "base"), tmp_path / "baseline.json")
    run_dir = _run_without_cloud_raw(1).write(tmp_path / "run")
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text, encoding="utf-8")
    return run_check(run_dir, baseline, policy)


def test_other_reference_gates_ratios(tmp_path):
    report = _check_without_cloud_raw(tmp_path, "reference: {pipeline: cloud-codec, variant: jpeg-q50}\n")
    judged = [r for r in report.results if r.kind == "ratio" and r.status != "skipped"]
    assert len(judged) > 0
    assert report.exit_code == 0, render_check_markdown(report)


def test_no_noisy_gates_need_no_reference(tmp_path):
    report = _check_without_cloud_raw(tmp_path, "noisy: []\n")
    assert not [r for r in report.results if r.kind == "ratio"]
    assert report.exit_code == 0


# ---------------------------------------------------------------------------------------------
# Busy hosts


def _slow_reference_run(seed: int, factor: float):
    """A run whose cloud-raw cloud stage alone is ``factor`` times slower, as when other jobs ran during it."""
    run = synthetic_run(seed, with_samples=False)
    reference = (run.latency["pipeline"] == "cloud-raw") & (run.latency["stage"] == "cloud")
    run.latency.loc[reference, "latency_ms"] *= factor
    return run


def _set_load(run, load_1min: float, cpus: int):
    run.environment["max_load_average_1min_while_timing"] = load_1min
    run.environment["cpu_logical_cores"] = cpus
    return run


def test_busy_baseline_makes_noisy_gates_inconclusive(tmp_path):
    base_dir = _set_load(_slow_reference_run(0, 2.3), 5.0, 2).write(tmp_path / "base")
    baseline = write_baseline(base_dir, tmp_path / "baseline.json")
    run_dir = _set_load(synthetic_run(1, with_samples=False), 0.5, 2).write(tmp_path / "run")
    report = run_check(run_dir, baseline)
    verdict = _verdict(report, "edge_latency_ms", "cloud-codec/jpeg-q50")
    assert verdict.status == "inconclusive"
    assert verdict.change == pytest.approx(2.3, rel=0.1)
    assert "the baseline run (load 5.00 on 2 CPUs)" in verdict.message
    assert "the reference's cloud_latency_ms itself moved" in verdict.message
    assert report.exit_code == 0, render_check_markdown(report)
    summary = check_summary(report)
    assert "inconclusive" in summary
    assert "host busy while timing the baseline run (load 5.00 on 2 CPUs)" in summary


def test_busy_host_still_gates_deterministic_figures(tmp_path):
    baseline = write_baseline(_set_load(synthetic_run(0, with_samples=False), 5.0, 2).write(tmp_path / "base"),
                              tmp_path / "baseline.json")
    run = _set_load(synthetic_run(1, with_samples=False), 5.0, 2)
    run.row(*STUDENT).payload_bytes_mean = 300.0
    report = run_check(run.write(tmp_path / "run"), baseline)
    assert _statuses(report, "payload_bytes_mean", STUDENT[0]) == ["regression"]
    assert report.exit_code == 1


def _quiet_reference_shift(tmp_path):
    """A quiet baseline whose reference stage alone ran 2.3x slower, and a quiet run without that."""
    base_dir = _set_load(_slow_reference_run(0, 2.3), 1.0, 8).write(tmp_path / "base")
    baseline = write_baseline(base_dir, tmp_path / "baseline.json")
    return _set_load(synthetic_run(1, with_samples=False), 1.0, 8), baseline


def test_reference_shift_alone_is_inconclusive(tmp_path):
    run, baseline = _quiet_reference_shift(tmp_path)
    report = run_check(run.write(tmp_path / "run"), baseline)
    verdict = _verdict(report, "edge_latency_ms", "cloud-codec/jpeg-q50")
    assert verdict.status == "inconclusive"
    assert verdict.change == pytest.approx(2.3, rel=0.1)
    assert verdict.message.startswith("inconclusive: the reference moved past the limit")
    assert "the reference's cloud_latency_ms itself moved" in verdict.message
    assert "inconclusive because the reference cloud-raw/original moved" in check_summary(report)
    assert report.exit_code == 0, render_check_markdown(report)


def test_row_change_with_reference_shift_still_fails(tmp_path):
    run, baseline = _quiet_reference_shift(tmp_path)
    edge = (run.latency["pipeline"] == "cloud-codec") & (run.latency["variant"] == "jpeg-q50") & (
        run.latency["stage"] == "edge")
    run.latency.loc[edge, "latency_ms"] *= 2.0
    report = run_check(run.write(tmp_path / "run"), baseline)
    assert _verdict(report, "edge_latency_ms", "cloud-codec/jpeg-q50").status == "regression"
    assert report.exit_code == 1


def test_reference_drift_policy_gate_judges_anyway(tmp_path):
    run, baseline = _quiet_reference_shift(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("on_reference_drift: gate\n", encoding="utf-8")
    report = run_check(run.write(tmp_path / "run"), baseline, policy)
    assert _verdict(report, "edge_latency_ms", "cloud-codec/jpeg-q50").status == "regression"
    assert report.exit_code == 1


def test_busy_host_policy_gate_judges_anyway(tmp_path):
    base_dir = _set_load(_slow_reference_run(0, 2.3), 5.0, 2).write(tmp_path / "base")
    baseline = write_baseline(base_dir, tmp_path / "baseline.json")
    run_dir = _set_load(synthetic_run(1, with_samples=False), 0.5, 2).write(tmp_path / "run")
    policy = tmp_path / "policy.yaml"
    policy.write_text("on_busy_host: gate\non_reference_drift: gate\n", encoding="utf-8")
    report = run_check(run_dir, baseline, policy)
    assert _verdict(report, "edge_latency_ms", "cloud-codec/jpeg-q50").status == "regression"
    assert "gated although the host busy" in check_summary(report)
    assert report.exit_code == 1


def test_busy_warning_without_environment_file(baseline_file, tmp_path, monkeypatch):
    from vqbench import environment

    monkeypatch.setattr(environment.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(environment.os, "cpu_count", lambda: 4)
    _, warning = environment.busy_host_warning()
    run = synthetic_run(1, with_samples=False)
    run.results.warnings.append(warning)
    run_dir = run.write(tmp_path / "run")
    (run_dir / "environment.json").unlink()
    report = run_check(run_dir, baseline_file)
    assert "this run (load 9.00 on 4 CPUs)" in check_summary(report)
    assert _statuses(report, "cloud_latency_ms", STUDENT[0]) == ["inconclusive"]


def test_unknown_host_load_is_noted(baseline_file, tmp_path):
    report = run_check(synthetic_run(1, with_samples=False).write(tmp_path / "run"), baseline_file)
    assert any("does not record the host load" in note for note in report.notes)
    assert any("no host load in environment.json" in note for note in report.notes)


def test_inconclusive_renderers(tmp_path):
    base_dir = _set_load(_slow_reference_run(0, 2.3), 5.0, 2).write(tmp_path / "base")
    baseline = write_baseline(base_dir, tmp_path / "baseline.json")
    report = run_check(synthetic_run(1, with_samples=False).write(tmp_path / "run"), baseline)
    inconclusive = sum(r.status == "inconclusive" for r in report.results)
    assert inconclusive > 0
    suite = ET.fromstring(render_check_junit(report).split("?>", 1)[1])
    assert suite.get("failures") == "0"
    assert "host busy" in suite.find("system-out").text
    assert "**Warning:** latency and energy inconclusive" in render_check_markdown(report)
    assert _table_rows(render_check_table(report)) == inconclusive


# ---------------------------------------------------------------------------------------------
# Output files


def test_write_baseline_onto_run_file_rejected(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    for name in ("results.json", "results.csv", "environment.json"):
        before = (run_dir / name).read_bytes()
        with pytest.raises(DataError, match=f"would replace {name} of the run folder"):
            write_baseline(run_dir, run_dir / "sub" / ".." / name)
        assert (run_dir / name).read_bytes() == before


def test_cli_write_baseline_onto_results_exits_2(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    before = (run_dir / "results.json").read_bytes()
    result = CliRunner().invoke(app, ["check", str(run_dir), "--write-baseline", str(run_dir / "results.json")])
    assert result.exit_code == 2
    assert "would replace results.json" in result.output
    assert (run_dir / "results.json").read_bytes() == before


def test_check_outputs_onto_run_or_input_files_rejected(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    before = (run_dir / "results.csv").read_bytes()
    with pytest.raises(DataError, match="--junit .* would replace results.csv"):
        write_check_outputs(report, {"--junit": run_dir / "results.csv"})
    assert (run_dir / "results.csv").read_bytes() == before
    with pytest.raises(DataError, match="--markdown .* is the file given to --baseline"):
        write_check_outputs(report, {"--markdown": baseline_file})
    with pytest.raises(DataError, match="--junit and --markdown both name"):
        check_output_paths(run_dir, {"--junit": tmp_path / "a.xml", "--markdown": tmp_path / "a.xml"}, baseline_file)


def test_check_outputs_beside_run_files_written(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    outputs = {"--junit": run_dir / "check-junit.xml", "--markdown": run_dir / "check.md", "--benchmark-json": None}
    assert write_check_outputs(report, outputs) == [run_dir / "check-junit.xml", run_dir / "check.md"]
    assert (run_dir / "check.md").read_text(encoding="utf-8").startswith("### ✅ vqbench check passed")


def test_output_folder_or_unwritable_path_is_usage_error(baseline_file, tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    report = run_check(run_dir, baseline_file)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DataError, match="--junit .* is a folder; give a file path"):
        write_check_outputs(report, {"--junit": folder})
    with pytest.raises(DataError, match="--write-baseline .* is a folder"):
        write_baseline(run_dir, folder)
    plain_file = tmp_path / "plain"
    plain_file.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="--write-baseline .* could not be written"):
        write_baseline(run_dir, plain_file / "baseline.json")
    with pytest.raises(DataError, match="--markdown .* could not be written"):
        write_check_outputs(report, {"--markdown": plain_file / "check.md"})


def test_cli_write_baseline_to_folder_exits_2(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "run")
    result = CliRunner().invoke(app, ["check", str(run_dir), "--write-baseline", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a folder" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# Results schema version and interrupted runs


def _write_results_field(run_dir: Path, **fields) -> Path:
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content.update(fields)
    path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


def test_unknown_results_schema_is_usage_error(baseline_file, tmp_path):
    run_dir = _write_results_field(synthetic_run(1, with_samples=False).write(tmp_path / "run"), schema_version=9)
    with pytest.raises(DataError, match="results schema_version 9 .* reads only version 1") as caught:
        run_check(run_dir, baseline_file)
    assert caught.value.exit_code == 2
    with pytest.raises(DataError, match="schema_version 9"):
        compare_runs(run_dir, run_dir)


class _MarkedResults(RunResults):
    """RunResults with the interrupted-run marker, for a results schema that does not define it yet."""

    complete: bool = True
    variants_missing: list[str] = Field(default_factory=list)


@pytest.fixture
def marked_results(monkeypatch):
    monkeypatch.setattr("vqbench.report.loader.RunResults", _MarkedResults)


def _interrupted_run(seed: int, tmp_path: Path) -> Path:
    run = synthetic_run(seed, with_samples=False)
    run.results.rows = [row for row in run.results.rows if row.pipeline != "edge-embed"]
    run_dir = run.write(tmp_path / f"interrupted-{seed}")
    return _write_results_field(run_dir, complete=False, variants_missing=["edge-embed/int8"])


def test_write_baseline_rejects_incomplete_run(marked_results, tmp_path):
    target = tmp_path / "baseline.json"
    with pytest.raises(DataError, match="incomplete.*edge-embed/int8") as caught:
        write_baseline(_interrupted_run(0, tmp_path), target)
    assert caught.value.exit_code == 2
    assert not target.exists()


def test_check_reports_incomplete_run(marked_results, baseline_file, tmp_path):
    report = run_check(_interrupted_run(1, tmp_path), baseline_file)
    assert report.exit_code == 1
    assert "this run is incomplete (it was interrupted), variants missing: edge-embed/int8" in check_summary(report)
    missing = [r for r in report.results if r.status == "missing"]
    assert [r.row.split(" ")[0] for r in missing] == ["edge-embed/int8"]
    assert "which is incomplete because it was interrupted" in missing[0].message


def test_complete_run_marker_accepted(marked_results, baseline_file, tmp_path):
    run_dir = _write_results_field(synthetic_run(1, with_samples=False).write(tmp_path / "run"), complete=True)
    report = run_check(run_dir, baseline_file)
    assert report.exit_code == 0
    assert "incomplete" not in check_summary(report)


# ---------------------------------------------------------------------------------------------
# compare


def test_compare_runs_differences(tmp_path):
    run_a = synthetic_run(0, with_samples=False).write(tmp_path / "a")
    changed = synthetic_run(0, with_samples=False)
    changed.row(*STUDENT).payload_bytes_mean = 250.0
    changed.results.rows = [r for r in changed.results.rows if r.pipeline != "edge-embed"]
    run_b = changed.write(tmp_path / "b")

    comparison = compare_runs(run_a, run_b)
    payload = comparison[(comparison["pipeline"] == "edge-vq-student") & (comparison["metric"] == "payload_bytes_mean")]
    assert payload["difference"].tolist() == [29.0]
    assert payload["relative_change"].iloc[0] == pytest.approx(29 / 221)
    assert set(comparison.loc[comparison["pipeline"] == "edge-embed", "presence"]) == {"only_a"}

    markdown = render_comparison_markdown(comparison)
    assert "payload_bytes_mean" in markdown
    assert "cloud-raw/original [wifi, raspberry-pi-4] | payload_bytes_mean" not in markdown  # unchanged rows hidden


def test_compare_same_run_says_no_differences(tmp_path):
    run_dir = synthetic_run(0, with_samples=False).write(tmp_path / "a")
    comparison = compare_runs(run_dir, run_dir)
    assert "no differences" in _console_text(render_comparison_table(comparison, title="a vs a"))
    assert render_comparison_markdown(comparison) == "No differences.\n"


def test_compare_sign_change(tmp_path):
    run_a = synthetic_run(0, with_samples=False)
    run_a.row(*STUDENT).cloud_dynamic_energy_j_per_inference = -0.01
    run_b = synthetic_run(0, with_samples=False)
    run_b.row(*STUDENT).cloud_dynamic_energy_j_per_inference = 0.005
    comparison = compare_runs(run_a.write(tmp_path / "a"), run_b.write(tmp_path / "b"))
    markdown = render_comparison_markdown(comparison)
    line = next(line for line in markdown.splitlines() if "cloud_dynamic_energy_j_per_inference" in line)
    assert line.rstrip(" |").endswith("sign changed")


# ---------------------------------------------------------------------------------------------
# Gate noise benchmark


def test_gate_noise_reports_largest_growth(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_gate_noise import largest_growths

    first = synthetic_run(0, with_samples=False)
    second = synthetic_run(1, with_samples=False)
    edge = (second.latency["pipeline"] == "cloud-codec") & (second.latency["stage"] == "edge")
    second.latency.loc[edge, "latency_ms"] *= 1.3
    run_dirs = [first.write(tmp_path / "first"), second.write(tmp_path / "second")]
    baselines = [write_baseline(run_dir, tmp_path / f"{run_dir.name}.json") for run_dir in run_dirs]

    worst = largest_growths(run_dirs, baselines, None)
    edge_latency = worst["edge_latency_ms"]
    assert edge_latency["row"].startswith("cloud-codec/")
    assert edge_latency["largest_growth"] == pytest.approx(1.3, rel=0.05)
    assert edge_latency["margin"] == pytest.approx(1.5 / edge_latency["largest_growth"])
    # edge-embed's 0.05 ms cloud half moves by less than the 0.1 ms floor, so it is left out.
    assert not worst["cloud_latency_ms"]["row"].startswith("edge-embed/")


def test_missing_latency_file_noted_only_with_rows(baseline_file, tmp_path):
    with_rows = synthetic_run(1, with_samples=False).write(tmp_path / "rows")
    (with_rows / "latency.parquet").unlink()
    assert any("latency.parquet is missing" in note for note in run_check(with_rows, baseline_file).notes)

    empty = synthetic_run(1, with_samples=False)
    empty.results.rows = []
    empty_dir = empty.write(tmp_path / "empty")
    (empty_dir / "latency.parquet").unlink()
    report = run_check(empty_dir, baseline_file)
    assert report.exit_code == 1
    assert not any("latency.parquet is missing" in note for note in report.notes)
