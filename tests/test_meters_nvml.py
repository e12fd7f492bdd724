"""NVML meter against a fake NVML library: counter, power sampling fallback, errors."""

from __future__ import annotations

import time

import pytest

from vqbench.errors import MeterError
from vqbench.meters.nvml import NvmlMeter, integrate_samples_j


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """The subset of the pynvml API the meter calls; GPUs draw constant power in real time.

    ``counter_step_s`` makes the energy counter update only every so often, like boards whose
    counter is coarse; ``has_counter=False`` makes it unsupported, like pre-Volta GPUs.
    """

    NVMLError = FakeNvmlError

    def __init__(self, powers_w=(100.0,), has_counter=True, counter_step_s=0.0):
        self.powers_w = list(powers_w)
        self.has_counter = has_counter
        self.counter_step_s = counter_step_s
        self.t0_s = time.perf_counter()
        self.initialised = False

    def nvmlInit(self):
        self.initialised = True

    def nvmlShutdown(self):
        self.initialised = False

    def nvmlDeviceGetCount(self):
        return len(self.powers_w)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.powers_w[handle] * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.has_counter:
            raise FakeNvmlError("Not Supported")
        elapsed_s = time.perf_counter() - self.t0_s
        if self.counter_step_s:
            elapsed_s = (elapsed_s // self.counter_step_s) * self.counter_step_s
        return int(5_000_000 + self.powers_w[handle] * elapsed_s * 1000)


def _measure(meter: NvmlMeter, seconds: float):
    token = meter.begin()
    time.sleep(seconds)
    return meter.end(token)


def test_nvml_counter_reading():
    meter = NvmlMeter(nvml=FakeNvml(powers_w=(100.0, 50.0)), min_counter_window_s=0.1)
    reading = _measure(meter, 0.3)
    assert reading.method == "measured-nvml"
    assert reading.energy_j == pytest.approx(150.0 * reading.duration_s, rel=0.03)
    assert reading.domains_j["gpu1"] == pytest.approx(50.0 * reading.duration_s, rel=0.03)


def test_nvml_without_counter_samples_power():
    meter = NvmlMeter(nvml=FakeNvml(has_counter=False), sample_interval_s=0.01)
    assert "power sampling only" in meter.probe().reason
    reading = _measure(meter, 0.2)
    assert reading.method == "measured-nvml-power-sampling"
    assert reading.energy_j == pytest.approx(100.0 * reading.duration_s, rel=1e-6)


def test_nvml_coarse_counter_falls_back():
    # The counter only moves every 10 s, so it cannot resolve a 0.2 s window.
    meter = NvmlMeter(nvml=FakeNvml(counter_step_s=10.0), min_counter_window_s=0.1)
    reading = _measure(meter, 0.2)
    assert reading.method == "measured-nvml-power-sampling"
    assert reading.energy_j == pytest.approx(100.0 * reading.duration_s, rel=1e-6)


def test_nvml_short_window_uses_sampling():
    meter = NvmlMeter(nvml=FakeNvml(), min_counter_window_s=5.0)
    reading = _measure(meter, 0.05)
    assert reading.method == "measured-nvml-power-sampling"


def test_nvml_selected_device():
    meter = NvmlMeter(device_indices=(1,), nvml=FakeNvml(powers_w=(100.0, 40.0)))
    reading = _measure(meter, 0.05)
    assert list(reading.domains_j) == ["gpu1"]
    assert reading.energy_j == pytest.approx(40.0 * reading.duration_s, rel=1e-6)


def test_nvml_invalid_device_index():
    meter = NvmlMeter(device_indices=(3,), nvml=FakeNvml())
    availability = meter.probe()
    assert not availability.available
    assert "GPU index 3" in availability.reason


def test_nvml_no_gpu():
    availability = NvmlMeter(nvml=FakeNvml(powers_w=())).probe()
    assert not availability.available
    assert "no GPU" in availability.reason


def test_nvml_init_failure_is_meter_error():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise FakeNvmlError("Driver Not Loaded")

    meter = NvmlMeter(nvml=NoDriver())
    assert "Driver Not Loaded" in meter.probe().reason
    with pytest.raises(MeterError, match="nvmlInit"):
        meter.begin()


def test_nvml_close_shuts_down():
    nvml = FakeNvml()
    meter = NvmlMeter(nvml=nvml)
    meter.probe()
    meter.close()
    assert not nvml.initialised


def test_integrate_samples_trapezoid():
    samples = [(0.0, [0.0, 10.0]), (1.0, [2.0, 10.0]), (3.0, [2.0, 10.0])]
    assert integrate_samples_j(samples) == pytest.approx([5.0, 30.0])
