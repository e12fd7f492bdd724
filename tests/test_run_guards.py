"""Input checks that run before any data is read, and what a failing or interrupted run leaves behind."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from vqbench import runner
from vqbench.cli import app
from vqbench.errors import MeterError, ScenarioError, VqbenchError
from vqbench.meters.external import ExternalTraceMeter
from vqbench.meters.replay import ReplayMeter
from vqbench.runner import run_scenario
from vqbench.scenario import Scenario

sys.path.insert(0, str(Path(__file__).parent))
from test_service import running_server  # noqa: E402

OLD_RESULTS = '{"old": "run"}\n'


def _raw(sample_lfw: Path, **sections: object) -> dict:
    raw = {
        "name": "guards",
        "dataset": {"kind": "lfw", "root": str(sample_lfw), "folds": [9, 10], "max_pairs": 12},
        "pipelines": [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30]}],
        "measurement": {"latency_samples": 5, "warmup": 1, "repeats": 1, "min_window_s": 0.05, "idle_s": 0.0,
                        "memory": False},
        "meters": {"host": []},
        "outputs": {"html": False, "pdf": False},
    }
    raw.update(sections)
    return raw


def _scenario(sample_lfw: Path, **sections: object) -> Scenario:
    return Scenario.model_validate(_raw(sample_lfw, **sections))


def _old_run(folder: Path) -> None:
    """Write a stand-in for an earlier run: its results.json and a sample image."""
    (folder / "samples").mkdir(parents=True)
    (folder / "results.json").write_text(OLD_RESULTS)
    (folder / "samples" / "old.png").write_bytes(b"png")


@pytest.fixture
def no_data_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the runner reaches the data set."""

    def unexpected(*_args: object) -> None:
        raise AssertionError("the data set was read before the scenario's inputs were checked")

    monkeypatch.setattr(runner, "prepare_evaluation", unexpected)


def _hourly(tmp_path: Path, stamp: str) -> str:
    path = tmp_path / "hourly.csv"
    path.write_text(f"timestamp_utc,gco2e_per_kwh\n{stamp},100\n")
    return str(path)


BAD_SECTIONS = {
    "unknown link": ({"deployment": {"links": ["wifi6"]}}, "wifi6"),
    "unknown device": ({"deployment": {"edge_devices": ["toaster-3000"]}}, "toaster-3000"),
    "device needs speed_ratio": ({"deployment": {"edge_devices": ["raspberry-pi-4"]}}, r"edge_devices\[0\]\.speed_ratio"),
    "unknown grid location": ({"carbon": {"edge_location": "Atlantis"}}, "Atlantis"),
    "missing hourly file": ({"carbon": {"cloud_hourly_csv": "no-such-hourly.csv"}}, "no-such-hourly.csv"),
    "unknown meter": ({"meters": {"host": ["wattmeter"]}}, "wattmeter"),
    "unknown meter option": ({"meters": {"host": ["rapl"], "options": {"rapl": {"bogus": 1}}}}, "bogus"),
}


@pytest.mark.parametrize("case", list(BAD_SECTIONS), ids=list(BAD_SECTIONS))
def test_bad_input_keeps_old_run(case, sample_lfw, tmp_path, no_data_loading):
    sections, message = BAD_SECTIONS[case]
    out = tmp_path / "out"
    _old_run(out)
    scenario = _scenario(sample_lfw, **sections)

    with pytest.raises(VqbenchError, match=message) as raised:
        run_scenario(scenario, tmp_path / "s.yaml", out, overwrite=True)

    assert raised.value.exit_code == 2
    assert (out / "results.json").read_text() == OLD_RESULTS
    assert (out / "samples" / "old.png").is_file()


def test_off_hour_intensity_rejected_early(sample_lfw, tmp_path, no_data_loading):
    scenario = _scenario(sample_lfw, carbon={"edge_hourly_csv": _hourly(tmp_path, "2026-12-05T07:07:00Z")})
    with pytest.raises(VqbenchError, match="whole hour") as raised:
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    assert raised.value.exit_code == 2


def test_failed_check_leaves_no_new_folder(sample_lfw, tmp_path, no_data_loading):
    out = tmp_path / "runs" / "new"
    scenario = _scenario(sample_lfw, deployment={"links": ["wifi6"]})
    with pytest.raises(ScenarioError):
        run_scenario(scenario, tmp_path / "s.yaml", out)
    assert not (tmp_path / "runs").exists()


