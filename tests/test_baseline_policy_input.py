"""Tests of how strictly `vqbench check` reads baseline and policy files.

A baseline is read as strictly as results.json: strict JSON types, every figure a possible
measurement, no key or row given twice, a valid host load. A policy is read as scenario files
are: YAML 1.2 scalars, no key given twice, strict numbers, and messages that show the value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_check import _set_load
from test_check_guards import REFERENCE, STUDENT, _edited, _entries, _policy, _run
from test_check_guards import baseline_file  # noqa: F401 - a baseline recorded from _run(0), a fixture
from vqbench.check import load_baseline, load_policy, run_check, write_baseline
from vqbench.cli import app
from vqbench.errors import DataError


def _set_figure(key: tuple[str, str], metric: str, value: object):
    """Return an edit that sets ``metric`` of the entries of ``key`` to ``value``."""

    def edit(content: dict) -> None:
        for entry in _entries(content, key):
            entry["figures"][metric] = value

    return edit


def _entry_index(baseline_file: Path, key: tuple[str, str]) -> int:
    """Return the index of the first entry of ``key`` in the baseline's entries."""
    entries = json.loads(baseline_file.read_text(encoding="utf-8"))["entries"]
    return next(index for index, entry in enumerate(entries) if (entry["pipeline"], entry["variant"]) == key)


def _check_error(baseline_file: Path, tmp_path: Path) -> DataError:
    """Check a fresh run against ``baseline_file`` and return the DataError that it must raise."""
    with pytest.raises(DataError) as caught:
        run_check(_run(1).write(tmp_path / "run"), baseline_file)
    return caught.value


@pytest.fixture(scope="module")
def loaded_baseline_file(tmp_path_factory) -> Path:
    """A baseline whose run recorded its host load: 1.0 on 8 CPUs, a quiet host."""
    folder = tmp_path_factory.mktemp("host-load")
    return write_baseline(_set_load(_run(0), 1.0, 8).write(folder / "run"), folder / "baseline.json")


# ---------------------------------------------------------------------------------------------
# Baseline figures of the wrong JSON type


@pytest.mark.parametrize(("value", "shown"), [(True, "(got True)"), ("0.99", "(got '0.99')")], ids=["bool", "text"])
def test_baseline_figure_of_wrong_type_rejected(baseline_file, tmp_path, value, shown):
    edited = _edited(baseline_file, tmp_path, _set_figure(STUDENT, "lfw_accuracy_mean", value))
    error = _check_error(edited, tmp_path)
    message = str(error)
    index = _entry_index(baseline_file, STUDENT)
    assert error.exit_code == 2
    assert str(edited) in message
    assert f"at 'entries.{index}.figures.lfw_accuracy_mean'" in message
    assert shown in message
    assert f"--write-baseline {edited}" in message


def test_baseline_bool_figure_exits_2_in_cli(baseline_file, tmp_path):
    edited = _edited(baseline_file, tmp_path, _set_figure(STUDENT, "lfw_accuracy_mean", True))
    run_dir = _run(1).write(tmp_path / "run")
    result = CliRunner().invoke(app, ["check", str(run_dir), "--baseline", str(edited)])
    assert result.exit_code == 2
    assert "lfw_accuracy_mean" in result.output


# ---------------------------------------------------------------------------------------------
# Baseline figures that no run can produce, gated or not


@pytest.mark.parametrize(
    ("key", "metric", "value", "reason"),
    [
        (STUDENT, "edge_energy_j_per_inference", math.inf, "an infinite value is not a measurement"),
        (STUDENT, "cloud_energy_j_per_inference", -math.inf, "an infinite value is not a measurement"),
        (STUDENT, "eer", math.nan, "NaN is not a measurement"),
        (REFERENCE, "cloud_energy_j_per_inference", -1.0, "cloud_energy_j_per_inference cannot be negative"),
        (STUDENT, "total_energy_j_per_inference", -1.0, "total_energy_j_per_inference cannot be negative"),
        (STUDENT, "roc_auc", 1.5, "roc_auc is a fraction and cannot exceed 1"),
    ],
    ids=["edge-energy-inf", "cloud-energy-minus-inf", "eer-nan", "reference-energy-negative", "ungated-negative",
         "fraction-above-1"],
)
def test_impossible_baseline_figure_rejected(baseline_file, tmp_path, key, metric, value, reason):
    edited = _edited(baseline_file, tmp_path, _set_figure(key, metric, value))
    error = _check_error(edited, tmp_path)
    message = str(error)
    index = _entry_index(baseline_file, key)
    assert error.exit_code == 2
    assert str(edited) in message
    assert f"row {key[0]}/{key[1]}" in message
    assert f"{metric} = {value:g} at 'entries.{index}.figures.{metric}'" in message
    assert reason in message
    assert "--write-baseline" in message


