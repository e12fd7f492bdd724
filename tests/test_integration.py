"""End to end: a tiny scenario on real LFW images writes every output file, twice."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vqbench.cli import app
from vqbench.results import RESULT_COLUMNS

pytestmark = pytest.mark.slow

CONTRACT_COLUMNS = """pipeline variant n_pairs lfw_accuracy_mean lfw_accuracy_std tar_at_far_1e_3 roc_auc eer
payload_bytes_mean payload_bytes_p95 edge_latency_ms_p50 edge_latency_ms_p95 cloud_latency_ms_p50
cloud_latency_ms_p95 end_to_end_latency_ms_p50 end_to_end_latency_ms_p95 end_to_end_latency_ms_p99
edge_peak_rss_bytes cloud_peak_rss_bytes edge_model_bytes cloud_model_bytes edge_energy_j_per_inference
edge_energy_method cloud_energy_j_per_inference cloud_energy_method co2e_g_per_inference
grid_intensity_edge_gco2e_per_kwh grid_intensity_cloud_gco2e_per_kwh detection_fallbacks""".split()


def _scenario(tmp_path: Path, lfw: Path, cache: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""
name: tiny
dataset: {{kind: lfw, root: {lfw}, folds: [1, 2], max_pairs: 24}}
pipelines:
  - kind: cloud-raw
  - kind: cloud-codec
    codec: webp
    qualities: [30]
measurement: {{latency_samples: 5, warmup: 1, repeats: 2, min_window_s: 0.05, idle_s: 0.05}}
meters: {{host: [rapl]}}
carbon: {{edge_location: FRA, cloud_location: DEU}}
cache_dir: {cache}
"""
    )
    return path


@pytest.fixture(scope="module")
def tiny_runs(full_lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp_path = tmp_path_factory.mktemp("tiny")
    scenario = _scenario(tmp_path, full_lfw, tmp_path / "cache")
    runner = CliRunner()
    outcomes = {}
    for name in ("cold", "warm"):
        result = runner.invoke(app, ["run", str(scenario), "--out", str(tmp_path / name)])
        cache_files = sorted((tmp_path / "cache").rglob("*.npy"))
        outcomes[name] = (result, cache_files, tmp_path / name)
    return outcomes


def test_run_succeeds(tiny_runs):
    result, _, _ = tiny_runs["cold"]
    assert result.exit_code == 0, result.output


def test_every_output_file_written(tiny_runs):
    _, _, out = tiny_runs["cold"]
    for name in ("results.csv", "results.json", "scores.parquet", "latency.parquet", "environment.json",
                 "report.html", "report.pdf"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp")), "temporary files left behind"


def test_results_contract_columns(tiny_runs):
    _, _, out = tiny_runs["cold"]
    frame = pd.read_csv(out / "results.csv")
    for column in CONTRACT_COLUMNS:
        assert column in frame.columns, column
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert set(frame["variant"]) == {"original", "webp-q30"}
    assert (frame["n_pairs"] == 24).all()


def test_results_values_plausible(tiny_runs):
    _, _, out = tiny_runs["cold"]
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1
    rows = {row["variant"]: row for row in results["rows"]}
    raw, webp = rows["original"], rows["webp-q30"]
    assert raw["lfw_accuracy_mean"] >= 0.8
    assert raw["payload_bytes_mean"] > webp["payload_bytes_mean"] > 100
    assert raw["edge_model_bytes"] == 0
    assert raw["cloud_model_bytes"] > 20_000_000
    assert raw["cloud_peak_rss_bytes"] > raw["edge_peak_rss_bytes"]
    # Where RAPL is unreadable and no meter works, energy is missing, not 0 J, with a warning.
    if raw["edge_energy_j_per_inference"] is None:
        assert raw["edge_energy_method"] is None
        assert any("energy" in warning for warning in results["warnings"])
    assert raw["grid_intensity_edge_gco2e_per_kwh"] < raw["grid_intensity_cloud_gco2e_per_kwh"]


def test_results_record_the_evaluation_set_without_paths(tiny_runs):
    _, _, out = tiny_runs["cold"]
    assumptions = json.loads((out / "results.json").read_text())["assumptions"]
    assert assumptions["dataset"]["kind"] == "lfw"
    assert assumptions["dataset"]["folds"] == [1, 2]
    assert assumptions["dataset"]["max_pairs"] == 24
    assert "root" not in assumptions["dataset"]
    assert assumptions["alignment"]["face_choice"] == "center"
    assert assumptions["deployment"] == {"downlink_bytes": 0, "transfers_per_day": None, "setup_round_trips": 0}


def test_scores_and_latency_tables(tiny_runs):
    _, _, out = tiny_runs["cold"]
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 2 * 24
    assert set(scores["fold"]) == {1, 2}
    latency = pd.read_parquet(out / "latency.parquet")
    assert set(latency["stage"]) >= {"edge", "cloud", "end_to_end"}
    assert (latency["latency_ms"] > 0).all()


def test_warm_run_reuses_cache_and_agrees(tiny_runs):
    _, cold_cache, cold_out = tiny_runs["cold"]
    warm_result, warm_cache, warm_out = tiny_runs["warm"]
    assert warm_result.exit_code == 0, warm_result.output
    # Nothing was recomputed: the warm run added no cache entry.
    assert cold_cache
    assert warm_cache == cold_cache
    cold = pd.read_parquet(cold_out / "scores.parquet")
    warm = pd.read_parquet(warm_out / "scores.parquet")
    assert cold["score"].to_numpy() == pytest.approx(warm["score"].to_numpy(), abs=1e-6)


def test_environment_lists_meters(tiny_runs):
    _, _, out = tiny_runs["cold"]
    environment = json.loads((out / "environment.json").read_text())
    assert "rapl" in environment["meters"]
    assert environment["packages"]["vqbench"]