def test_missing_data_keeps_old_run(tmp_path):
    out = tmp_path / "out"
    _old_run(out)
    scenario = _scenario(tmp_path / "no-lfw-here")
    with pytest.raises(VqbenchError):
        run_scenario(scenario, tmp_path / "s.yaml", out, overwrite=True)
    assert (out / "results.json").read_text() == OLD_RESULTS


def test_http_variant_not_served_rejected(sample_lfw, tmp_path, no_data_loading):
    from vqbench.network.service import create_app
    from vqbench.pipelines.base import Components
    from vqbench.pipelines.registry import build_pipelines

    served_scenario = _scenario(sample_lfw, pipelines=[{"kind": "cloud-raw"}])
    served = build_pipelines(served_scenario.pipelines, Components(served_scenario.alignment, served_scenario.teacher))
    with running_server(create_app(served, token=None)) as (url, _server):
        scenario = _scenario(sample_lfw, transport={"mode": "http", "url": url})
        with pytest.raises(ScenarioError, match=r"does not serve cloud-codec/jpeg-q30 \(it serves: cloud-raw/original\)"):
            run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")


def test_unreachable_service_is_scenario_error(sample_lfw, tmp_path, no_data_loading):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}"
    scenario = _scenario(sample_lfw, transport={"mode": "http", "url": url, "timeout_s": 2})
    with pytest.raises(ScenarioError, match=f"transport.url {url} failed before anything was measured") as caught:
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    assert "cannot connect" in str(caught.value)
    assert caught.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_foreign_service_is_scenario_error(sample_lfw, tmp_path, no_data_loading):
    from test_service_client_faults import _impostor_app

    with running_server(_impostor_app({"pipelines": "oops"})) as (url, _server):
        scenario = _scenario(sample_lfw, transport={"mode": "http", "url": url})
        with pytest.raises(ScenarioError, match="check that transport.url points at `vqbench serve`") as caught:
            run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    assert caught.value.exit_code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", ["http://localhost:99999", "http://[::1"])
def test_unusable_transport_url_rejected(sample_lfw, url):
    with pytest.raises(ValidationError, match="transport.url .* is invalid"):
        _scenario(sample_lfw, transport={"mode": "http", "url": url})


def test_fewer_images_than_latency_samples_warned(sample_lfw, tmp_path):
    scenario = _scenario(
        sample_lfw,
        dataset={"kind": "lfw", "root": str(sample_lfw), "folds": [9, 10], "max_pairs": 4},
        measurement={"latency_samples": 40, "warmup": 1, "repeats": 1, "min_window_s": 0.05, "idle_s": 0.0,
                     "memory": False},
    )
    run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    [warning] = [text for text in results["warnings"] if "latency_samples" in text]
    timed = len(pd.read_parquet(tmp_path / "out" / "latency.parquet").query("stage == 'edge'"))
    assert warning.startswith("measurement.latency_samples is 40 but the evaluation set has only ")
    assert warning.endswith(f"so each half was timed on {timed}")
    assert timed < 40


def test_repeated_variant_names_both_entries(sample_lfw, tmp_path):
    pipelines = [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30, 50]},
                 {"kind": "cloud-codec", "codec": "jpeg", "qualities": [50]}]
    with pytest.raises(ScenarioError, match=r"cloud-codec/jpeg-q50 appears twice, from pipelines\[0\] and "
                                            r"pipelines\[1\]\. Remove one entry"):
        run_scenario(_scenario(sample_lfw, pipelines=pipelines), tmp_path / "s.yaml", tmp_path / "out")


def test_meter_paths_resolve_against_scenario(sample_lfw, tmp_path, monkeypatch):
    traces = tmp_path / "traces"
    traces.mkdir()
    now_s = time.time()
    (traces / "power.csv").write_text(f"timestamp_s,power_w\n{now_s - 1},10\n{now_s + 60},10\n")
    monkeypatch.setenv("VQ_TEST_TRACES", str(traces))
    scenario_dir = tmp_path / "scenarios"

    for trace_path in ("../traces/power.csv", "${VQ_TEST_TRACES}/power.csv"):
        scenario = _scenario(sample_lfw, meters={"host": ["external"], "options": {"external": {"trace_path": trace_path}}})
        [meter] = runner._create_meters(scenario, scenario_dir)
        assert meter.trace_path == traces / "power.csv"
        assert meter.probe().available


