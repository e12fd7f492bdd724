"""RAPL meter against fake powercap trees: readings, wrap-around, permissions, layouts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fake_powercap import make_powercap_tree, start_advancer, write_counter
from vqbench.errors import MeterError
from vqbench.meters.protocol import WindowSettings, measure_stage_energy
from vqbench.meters.rapl import POWERCAP_ROOT_ENV, RaplMeter, counter_delta_uj


def test_rapl_reads_package_and_dram(tmp_path):
    paths = make_powercap_tree(tmp_path, layout="intel", packages=2)
    meter = RaplMeter(tmp_path)
    token = meter.begin()
    write_counter(paths["package-0"], 1_000_000 + 2_500_000)
    write_counter(paths["package-1"], 1_000_000 + 1_000_000)
    write_counter(paths["package-0/dram"], 1_000_000 + 500_000)
    write_counter(paths["package-0/core"], 1_000_000 + 9_000_000)
    write_counter(paths["psys"], 1_000_000 + 9_000_000)
    reading = meter.end(token)
    assert reading.method == "measured-rapl"
    assert reading.energy_j == pytest.approx(4.0, rel=1e-9)
    assert reading.domains_j["package-0"] == pytest.approx(2.5)
    assert reading.domains_j["package-0/dram"] == pytest.approx(0.5)
    assert "package-0/core" not in reading.domains_j
    assert "psys" not in reading.domains_j


def test_rapl_without_dram(tmp_path):
    paths = make_powercap_tree(tmp_path, layout="intel")
    meter = RaplMeter(tmp_path, include_dram=False)
    token = meter.begin()
    write_counter(paths["package-0/dram"], 5_000_000)
    reading = meter.end(token)
    assert reading.energy_j == 0.0
    assert list(reading.domains_j) == ["package-0"]


def test_rapl_wraparound(tmp_path):
    max_range_uj = 10_000_000
    paths = make_powercap_tree(
        tmp_path, layout="amd", energy_uj=9_500_000, max_energy_range_uj=max_range_uj
    )
    # A clock that never advances: at the 1000 W ceiling a 10 J range could wrap twice in a
    # window longer than a few milliseconds, which the meter would reject as ambiguous.
    meter = RaplMeter(tmp_path, clock=lambda: 0.0)
    token = meter.begin()
    write_counter(paths["package-0"], 300_000)
    reading = meter.end(token)
    assert reading.energy_j == pytest.approx(0.8, rel=1e-9)
    assert reading.energy_j > 0


def test_counter_delta_without_wrap():
    assert counter_delta_uj(100, 250, 1000) == 150
    assert counter_delta_uj(900, 50, 1000) == 150


def test_rapl_amd_layout(tmp_path):
    make_powercap_tree(tmp_path, layout="amd", packages=1)
    meter = RaplMeter(tmp_path)
    availability = meter.probe()
    assert availability.available, availability.reason
    assert "package-0" in availability.reason
    token = meter.begin()
    assert list(meter.end(token).domains_j) == ["package-0"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_unreadable_counter(tmp_path):
    paths = make_powercap_tree(tmp_path)
    paths["package-0"].chmod(0o000)
    meter = RaplMeter(tmp_path)
    availability = meter.probe()
    assert not availability.available
    assert str(paths["package-0"]) in availability.reason
    assert "chmod a+r" in availability.reason
    with pytest.raises(MeterError, match="permission denied"):
        meter.begin()


def test_rapl_permission_error_names_fix(tmp_path, monkeypatch):
    # Root can read a file of mode 000, so deny the read at the Path level instead.
    paths = make_powercap_tree(tmp_path)
    denied = paths["package-0"]
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    availability = RaplMeter(tmp_path).probe()
    assert not availability.available
    assert f"sudo chmod a+r {denied}" in availability.reason
    with pytest.raises(MeterError, match="run as root|Run as root"):
        RaplMeter(tmp_path).begin()


def test_rapl_counter_vanishes_mid_window(tmp_path):
    paths = make_powercap_tree(tmp_path)
    meter = RaplMeter(tmp_path)
    token = meter.begin()
    paths["package-0"].unlink()
    with pytest.raises(MeterError, match="energy_uj"):
        meter.end(token)


def test_rapl_missing_package_domain(tmp_path):
    (tmp_path / "intel-rapl:0").mkdir()
    (tmp_path / "intel-rapl:0" / "name").write_text("psys\n")
    availability = RaplMeter(tmp_path).probe()
    assert not availability.available
    assert "no RAPL package domain" in availability.reason


def test_rapl_missing_root(tmp_path):
    availability = RaplMeter(tmp_path / "absent").probe()
    assert not availability.available
    assert "not found" in availability.reason
    with pytest.raises(MeterError, match="not found"):
        RaplMeter(tmp_path / "absent").begin()


def test_rapl_root_from_environment(tmp_path, monkeypatch):
    make_powercap_tree(tmp_path)
    monkeypatch.setenv(POWERCAP_ROOT_ENV, str(tmp_path))
    assert RaplMeter().root == tmp_path
    assert RaplMeter().probe().available


def test_rapl_tracks_advancing_counter(tmp_path, monkeypatch):
    watts = 25.0
    make_powercap_tree(tmp_path, layout="intel")
    monkeypatch.setenv(POWERCAP_ROOT_ENV, str(tmp_path))
    process = start_advancer(tmp_path, watts)
    try:
        meter = RaplMeter()
        token = meter.begin()
        time.sleep(1.0)
        reading = meter.end(token)
    finally:
        process.kill()
        process.wait()
    assert reading.energy_j == pytest.approx(watts * reading.duration_s, rel=0.01)


def test_protocol_idle_power_from_advancer(tmp_path, monkeypatch):
    watts = 40.0
    make_powercap_tree(tmp_path, layout="amd")
    monkeypatch.setenv(POWERCAP_ROOT_ENV, str(tmp_path))
    inference_durations_s = []

    def work(item):
        start_s = time.perf_counter()
        time.sleep(0.05)
        inference_durations_s.append(time.perf_counter() - start_s)

    process = start_advancer(tmp_path, watts)
    try:
        result = measure_stage_energy(
            work, 2, RaplMeter(), WindowSettings(warmup=0, repeats=2, min_window_s=0.3, idle_s=0.5)
        )
    finally:
        process.kill()
        process.wait()
    assert result.method == "measured-rapl"
    assert result.idle_power_w == pytest.approx(watts, rel=0.01)
    # Constant power, so an inference costs the power over its duration.
    mean_duration_s = sum(inference_durations_s) / len(inference_durations_s)
    assert result.energy_j_per_inference == pytest.approx(watts * mean_duration_s, rel=0.02)
    assert abs(result.dynamic_energy_j_per_inference) < 0.02 * result.energy_j_per_inference
