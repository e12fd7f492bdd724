"""Runner-level checks of measured figures: fake RAPL counters, HTTP transport, leakage, links."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from vqbench.data.pairs import Pair
from vqbench.errors import ScenarioError
from vqbench.runner import check_identity_leakage, run_scenario
from vqbench.scenario import Scenario

sys.path.insert(0, str(Path(__file__).parent))
from fake_powercap import make_powercap_tree, start_advancer  # noqa: E402
from test_service import running_server  # noqa: E402

pytestmark = pytest.mark.slow

ADVANCER_POWER_W = 25.0


def _scenario(sample_lfw: Path, **sections: object) -> Scenario:
    raw = {
        "name": "measured",
        "dataset": {"kind": "lfw", "root": str(sample_lfw), "folds": [9, 10], "max_pairs": 12},
        "pipelines": [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30]}],
        "measurement": {"latency_samples": 5, "warmup": 1, "repeats": 3, "min_window_s": 0.3, "idle_s": 0.3,
                        "memory": False},
        "outputs": {"html": False, "pdf": False},
    }
    raw.update(sections)
    return Scenario.model_validate(raw)


def test_rapl_run_matches_advanced_counters(sample_lfw, tmp_path, monkeypatch):
    root = tmp_path / "powercap"
    make_powercap_tree(root)
    advancer = start_advancer(root, ADVANCER_POWER_W)
    monkeypatch.setenv("VQBENCH_POWERCAP_ROOT", str(root))
    try:
        # Windows of 1.5 s keep the advancer's update lag (a few ms on a busy machine) under 1 %.
        measurement = {"latency_samples": 5, "warmup": 1, "repeats": 2, "min_window_s": 1.5, "idle_s": 1.5,
                       "memory": False}
        scenario = _scenario(sample_lfw, meters={"host": ["rapl"]}, measurement=measurement)
        outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    finally:
        advancer.terminate()
        advancer.wait(5)

    row = outcome.results.rows[0]
    assert row.edge_energy_method == "measured-rapl"
    assert row.cloud_energy_method == "measured-rapl"
    energy = pd.read_parquet(tmp_path / "out" / "energy.parquet")
    # The idle window reads the advancer's constant power.
    assert energy["idle_power_w"].to_numpy() == pytest.approx(ADVANCER_POWER_W, rel=0.01)
    # Each row is one window: its own duration and count, and its energy is power x duration / count.
    assert (energy["window_s"] >= 1.5).all()
    per_window_j = ADVANCER_POWER_W * energy["window_s"] / energy["n_inferences"]
    assert energy["energy_j_per_inference"].to_numpy() == pytest.approx(per_window_j.to_numpy(), rel=0.01)
    # Under constant power every joule of a window is "idle" power: the dynamic share vanishes.
    for half in ("edge", "cloud"):
        gross = getattr(row, f"{half}_energy_j_per_inference")
        dynamic = getattr(row, f"{half}_dynamic_energy_j_per_inference")
        assert gross > 0
        assert abs(dynamic) <= 0.01 * gross


def test_http_transport_counts_wire_bytes(sample_lfw, tmp_path):
    from vqbench.network.service import create_app
    from vqbench.pipelines.base import Components
    from vqbench.pipelines.registry import build_pipelines

    scenario = _scenario(sample_lfw, meters={"host": []})
    served = build_pipelines(scenario.pipelines, Components(scenario.alignment, scenario.teacher))
    with running_server(create_app(served, token=None)) as (url, _server):
        # A generous timeout: the service shares this process, which a busy host can starve of CPU.
        transport = {"mode": "http", "url": url, "timeout_s": 300}
        scenario = _scenario(sample_lfw, meters={"host": []}, transport=transport, deployment={"links": ["wifi"]})
        outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    [row] = outcome.results.rows
    assert row.transport == "http"
    assert row.wire_bytes_up_mean is not None and row.wire_bytes_down_mean is not None
    # Wire bytes are each payload plus the HTTP request line and headers: more, but not by kilobytes.
    assert 50 < row.wire_overhead_bytes_up_mean < 1000
    # The three byte columns average the same requests.
    overhead = row.wire_bytes_up_mean - row.wire_payload_bytes_up_mean
    assert overhead == pytest.approx(row.wire_overhead_bytes_up_mean)
    # The link's model gives the transfer time end to end; the timed requests keep their own column.
    assert row.link == "wifi"
    assert row.transfer_latency_basis == "modeled-link"
    assert row.transfer_latency_ms_p50 is not None and row.transfer_latency_ms_p50 > 0
    assert row.transfer_latency_ms_p50_measured is not None and row.transfer_latency_ms_p50_measured > 0
    latency = pd.read_parquet(tmp_path / "out" / "latency.parquet")
    assert "transfer" in set(latency["stage"])


def test_http_transport_rejects_other_service_alignment(sample_lfw, tmp_path):
    from vqbench.errors import ScenarioError
    from vqbench.network.service import create_app
    from vqbench.pipelines.base import Components
    from vqbench.pipelines.registry import build_pipelines

    served_scenario = _scenario(sample_lfw, pipelines=[{"kind": "cloud-raw"}], alignment={"upsample": 0})
    served = build_pipelines(served_scenario.pipelines, Components(served_scenario.alignment, served_scenario.teacher))
    with running_server(create_app(served, token=None)) as (url, _server):
        scenario = _scenario(
            sample_lfw, pipelines=[{"kind": "cloud-raw"}], alignment={"upsample": 1}, meters={"host": []},
            transport={"mode": "http", "url": url},
        )
        with pytest.raises(ScenarioError, match=r"aligns cloud-raw/original with upsample=0, but this run's results would record upsample=1"):
            run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")


def test_links_and_devices_expand_rows(sample_lfw, tmp_path):
    scenario = _scenario(
        sample_lfw,
        meters={"host": []},
        deployment={"links": ["wifi", "lorawan-sf12"], "edge_devices": ["host", {"name": "raspberry-pi-4", "speed_ratio": 4.0}]},
    )
    outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    rows = {(row.link, row.edge_device): row for row in outcome.results.rows}
    assert set(rows) == {(link, device) for link in ("wifi", "lorawan-sf12") for device in ("host", "raspberry-pi-4")}

    wifi_pi = rows[("wifi", "raspberry-pi-4")]
    wifi_host = rows[("wifi", "host")]
    assert wifi_pi.edge_energy_method == "modeled-device-profile"
    assert wifi_pi.edge_latency_ms_p50 == pytest.approx(4.0 * wifi_host.edge_latency_ms_p50, rel=1e-6)
    assert wifi_pi.network_energy_method == "modeled-link"
    assert wifi_pi.link_feasible is True
    assert wifi_pi.network_energy_j_per_inference > 0
    assert wifi_pi.embodied_co2e_g_per_inference > 0
    assert wifi_host.embodied_co2e_g_per_inference is None

    # A 2 kB JPEG chip cannot go over LoRaWAN SF12 within its duty cycle: flagged, not computed.
    lora = rows[("lorawan-sf12", "raspberry-pi-4")]
    assert lora.link_feasible is False
    assert lora.link_infeasible_reason
    assert lora.network_energy_j_per_inference is None
    assert lora.total_energy_j_per_inference is None
    # Without a transfer time there is no end-to-end time, so sorting by latency cannot pick this row.
    assert lora.transfer_latency_ms_p50 is None
    assert lora.end_to_end_latency_ms_p50 is None
    assert lora.end_to_end_latency_ms_p95 is None
    assert lora.end_to_end_latency_ms_p99 is None
    assert wifi_pi.end_to_end_latency_ms_p50 > wifi_pi.edge_latency_ms_p50


def test_unknown_link_rejected_before_measuring(sample_lfw, tmp_path):
    scenario = _scenario(sample_lfw, deployment={"links": ["carrier-pigeon"]})
    with pytest.raises(ScenarioError, match="carrier-pigeon"):
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")


def test_device_without_macs_needs_speed_ratio(sample_lfw, tmp_path):
    scenario = _scenario(sample_lfw, meters={"host": []}, deployment={"edge_devices": ["raspberry-pi-4"]})
    with pytest.raises(ScenarioError, match=r"raspberry-pi-4 has no speed_ratio.*cloud-codec/jpeg-q30"):
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")


@dataclass
class _TrainedPipeline:
    kind: str = "edge-vq-student"
    variant: str = "test"
    training_people: frozenset[str] = frozenset({"Alice"})


@dataclass
class _Evaluation:
    pairs: list[Pair]

    @property
    def folds(self) -> list[int]:
        return sorted({pair.fold for pair in self.pairs})


def _pair(fold: int, a: str, b: str) -> Pair:
    return Pair(fold=fold, index=fold, path_a=Path(f"{a}.jpg"), path_b=Path(f"{b}.jpg"), same=a == b,
                identity_a=a, identity_b=b)


def test_leakage_refused_with_allowed_folds():
    evaluation = _Evaluation([_pair(1, "Alice", "Alice"), _pair(2, "Bob", "Carol")])
    with pytest.raises(ScenarioError, match=r"folds \[1\].*allowed: \[2\]"):
        check_identity_leakage([_TrainedPipeline()], evaluation)  # type: ignore[list-item]


@dataclass
class _Card:
    train_folds: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass
class _CardedPipeline(_TrainedPipeline):
    card: _Card = field(default_factory=_Card)


def test_leakage_names_card_folds_when_none_selected_allowed():
    evaluation = _Evaluation([_pair(1, "Alice", "Alice")])
    with pytest.raises(ScenarioError, match=r"none of those selected is allowed; its card allows folds \[6, 7, 8, 9, 10\]"):
        check_identity_leakage([_CardedPipeline()], evaluation)  # type: ignore[list-item]


def test_no_leakage_passes():
    evaluation = _Evaluation([_pair(2, "Bob", "Carol"), _pair(3, "Dan", "Dan")])
    check_identity_leakage([_TrainedPipeline()], evaluation)  # type: ignore[list-item]


def test_external_trace_and_hourly_intensity(sample_lfw, tmp_path):
    import time
    from datetime import datetime, timezone

    # A wall-meter trace at a constant 30 W, covering the next five minutes.
    now_s = time.time()
    trace = tmp_path / "power.csv"
    lines = ["timestamp_s,power_w"] + [f"{now_s + 0.1 * i:.3f},30.0" for i in range(-50, 3000)]
    trace.write_text("\n".join(lines) + "\n")
    hour = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")
    hourly = tmp_path / "hourly.csv"
    hourly.write_text(f"timestamp_utc,gco2e_per_kwh\n{hour},123.0\n")

    scenario = _scenario(
        sample_lfw,
        meters={"host": ["external"], "options": {"external": {"trace_path": str(trace)}}},
        carbon={"edge_hourly_csv": str(hourly), "cloud_location": "FRA"},
    )
    outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    row = outcome.results.rows[0]
    assert row.edge_energy_method == "measured-external"
    assert row.grid_intensity_edge_gco2e_per_kwh == 123.0
    energy = pd.read_parquet(tmp_path / "out" / "energy.parquet")
    assert energy["idle_power_w"].to_numpy() == pytest.approx(30.0, rel=1e-6)
    expected_g = (row.edge_energy_j_per_inference * 123.0 + row.cloud_energy_j_per_inference
                  * row.grid_intensity_cloud_gco2e_per_kwh) / 3.6e6
    assert row.co2e_g_per_inference == pytest.approx(expected_g, rel=1e-9)


def test_failed_memory_probe_keeps_the_variant(sample_lfw, tmp_path, monkeypatch):
    from vqbench import runner

    def failing_probe(*_args: object) -> tuple[int | None, int | None, list[str]]:
        return None, 123_000_000, ["memory probe of the cloud-codec/jpeg-q30 edge half failed: MemoryError"]

    monkeypatch.setattr(runner, "measure_peak_rss", failing_probe)
    measurement = {"latency_samples": 5, "warmup": 1, "repeats": 3, "min_window_s": 0.1, "idle_s": 0.1, "memory": True}
    scenario = _scenario(sample_lfw, meters={"host": []}, measurement=measurement)
    outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    row = outcome.results.rows[0]
    assert outcome.failures == []
    assert row.lfw_accuracy_mean > 0.5
    assert row.edge_peak_rss_bytes is None
    assert row.cloud_peak_rss_bytes == 123_000_000
    assert any("peak RSS missing" in warning and "MemoryError" in warning for warning in outcome.results.warnings)


def test_busy_host_warned_once(sample_lfw, tmp_path, monkeypatch):
    import json
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    pipelines = [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30, 50]}]
    scenario = _scenario(sample_lfw, meters={"host": []}, pipelines=pipelines)
    outcome = run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    busy = [warning for warning in outcome.results.warnings if "host was busy" in warning]
    assert len(busy) == 1
    environment = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert environment["max_load_average_1min_while_timing"] == 64.0


def test_interrupted_run_keeps_finished_variants(sample_lfw, tmp_path, monkeypatch):
    import json

    from vqbench import runner

    measure = runner._run_variant
    calls = []

    def interrupt_second(pipeline, *args, **kwargs):
        calls.append(pipeline.variant)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(pipeline, *args, **kwargs)

    monkeypatch.setattr(runner, "_run_variant", interrupt_second)
    pipelines = [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30, 50, 70]}]
    scenario = _scenario(sample_lfw, meters={"host": []}, pipelines=pipelines)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["variant"] for row in results["rows"]] == ["jpeg-q30"]
    assert results["complete"] is False
    assert results["variants_missing"] == ["cloud-codec/jpeg-q50", "cloud-codec/jpeg-q70"]
    assert any("interrupted" in warning for warning in results["warnings"])
    assert (tmp_path / "out" / "environment.json").is_file()


def test_out_folder_with_a_run_needs_overwrite(sample_lfw, tmp_path):
    scenario = _scenario(sample_lfw, meters={"host": []})
    out = tmp_path / "out"
    first = run_scenario(scenario, tmp_path / "s.yaml", out)
    assert first.results.complete is True
    assert first.results.variants_missing == []
    (out / "samples").mkdir(exist_ok=True)
    (out / "samples" / "stale.png").write_bytes(b"old")

    with pytest.raises(ScenarioError, match="already contains a run"):
        run_scenario(scenario, tmp_path / "s.yaml", out)
    run_scenario(scenario, tmp_path / "s.yaml", out, overwrite=True)
    assert not (out / "samples" / "stale.png").exists()
    assert (out / "results.json").is_file()

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ScenarioError, match="is a file"):
        run_scenario(scenario, tmp_path / "s.yaml", a_file)


def test_pdf_switched_off_is_not_written(sample_lfw, tmp_path):
    scenario = _scenario(sample_lfw, meters={"host": []}, outputs={"html": True, "pdf": False})
    run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    assert (tmp_path / "out" / "report.html").is_file()
    assert not (tmp_path / "out" / "report.pdf").exists()


def test_transfer_basis_names_its_source():
    from vqbench.deployment import _transfer_basis

    assert _transfer_basis("wifi", [3.0]) == "modeled-link"
    assert _transfer_basis(None, [3.0]) == "measured-http"
    assert _transfer_basis(None, []) is None


def test_no_energy_phase_when_every_variant_failed_timing(sample_lfw, tmp_path, monkeypatch):
    from vqbench import runner
    from vqbench.errors import RunError

    def failing_latencies(pipelines, *_args, **_kwargs):
        return [RunError(f"{pipeline.kind}/{pipeline.variant} failed its timing") for pipeline in pipelines]

    class RecordingProgress(runner.SilentProgress):
        def __init__(self) -> None:
            self.phases: list[str] = []

        def phase(self, description: str, total: int | None) -> None:
            self.phases.append(description)

    monkeypatch.setattr(runner, "measure_latencies", failing_latencies)
    progress = RecordingProgress()
    with pytest.raises(RunError, match="every pipeline variant failed.*failed its timing"):
        run_scenario(_scenario(sample_lfw, meters={"host": []}), tmp_path / "s.yaml", tmp_path / "out", progress=progress)

    assert any(phase.startswith("Timing") for phase in progress.phases)
    assert not any(phase.startswith("Metering energy") for phase in progress.phases), progress.phases