@pytest.mark.parametrize(("meter", "option"), [("external", "trace_path"), ("rapl", "root")])
def test_missing_meter_path_rejected(sample_lfw, tmp_path, meter, option):
    scenario = _scenario(sample_lfw, meters={"host": [meter], "options": {meter: {option: "absent/power"}}})
    with pytest.raises(ScenarioError) as caught:
        runner._create_meters(scenario, tmp_path)
    assert f"meters.options.{meter}.{option}" in str(caught.value)
    assert str(tmp_path / "absent" / "power") in str(caught.value)


def test_broken_trace_exits_2_before_data(sample_lfw, tmp_path, no_data_loading):
    trace = tmp_path / "power.csv"
    trace.write_text("timestamp_s,power_w\n1796000000,10\n1796000001,nan\n")
    scenario = _scenario(sample_lfw, meters={"host": ["external"], "options": {"external": {"trace_path": str(trace)}}})
    with pytest.raises(MeterError, match="line 3: power_w is 'nan'") as caught:
        run_scenario(scenario, tmp_path / "s.yaml", tmp_path / "out")
    assert caught.value.exit_code == 2


def test_empty_trace_path_rejected(sample_lfw, tmp_path):
    scenario = _scenario(sample_lfw, meters={"host": ["external"], "options": {"external": {"trace_path": ""}}})
    with pytest.raises(ScenarioError, match="meter option trace_path is empty; give the path of a file") as caught:
        runner._create_meters(scenario, tmp_path)
    assert caught.value.exit_code == 2


def test_ended_trace_falls_back_to_next_meter(tmp_path):
    now_s = time.time()
    trace = tmp_path / "power.csv"
    trace.write_text(f"timestamp_s,power_w\n{now_s - 600},10\n{now_s - 300},10\n")
    fallback = ReplayMeter.constant_power(5.0)
    meter, status, _warnings = runner._select_meter([ExternalTraceMeter(trace), fallback])
    assert meter is fallback
    assert status["external"]["available"] is False
    assert "cannot cover a window from now on" in str(status["external"]["reason"])


def test_interrupted_run_scores_hold_finished_variants(sample_lfw, tmp_path, monkeypatch):
    score = runner.score_variant
    calls: list[str] = []

    def interrupt_second(pipeline, *args, **kwargs):
        calls.append(pipeline.variant)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score(pipeline, *args, **kwargs)

    monkeypatch.setattr(runner, "score_variant", interrupt_second)
    pipelines = [{"kind": "cloud-codec", "codec": "jpeg", "qualities": [30, 50]}]
    with pytest.raises(KeyboardInterrupt):
        run_scenario(_scenario(sample_lfw, pipelines=pipelines), tmp_path / "s.yaml", tmp_path / "out")

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["variants_missing"] == ["cloud-codec/jpeg-q50"]
    for name in ("scores", "latency"):
        table = pd.read_parquet(tmp_path / "out" / f"{name}.parquet")
        assert set(table["variant"]) == {"jpeg-q30"}, name


@pytest.mark.parametrize("phase", ["measure_latencies", "measure_energies"])
def test_interrupt_while_measuring_keeps_old_run(sample_lfw, tmp_path, monkeypatch, phase):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, phase, interrupt)
    out = tmp_path / "out"
    _old_run(out)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(_scenario(sample_lfw), tmp_path / "s.yaml", out, overwrite=True)
    assert (out / "results.json").read_text() == OLD_RESULTS
    assert (out / "samples" / "old.png").exists()


def test_interrupt_while_measuring_leaves_no_folder(sample_lfw, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "measure_energies", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(_scenario(sample_lfw), tmp_path / "s.yaml", tmp_path / "runs" / "new")
    assert not (tmp_path / "runs").exists()


def test_run_of_folder_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "is a folder, not a file" in output
    assert "not found" not in output


def test_run_of_non_utf8_scenario_exits_2(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: x\xff\npipelines: [{kind: cloud-raw}]\n")
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "not UTF-8" in output
    assert "binary.yaml" in output
    assert "Traceback" not in result.output
