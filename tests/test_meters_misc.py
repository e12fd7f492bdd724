"""External trace, codecarbon, pyJoules, device model meter and the meter registry."""

from __future__ import annotations

import time

import pytest

from vqbench.errors import MeterError, ScenarioError
from vqbench.meters.base import EnergyMeter
from vqbench.meters.codecarbon_meter import CodecarbonMeter
from vqbench.meters.external import ExternalTraceMeter, integrate_power_j, read_power_trace
from vqbench.meters.model import DeviceModelMeter
from vqbench.meters.pyjoules_meter import PyJoulesMeter
from vqbench.meters.registry import METERS, build_registry, create_meter, probe_all


def _write_trace(path, rows):
    path.write_text("timestamp_s, power_w\n" + "".join(f"{t}, {p}\n" for t, p in rows))
    return path


def test_trace_integration_trapezoid(tmp_path):
    trace = read_power_trace(_write_trace(tmp_path / "t.csv", [(0, 0), (2, 4), (4, 4)]))
    # ramp 0..2 s -> 4 J; 2..3.5 s at 4 W -> 6 J
    assert integrate_power_j(trace, 0.0, 3.5) == pytest.approx(10.0)
    # interpolated edges: 1..2 s ramp 2 W -> 4 W = 3 J
    assert integrate_power_j(trace, 1.0, 2.0) == pytest.approx(3.0)


def test_external_meter_with_clock_offset(tmp_path):
    offset_s = -1000.0
    now_s = time.time()
    rows = [(now_s + offset_s + k * 0.1, 12.0) for k in range(-20, 40)]
    meter = ExternalTraceMeter(_write_trace(tmp_path / "t.csv", rows), clock_offset_s=offset_s)
    assert meter.probe().available
    token = meter.begin()
    time.sleep(0.2)
    reading = meter.end(token)
    assert reading.method == "measured-external"
    assert reading.energy_j == pytest.approx(12.0 * reading.duration_s, rel=1e-6)


def test_external_window_outside_trace(tmp_path):
    meter = ExternalTraceMeter(_write_trace(tmp_path / "t.csv", [(0, 1), (10, 1)]))
    token = meter.begin()
    with pytest.raises(MeterError, match="clock_offset_s"):
        meter.end(token)


def test_external_malformed_trace(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time,watts\n0,1\n1,1\n")
    with pytest.raises(MeterError, match="timestamp_s,power_w"):
        ExternalTraceMeter(path)
    with pytest.raises(MeterError, match="cannot read power trace"):
        ExternalTraceMeter(tmp_path / "missing.csv")


def test_codecarbon_probe_explains_estimate():
    availability = CodecarbonMeter().probe()
    assert availability.available
    assert "estimate" in availability.reason


@pytest.mark.slow
def test_codecarbon_window_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meter = CodecarbonMeter(country_iso_code="FRA")
    try:
        token = meter.begin()
        time.sleep(0.3)
        reading = meter.end(token)
        output_dir = meter.output_dir
        assert list(output_dir.iterdir()) == []
    finally:
        meter.close()
    assert reading.method == "estimated-codecarbon"
    assert reading.energy_j > 0
    assert set(reading.domains_j) == {"cpu", "ram"}
    assert "CPU mode" in meter.mode_description
    assert list(tmp_path.iterdir()) == []


def test_pyjoules_missing_is_unavailable():
    availability = PyJoulesMeter().probe()
    assert not availability.available
    assert "pip install pyJoules" in availability.reason


class EmptyFactory:
    @staticmethod
    def create_devices():
        return []


class RaisingFactory:
    @staticmethod
    def create_devices():
        raise OSError("no RAPL")


@pytest.mark.parametrize("factory", [EmptyFactory, RaisingFactory])
def test_pyjoules_without_devices_is_unavailable(factory):
    availability = PyJoulesMeter(device_factory=factory).probe()
    assert not availability.available
    assert "no" in availability.reason


class FakeSample:
    def __init__(self, energy):
        self.energy = energy


class FakePyJoulesMeter:
    def __init__(self, devices):
        self.devices = devices

    def start(self):
        pass

    def stop(self):
        pass

    def __iter__(self):
        return iter([FakeSample({"package_0": 2_000_000, "nvidia_gpu_0": 500})])


class OneDeviceFactory:
    @staticmethod
    def create_devices():
        return ["rapl"]


def test_pyjoules_converts_units():
    meter = PyJoulesMeter(OneDeviceFactory, FakePyJoulesMeter)
    reading = meter.end(meter.begin())
    assert reading.domains_j == pytest.approx({"package_0": 2.0, "nvidia_gpu_0": 0.5})
    assert reading.method == "measured-pyjoules"


def test_model_meter_idle_window_at_idle_power():
    meter = DeviceModelMeter("raspberry-pi-4", speed_ratio=2.0)
    outer_start_s = time.perf_counter()
    token = meter.begin()
    time.sleep(0.2)
    reading = meter.end(token)
    outer_s = time.perf_counter() - outer_start_s
    assert reading.method == "modeled-device-profile"
    # Device time is host time times the speed ratio; bound it by the host times around the window
    # rather than by the sleep length, which a busy machine stretches.
    assert reading.duration_s >= 2.0 * 0.2
    assert reading.duration_s <= 2.0 * outer_s
    assert reading.energy_j / reading.duration_s == pytest.approx(2.7, rel=0.1)


def test_model_meter_rejects_host():
    assert not DeviceModelMeter("host").probe().available
    with pytest.raises(ScenarioError, match="measured"):
        DeviceModelMeter("host").begin()


def test_registry_names_match_classes():
    for name, meter_class in METERS.items():
        assert meter_class.name == name
        assert issubclass(meter_class, EnergyMeter)
    assert set(METERS) == {
        "rapl", "pyjoules", "nvml", "codecarbon", "external", "model", "replay",
    }


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        build_registry([METERS["rapl"], METERS["rapl"]])


def test_create_meter_unknown_name_lists_valid():
    with pytest.raises(ScenarioError, match="valid meters: codecarbon, external"):
        create_meter("joulemeter")


def test_create_meter_with_options(tmp_path):
    meter = create_meter("rapl", root=tmp_path)
    assert meter.root == tmp_path
    with pytest.raises(ScenarioError, match="unknown option 'bogus' for meter 'rapl'"):
        create_meter("rapl", bogus=1)


def test_probe_all_reports_every_meter():
    results = probe_all()
    assert set(results) == set(METERS)
    for name, availability in results.items():
        assert availability.reason, name