def test_dynamic_energy_may_be_negative_in_baseline(baseline_file, tmp_path):
    # Dynamic energy is measured minus idle energy, so noise can push it below 0 in a real run.
    edited = _edited(baseline_file, tmp_path, _set_figure(STUDENT, "edge_dynamic_energy_j_per_inference", -0.01))
    report = run_check(_run(1).write(tmp_path / "run"), edited)
    assert report.exit_code == 0


def test_non_numeric_column_with_number_rejected(baseline_file, tmp_path):
    edited = _edited(baseline_file, tmp_path, _set_figure(STUDENT, "code_grid", 14.0))
    message = str(_check_error(edited, tmp_path))
    assert "code_grid = 14" in message
    assert "not a numeric column of results.csv" in message


# ---------------------------------------------------------------------------------------------
# Unknown names in a baseline


def test_unknown_baseline_figure_rejected(baseline_file, tmp_path):
    edited = _edited(baseline_file, tmp_path, _set_figure(STUDENT, "not_a_metric", 1.0))
    error = _check_error(edited, tmp_path)
    message = str(error)
    index = _entry_index(baseline_file, STUDENT)
    assert error.exit_code == 2
    assert f"'not_a_metric' at 'entries.{index}.figures.not_a_metric'" in message
    assert "results.csv has no column of that name" in message
    assert "--write-baseline" in message


def test_misspelt_baseline_figure_names_closest(baseline_file, tmp_path):
    edited = _edited(baseline_file, tmp_path, _set_figure(STUDENT, "lfw_acuracy_mean", 0.99))
    message = str(_check_error(edited, tmp_path))
    assert "the closest is 'lfw_accuracy_mean'" in message


def test_unknown_sample_metric_rejected(baseline_file, tmp_path):
    def add_samples(content: dict) -> None:
        for entry in _entries(content, STUDENT):
            entry["samples"]["warmup_ms"] = [1.0]

    message = str(_check_error(_edited(baseline_file, tmp_path, add_samples), tmp_path))
    assert "samples of 'warmup_ms'" in message
    assert "edge_latency_ms" in message  # the list of noisy metrics


def test_ungated_negative_sample_rejected(baseline_file, tmp_path):
    # The default policy gates neither transfer nor end-to-end latency, but a sample of -1 ms is still impossible.
    def negative_sample(content: dict) -> None:
        for entry in _entries(content, STUDENT):
            entry["samples"]["end_to_end_latency_ms"][2] = -1.0

    message = str(_check_error(_edited(baseline_file, tmp_path, negative_sample), tmp_path))
    index = _entry_index(baseline_file, STUDENT)
    assert f"end_to_end_latency_ms sample -1 at 'entries.{index}.samples.end_to_end_latency_ms.2'" in message


def test_unknown_energy_method_rejected(baseline_file, tmp_path):
    def add_method(content: dict) -> None:
        for entry in _entries(content, STUDENT):
            entry["methods"]["network_energy_j_per_inference"] = "modeled-link"

    message = str(_check_error(_edited(baseline_file, tmp_path, add_method), tmp_path))
    assert "energy method for 'network_energy_j_per_inference'" in message


# ---------------------------------------------------------------------------------------------
# A key or a row given twice


def test_repeated_baseline_entry_rejected(baseline_file, tmp_path):
    def repeat_entry(content: dict) -> None:
        content["entries"].append(_entries(content, STUDENT)[0])

    error = _check_error(_edited(baseline_file, tmp_path, repeat_entry), tmp_path)
    message = str(error)
    index = _entry_index(baseline_file, STUDENT)
    count = len(json.loads(baseline_file.read_text(encoding="utf-8"))["entries"])
    assert error.exit_code == 2
    assert f"entries.{index} and entries.{count} both have the key {STUDENT[0]}/{STUDENT[1]}" in message
    assert "--write-baseline" in message


def test_repeated_json_key_rejected(baseline_file, tmp_path):
    text = baseline_file.read_text(encoding="utf-8")
    edited = tmp_path / "repeated-key.json"
    edited.write_text(text.replace('"eer":', '"eer": 0.5, "eer":', 1), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_baseline(edited)
    message = str(caught.value)
    assert "gives the key 'entries.0.figures.eer' twice" in message
    assert "--write-baseline" in message


def test_repeated_top_level_key_rejected(baseline_file, tmp_path):
    text = baseline_file.read_text(encoding="utf-8")
    edited = tmp_path / "repeated-key.json"
    edited.write_text(text.replace('"scenario_name":', '"scenario_name": "other", "scenario_name":', 1),
                      encoding="utf-8")
    with pytest.raises(DataError, match="gives the key 'scenario_name' twice"):
        load_baseline(edited)


# ---------------------------------------------------------------------------------------------
# The baseline's host load


def test_recorded_host_load_is_read(loaded_baseline_file):
    content = json.loads(loaded_baseline_file.read_text(encoding="utf-8"))
    assert content["cpu_logical_cores"] == 8
    assert content["max_load_average_1min_while_timing"] == 1.0


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("cpu_logical_cores", 0, "greater than or equal to 1 at 'cpu_logical_cores' (got 0)"),
        ("cpu_logical_cores", True, "valid integer at 'cpu_logical_cores' (got True)"),
        ("max_load_average_1min_while_timing", -1, "greater than or equal to 0 at "
                                                    "'max_load_average_1min_while_timing' (got -1)"),
        ("max_load_average_1min_while_timing", math.inf, "finite number at 'max_load_average_1min_while_timing'"),
    ],
    ids=["no-cpus", "cpus-bool", "negative-load", "infinite-load"],
)
def test_invalid_host_load_rejected(loaded_baseline_file, tmp_path, field, value, expected):
    edited = _edited(loaded_baseline_file, tmp_path, lambda content: content.update({field: value}))
    error = _check_error(edited, tmp_path)
    message = str(error)
    assert error.exit_code == 2
    assert expected in message
    assert "--write-baseline" in message


