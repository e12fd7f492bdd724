"""Tests of the regression gate (vqbench.check), its U test, and run comparison."""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest_report import synthetic_run
from vqbench.check import (
    CheckPolicy,
    check_summary,
    exact_u_counts,
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
)
from vqbench.compare import compare_runs, render_comparison_markdown, render_comparison_table
from vqbench.errors import DataError

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


def test_malformed_baseline_is_usage_error(tmp_path):
    run_dir = synthetic_run(1, with_samples=False).write(tmp_path / "run")
    bad = tmp_path / "baseline.json"
    bad.write_text('{"entries": "not a list"}', encoding="utf-8")
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
