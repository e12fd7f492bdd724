"""Meters facing faulty input: reset or frozen RAPL counters, odd powercap trees, bad traces
and meter options of the wrong type. Each case must end in a clear error, never a wrong figure.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from pathlib import Path

import pytest

from fake_powercap import DEFAULT_MAX_ENERGY_RANGE_UJ, make_powercap_tree, write_counter
from vqbench.errors import MeterError, ScenarioError
from vqbench.meters.external import ExternalTraceMeter, read_power_trace
from vqbench.meters.protocol import WindowSettings, measure_stage_energy
from vqbench.meters.rapl import STALLED_WINDOW_S, RaplDomain, RaplMeter, window_delta_uj
from vqbench.meters.registry import METERS, check_meter_options, create_meter
from vqbench.meters.replay import ReplayMeter


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def _window(meter: RaplMeter, clock: FakeClock, seconds: float, counters: dict) -> object:
    """Run one window of ``seconds`` in which each counter file is set to its new value."""
    token = meter.begin()
    clock.advance(seconds)
    for path, value_uj in counters.items():
        write_counter(path, value_uj)
    return meter.end(token)


# RAPL: counters that go backwards, jump or freeze


def test_rapl_reset_is_not_a_wrap(tmp_path):
    paths = make_powercap_tree(tmp_path, layout="amd", energy_uj=5_000_000_000)
    clock = FakeClock()
    meter = RaplMeter(tmp_path, clock=clock)
    with pytest.raises(MeterError, match="went backwards") as caught:
        _window(meter, clock, 0.3, {paths["package-0"]: 100_000})
    message = str(caught.value)
    assert "package-0" in message
    assert "5000000000 µJ then 100000 µJ over 0.300 s" in message
    assert "reset" in message


def test_rapl_wrap_near_range_top_accepted(tmp_path):
    start_uj = DEFAULT_MAX_ENERGY_RANGE_UJ - 1_000_000
    paths = make_powercap_tree(tmp_path, layout="amd", energy_uj=start_uj)
    clock = FakeClock()
    reading = _window(RaplMeter(tmp_path, clock=clock), clock, 0.3, {paths["package-0"]: 2_000_000})
    assert reading.energy_j == pytest.approx(3.0, rel=1e-9)
    assert reading.duration_s == pytest.approx(0.3, rel=1e-9)


def test_rapl_forward_jump_rejected(tmp_path):
    paths = make_powercap_tree(tmp_path, layout="amd")
    clock = FakeClock()
    # 100 kJ in one second is 100 kW, far above any package.
    with pytest.raises(MeterError, match="advanced 100000.0 J"):
        _window(RaplMeter(tmp_path, clock=clock), clock, 1.0, {paths["package-0"]: 100_001_000_000})


def test_rapl_several_wraps_ambiguous(tmp_path):
    # A 2 J range at 10 W wraps every 0.2 s, so a 0.3 s window cannot be resolved.
    paths = make_powercap_tree(
        tmp_path, layout="amd", energy_uj=1_500_000, max_energy_range_uj=2_000_000
    )
    clock = FakeClock()
    with pytest.raises(MeterError, match="wrapped more than once") as caught:
        _window(RaplMeter(tmp_path, clock=clock), clock, 0.3, {paths["package-0"]: 500_000})
    assert "min_window_s" in str(caught.value)
    assert "max_domain_power_w" in str(caught.value)


def test_rapl_lower_power_ceiling_resolves_wrap(tmp_path):
    paths = make_powercap_tree(
        tmp_path, layout="amd", energy_uj=1_500_000, max_energy_range_uj=2_000_000
    )
    clock = FakeClock()
    # At 5 W or less, 0.3 s gives at most 1.55 J (slack included), which is less than the 2 J range.
    meter = RaplMeter(tmp_path, max_domain_power_w=5.0, clock=clock)
    reading = _window(meter, clock, 0.3, {paths["package-0"]: 500_000})
    assert reading.energy_j == pytest.approx(1.0, rel=1e-9)


def test_window_delta_bounds():
    # A 100 J range; the default 1000 W ceiling allows 11 J in 1 ms (10 ms of slack included).
    counter_path = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
    domain = RaplDomain("package-0", counter_path, 100_000_000)
    assert window_delta_uj(domain, 99_000_000, 1_000_000, 0.001) == 2_000_000
    with pytest.raises(MeterError, match="went backwards"):
        window_delta_uj(domain, 50_000_000, 40_000_000, 0.001)
    with pytest.raises(MeterError, match="advanced 20.0 J"):
        window_delta_uj(domain, 10_000_000, 30_000_000, 0.001)
    with pytest.raises(MeterError, match="wrapped more than once"):
        window_delta_uj(domain, 1_000_000, 2_000_000, 0.2)
    assert window_delta_uj(domain, 1_000_000, 2_000_000, 0.2, max_power_w=50.0) == 1_000_000


def test_rapl_frozen_package_counter_raises(tmp_path):
    make_powercap_tree(tmp_path, layout="amd")
    clock = FakeClock()
    meter = RaplMeter(tmp_path, clock=clock)
    token = meter.begin()
    clock.advance(0.3)
    with pytest.raises(MeterError, match="stayed at 1000000 µJ for 0.300 s") as caught:
        meter.end(token)
    assert "frozen" in str(caught.value)


def test_rapl_short_unchanged_window_reads_zero(tmp_path):
    # The protocol's empty overhead window is shorter than one counter update.
    make_powercap_tree(tmp_path, layout="amd")
    clock = FakeClock()
    meter = RaplMeter(tmp_path, clock=clock)
    token = meter.begin()
    clock.advance(STALLED_WINDOW_S / 10)
    assert meter.end(token).energy_j == 0.0


def test_rapl_frozen_dram_left_out(tmp_path, caplog):
    paths = make_powercap_tree(tmp_path, layout="intel")
    clock = FakeClock()
    meter = RaplMeter(tmp_path, clock=clock)
    with caplog.at_level(logging.WARNING, logger="vqbench.meters.rapl"):
        first = _window(meter, clock, 0.5, {paths["package-0"]: 6_000_000})
        second = _window(meter, clock, 0.5, {paths["package-0"]: 11_000_000})
    assert first.domains_j == {"package-0": pytest.approx(5.0)}
    assert second.energy_j == pytest.approx(5.0)
    frozen_warnings = [
        record for record in caplog.records if "package-0/dram" in record.getMessage()
    ]
    assert len(frozen_warnings) == 1


def test_protocol_frozen_counter_fails_stage(tmp_path):
    make_powercap_tree(tmp_path, layout="amd")
    clock = FakeClock()
    settings = WindowSettings(warmup=0, repeats=2, min_window_s=0.2, idle_s=0.2)
    with pytest.raises(MeterError, match="frozen"):
        measure_stage_energy(
            lambda item: clock.advance(0.05), 2, RaplMeter(tmp_path, clock=clock), settings,
            clock=clock, sleep=clock.advance,
        )


# RAPL: odd powercap trees


@pytest.mark.parametrize("max_range", ["0", "-5"])
def test_rapl_nonpositive_range_unavailable(tmp_path, max_range):
    make_powercap_tree(tmp_path, layout="amd")
    (tmp_path / "intel-rapl:0" / "max_energy_range_uj").write_text(max_range + "\n")
    availability = RaplMeter(tmp_path).probe()
    assert not availability.available
    assert "must be positive" in availability.reason
    with pytest.raises(MeterError, match="must be positive"):
        RaplMeter(tmp_path).begin()


@pytest.mark.parametrize("value", ["-100", str(DEFAULT_MAX_ENERGY_RANGE_UJ + 1)])
def test_rapl_counter_outside_range_unavailable(tmp_path, value):
    paths = make_powercap_tree(tmp_path, layout="amd")
    paths["package-0"].write_text(value + "\n")
    availability = RaplMeter(tmp_path).probe()
    assert not availability.available
    assert "outside its range" in availability.reason


def test_rapl_dram_without_range_skipped(tmp_path, caplog):
    paths = make_powercap_tree(tmp_path, layout="intel")
    (tmp_path / "intel-rapl:0" / "intel-rapl:0:2" / "max_energy_range_uj").unlink()
    meter = RaplMeter(tmp_path)
    availability = meter.probe()
    assert availability.available, availability.reason
    assert "package-0/dram skipped" in availability.reason
    assert "max_energy_range_uj" in availability.reason
    with caplog.at_level(logging.WARNING, logger="vqbench.meters.rapl"):
        token = meter.begin()
        write_counter(paths["package-0"], 2_000_000)
        reading = meter.end(token)
    assert list(reading.domains_j) == ["package-0"]
    assert any("package-0/dram" in record.getMessage() for record in caplog.records)


def test_rapl_package_without_range_unavailable(tmp_path):
    make_powercap_tree(tmp_path, layout="amd")
    (tmp_path / "intel-rapl:0" / "max_energy_range_uj").unlink()
    availability = RaplMeter(tmp_path).probe()
    assert not availability.available
    assert "no max_energy_range_uj file" in availability.reason


def test_rapl_fifo_counter_does_not_block(tmp_path):
    paths = make_powercap_tree(tmp_path, layout="amd")
    paths["package-0"].unlink()
    os.mkfifo(paths["package-0"])
    results = []
    prober = threading.Thread(
        target=lambda: results.append(RaplMeter(tmp_path).probe()), daemon=True
    )
    prober.start()
    prober.join(10.0)
    if prober.is_alive():
        # Release the blocked reader so the thread can end, then fail.
        descriptor = os.open(paths["package-0"], os.O_WRONLY | os.O_NONBLOCK)
        os.close(descriptor)
        pytest.fail("probing a FIFO in place of energy_uj blocked")
    assert not results[0].available
    assert "not a regular file" in results[0].reason


def test_rapl_root_is_a_file(tmp_path):
    root = tmp_path / "powercap.txt"
    root.write_text("not a folder\n")
    availability = RaplMeter(root).probe()
    assert not availability.available
    assert f"powercap root {root} is a file, not a folder" in availability.reason
    assert "VQBENCH_POWERCAP_ROOT" in availability.reason


# External trace meter and the protocol: impossible power and energy values


@pytest.mark.parametrize("bad_value", ["nan", "inf", "-inf", "-10"])
def test_trace_rejects_bad_power(tmp_path, bad_value):
    path = tmp_path / "trace.csv"
    path.write_text(f"timestamp_s,power_w\n0,10\n1,{bad_value}\n2,10\n")
    with pytest.raises(MeterError, match=f"{path} line 3: power_w"):
        read_power_trace(path)


def test_trace_rejects_infinite_timestamp(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("timestamp_s,power_w\n0,10\ninf,10\n")
    with pytest.raises(MeterError, match="line 3: timestamp_s is 'inf'"):
        read_power_trace(path)


def test_trace_rejects_missing_value(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("timestamp_s,power_w\n0,10\n1\n")
    with pytest.raises(MeterError, match="line 3: no power_w value"):
        read_power_trace(path)


def test_external_zero_power_window_raises(tmp_path):
    now_s = time.time()
    path = tmp_path / "trace.csv"
    path.write_text("timestamp_s,power_w\n" + "".join(f"{now_s + k},0\n" for k in range(-5, 60)))
    meter = ExternalTraceMeter(path)
    token = meter.begin()
    time.sleep(0.01)
    with pytest.raises(MeterError, match="positive energy"):
        meter.end(token)


@pytest.mark.parametrize("counter_value", [-1.0, math.nan, math.inf])
def test_protocol_rejects_impossible_energy(counter_value):
    readings = iter([0.0, counter_value])
    meter = ReplayMeter(lambda: next(readings, counter_value))
    settings = WindowSettings(warmup=0, repeats=1, min_window_s=0.001, idle_s=0)
    with pytest.raises(MeterError, match="replay meter returned energy_j="):
        measure_stage_energy(lambda item: None, 1, meter, settings)


# Meter options from a scenario file


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("codecarbon", {"measure_power_secs": "fast"},
         "meter 'codecarbon' option measure_power_secs: expected a positive number"),
        ("codecarbon", {"measure_power_secs": 0}, "got 0 (int)"),
        ("external", {"trace_path": "t.csv", "clock_offset_s": "abc"},
         "meter 'external' option clock_offset_s: expected a number"),
        ("external", {"trace_path": "t.csv", "clock_offset_s": True}, "got True (bool)"),
        ("external", {"trace_path": "t.csv", "clock_offset_s": math.nan}, "got nan (float)"),
        ("external", {"trace_path": 5}, "option trace_path: expected a path"),
        ("external", {}, "meter 'external' needs option 'trace_path'"),
        ("model", {}, "meter 'model' needs option 'device'"),
        ("model", {"device": "toaster"}, "meter 'model' option device: unknown device 'toaster'"),
        ("model", {"device": "host"}, "'host' is measured with a meter, not modeled"),
        ("model", {"device": "raspberry-pi-4", "speed_ratio": -1}, "option speed_ratio"),
        ("replay", {}, "meter 'replay' cannot run from a scenario file"),
        ("replay", {"counter_j": "foo"}, "remove 'replay' from meters.host"),
        ("external", {"trace_path": "t.csv", "max_sample_gap_s": 0}, "option max_sample_gap_s"),
        ("rapl", {"bogus": 1}, "unknown option 'bogus' for meter 'rapl'; valid options: root"),
        ("rapl", {"include_dram": "yes"}, "option include_dram: expected a boolean"),
        ("nvml", {"device_indices": [0, -1]}, "expected a list of non-negative integers"),
        ("pyjoules", {"device_factory": "x"}, "valid options: none"),
        ("joulemeter", {}, "unknown meter 'joulemeter'; valid meters: codecarbon"),
    ],
)
def test_meter_options_rejected(name, options, expected):
    with pytest.raises(ScenarioError) as caught:
        check_meter_options(name, options)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rapl", {"root": None, "include_dram": False, "max_domain_power_w": 400}),
        ("external", {"trace_path": "power.csv", "clock_offset_s": -3, "max_wait_s": 2.5,
                      "max_sample_gap_s": 0.5}),
        ("codecarbon", {"country_iso_code": "FRA", "measure_power_secs": 0.5}),
        ("model", {"device": "raspberry-pi-4", "speed_ratio": 4}),
        ("nvml", {"device_indices": [0, 1], "force_power_sampling": True}),
    ],
)
def test_meter_options_accepted(name, options):
    check_meter_options(name, options)


def test_create_meter_checks_types_first():
    with pytest.raises(ScenarioError, match="measure_power_secs: expected a positive number"):
        create_meter("codecarbon", measure_power_secs="fast")


def test_option_specs_match_constructors():
    for name, meter_class in METERS.items():
        parameters = inspect.signature(meter_class.__init__).parameters
        for option in meter_class.option_specs:
            assert option in parameters, f"{name}: option {option} is not a constructor argument"