def test_half_recorded_host_load_rejected(loaded_baseline_file, tmp_path):
    edited = _edited(loaded_baseline_file, tmp_path, lambda content: content.update(cpu_logical_cores=None))
    message = str(_check_error(edited, tmp_path))
    assert "max_load_average_1min_while_timing = 1 is recorded without cpu_logical_cores" in message


# ---------------------------------------------------------------------------------------------
# write_baseline writes only baselines that load_baseline accepts


def test_write_baseline_rejects_ungated_nan_sample(tmp_path):
    run = _run(0)
    end_to_end = (run.latency["pipeline"] == STUDENT[0]) & (run.latency["stage"] == "end_to_end")
    run.latency.loc[end_to_end, "latency_ms"] = math.nan
    target = tmp_path / "baseline.json"
    with pytest.raises(DataError, match="end_to_end_latency_ms sample nan"):
        write_baseline(run.write(tmp_path / "run"), target)
    assert not target.exists()


# ---------------------------------------------------------------------------------------------
# Policy files: the scenario loader and number rules


def test_policy_exponent_is_number(tmp_path):
    policy = load_policy(_policy(tmp_path, "p_value_threshold: 1e-2\n"))
    assert policy.p_value_threshold == pytest.approx(0.01, rel=1e-12)


def test_policy_whole_float_is_integer(tmp_path):
    policy = load_policy(_policy(tmp_path, "max_samples: 2.0\n"))
    assert policy.max_samples == 2
    assert type(policy.max_samples) is int


@pytest.mark.parametrize(
    ("value", "shown"),
    [("true", "(got True)"), ("'2'", "(got '2')"), ("2.5", "(got 2.5)")],
    ids=["bool", "text", "fraction"],
)
def test_policy_bad_integer_shows_value_and_fix(tmp_path, value, shown):
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, f"max_samples: {value}\n"))
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "valid integer at 'max_samples'" in message
    assert shown in message
    assert "write a whole number without quotes, such as 2" in message


def test_policy_quoted_number_shows_value_and_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, "p_value_threshold: '0.01'\n"))
    message = str(caught.value)
    assert "valid number at 'p_value_threshold' (got '0.01')" in message
    assert "write a number without quotes, such as 0.5" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p_value_threshold: 2\n", "less than 1 at 'p_value_threshold' (got 2)"),
        # The bound and the value are both 1: the value is still shown.
        ("noisy:\n  - {metric: edge_latency_ms, reference_metric: cloud_latency_ms, max_ratio_growth: 1}\n",
         "greater than 1 at 'noisy.0.max_ratio_growth' (got 1)"),
    ],
    ids=["p-value", "growth-limit"],
)
def test_policy_out_of_range_shows_value(tmp_path, text, expected):
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, text))
    assert expected in str(caught.value)


def test_policy_yaml_1_1_boolean_word_is_text(tmp_path):
    # YAML 1.1 reads `off` as false, but YAML 1.2 reads it as the text 'off', which is not a choice.
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, "on_busy_host: off\n"))
    message = str(caught.value)
    assert "'inconclusive' or 'gate' at 'on_busy_host'" in message
    assert "(got 'off')" in message


def test_policy_repeated_key_rejected(tmp_path):
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, "p_value_threshold: 0.01\np_value_threshold: 0.2\n"))
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "found the key 'p_value_threshold' twice" in message
    assert "line 2" in message


@pytest.mark.parametrize(("text", "kind"), [("- p_value_threshold: 0.01\n", "a YAML list"),
                                            ("strict\n", "a YAML scalar ('strict')")], ids=["list", "scalar"])
def test_policy_not_mapping_rejected(tmp_path, text, kind):
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, text))
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert f"contains {kind}" in message
    assert "instance of CheckPolicy" not in message
    assert "p_value_threshold" in message  # the list of policy keys


def test_empty_policy_gives_defaults(tmp_path):
    policy = load_policy(_policy(tmp_path, "# every setting at its default\n"))
    assert policy == load_policy(None)


def test_unknown_policy_key_shows_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_policy(_policy(tmp_path, "threshold_factor: 2\n"))
    assert "remove that key or correct its spelling" in str(caught.value)
