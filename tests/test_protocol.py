"""Measurement protocol driven by a replay meter on a fake clock: exact, fast arithmetic."""

from __future__ import annotations

import math
import statistics

import pytest

from vqbench.errors import MeterError, ScenarioError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.protocol import (
    WindowSettings,
    mean_and_ci95,
    measure_stage_energy,
    t_quantile_975,
)
from vqbench.meters.replay import ReplayMeter


class FakeMachine:
    """A clock and an energy counter that advance together: idle while asleep, busy in work."""

    def __init__(self, idle_power_w: float, busy_power_w: float, inference_s: float):
        self.now_s = 0.0
        self.energy_j = 0.0
        self.idle_power_w = idle_power_w
        self.busy_power_w = busy_power_w
        self.inference_s = inference_s
        self.items_seen: list[int] = []

    def clock(self) -> float:
        return self.now_s

    def counter_j(self) -> float:
        return self.energy_j

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        self.energy_j += self.idle_power_w * seconds

    def work(self, item: int) -> None:
        self.items_seen.append(item)
        self.now_s += self.inference_s
        self.energy_j += self.busy_power_w * self.inference_s


def _measure(machine: FakeMachine, settings: WindowSettings, n_items: int = 4):
    meter = ReplayMeter(machine.counter_j, machine.clock)
    return measure_stage_energy(
        machine.work, n_items, meter, settings, clock=machine.clock, sleep=machine.sleep
    )


def test_known_power_gives_known_energy():
    machine = FakeMachine(idle_power_w=2.0, busy_power_w=10.0, inference_s=0.01)
    settings = WindowSettings(warmup=3, repeats=3, min_window_s=0.5, idle_s=1.0)
    result = _measure(machine, settings)
    assert result.energy_j_per_inference == pytest.approx(0.1, rel=1e-9)
    assert result.method == "replay"
    assert result.idle_power_w == pytest.approx(2.0, rel=1e-9)


def test_idle_power_is_subtracted():
    machine = FakeMachine(idle_power_w=2.0, busy_power_w=10.0, inference_s=0.01)
    result = _measure(machine, WindowSettings(warmup=0, repeats=2, min_window_s=0.2, idle_s=0.5))
    # (10 W - 2 W) x 0.01 s per inference
    assert result.dynamic_energy_j_per_inference == pytest.approx(0.08, rel=1e-9)


def test_windows_reach_min_duration_and_cycle_items():
    machine = FakeMachine(idle_power_w=1.0, busy_power_w=5.0, inference_s=0.03)
    settings = WindowSettings(warmup=2, repeats=3, min_window_s=0.1, idle_s=0.1)
    result = _measure(machine, settings, n_items=3)
    # ceil(0.1 / 0.03) = 4 inferences per window, 3 windows
    assert result.n_inferences == 12
    assert result.window_s == pytest.approx(0.12, rel=1e-9)
    assert result.window_s >= settings.min_window_s
    assert machine.items_seen == [i % 3 for i in range(2 + 12)]


def test_no_idle_window_gives_nan_dynamic():
    machine = FakeMachine(idle_power_w=1.0, busy_power_w=5.0, inference_s=0.01)
    result = _measure(machine, WindowSettings(warmup=0, repeats=2, min_window_s=0.05, idle_s=0.0))
    assert math.isnan(result.idle_power_w)
    assert math.isnan(result.dynamic_energy_j_per_inference)
    assert result.energy_j_per_inference == pytest.approx(0.05, rel=1e-9)


def test_ci95_matches_hand_computation():
    values = (1.0, 2.0, 3.0, 6.0)
    mean, half_width = mean_and_ci95(values)
    # mean 3, sample sd sqrt(14/3), t(0.975, 3) = 3.182
    assert mean == pytest.approx(3.0)
    assert half_width == pytest.approx(3.182 * math.sqrt(14 / 3) / 2, rel=1e-9)


def test_ci95_single_repeat_is_nan():
    mean, half_width = mean_and_ci95((4.0,))
    assert mean == 4.0
    assert math.isnan(half_width)


@pytest.mark.parametrize(
    ("degrees_of_freedom", "expected"),
    [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)],
)
def test_t_quantile_table_and_expansion(degrees_of_freedom, expected):
    assert t_quantile_975(degrees_of_freedom) == pytest.approx(expected, abs=1.5e-3)


class SteppedMeter(EnergyMeter):
    """Returns a fixed energy per window from a list, to check per-repeat arithmetic."""

    name = "stepped"
    method = "replay"

    def __init__(self, energies_j: list[float], duration_s: float):
        self._energies_j = list(energies_j)
        self._duration_s = duration_s

    def probe(self) -> Availability:
        return Availability(True, "test meter")

    def begin(self) -> None:
        return None

    def end(self, token: None) -> EnergyReading:
        return EnergyReading(self._energies_j.pop(0), self._duration_s, self.method)


def test_repeats_and_interval_from_windows():
    # Windows: overhead, idle, then three measured windows of 5 inferences each.
    ticks = iter(range(1000))
    meter = SteppedMeter([0.0, 1.0, 10.0, 12.0, 14.0], duration_s=1.0)
    result = measure_stage_energy(
        lambda item: None, 2, meter,
        WindowSettings(warmup=0, repeats=3, min_window_s=4.5, idle_s=1.0),
        clock=lambda: float(next(ticks)), sleep=lambda seconds: None,
    )
    assert result.repeats_j_per_inference == pytest.approx((2.0, 2.4, 2.8))
    assert result.energy_j_per_inference == pytest.approx(2.4)
    expected_half_width = 4.303 * statistics.stdev([2.0, 2.4, 2.8]) / math.sqrt(3)
    assert result.ci95_j == pytest.approx(expected_half_width, rel=1e-9)
    # idle 1 W over 1 s windows: (E - 1) / 5
    assert result.dynamic_energy_j_per_inference == pytest.approx((9 + 11 + 13) / 15)


class BrokenMeter(SteppedMeter):
    def end(self, token: None) -> EnergyReading:
        raise MeterError("counter unreadable")


def test_meter_error_propagates():
    with pytest.raises(MeterError, match="unreadable"):
        measure_stage_energy(lambda item: None, 1, BrokenMeter([], 1.0), WindowSettings())


def test_invalid_settings_rejected():
    machine = FakeMachine(1.0, 2.0, 0.01)
    with pytest.raises(ScenarioError, match="repeats"):
        _measure(machine, WindowSettings(repeats=0))
    with pytest.raises(ScenarioError, match="n_items"):
        _measure(machine, WindowSettings(), n_items=0)


def test_power_trace_replay_integrates_trapezoid():
    now = [0.0]
    meter = ReplayMeter.from_power_trace([(0.0, 0.0), (2.0, 4.0), (4.0, 4.0)], lambda: now[0])
    token = meter.begin()
    now[0] = 3.0
    reading = meter.end(token)
    # 0..2 s: ramp 0 -> 4 W = 4 J, 2..3 s: 4 W = 4 J
    assert reading.energy_j == pytest.approx(8.0)
    assert reading.duration_s == pytest.approx(3.0)
