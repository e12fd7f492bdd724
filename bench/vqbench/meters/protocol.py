"""The energy measurement protocol: warm-up, idle window, then repeated measured windows.

Energy counters update every ~1 ms (RAPL) to ~100 ms (NVML), and estimators sample more
slowly still, so one inference is far too short to measure. Each stage is measured over
windows of many inferences instead, all with the same meter::

    time -------------------------------------------------------------------------------->
    | warm-up  | overhead | idle window     | window 1         | window 2         | ...
    | w(0) ... | begin    | begin           | begin            | begin            |
    | w(k-1)   | end      | sleep(idle_s)   | w(i) w(i+1) ...  | w(j) w(j+1) ...  |
    | (not     | (empty   | end             | until >= min_    | until >= min_    |
    |  metered)|  window) | -> idle_power_w | window_s; end    | window_s; end    |
                                            |<------- repeated `repeats` times ------->|

1. Warm-up: ``warmup`` inferences, unmetered, so caches, allocators and lazy initialisation
   settle before anything is counted.
2. Overhead: one empty window (``begin`` then ``end``) times the meter's own cost, reported as
   ``meter_overhead_s`` so a reader can judge it against the window length.
3. Idle window: the process sleeps ``idle_s`` inside a window. That window's energy over its
   duration is the idle power of whatever the meter covers (a package, a GPU, a whole board).
4. Measured windows: inferences run back to back, cycling over the items
   (``i mod n_items``), until the window has lasted at least ``min_window_s``; the item index
   carries on from one window to the next. Per window:

       gross   = window energy / inferences in the window
       dynamic = (window energy - idle_power_w x window duration) / inferences in the window

5. Summary: the mean of the per-window figures, with a 95 % confidence half-width from
   Student's t over the ``repeats`` windows (none with one window).

A ``MeterError`` from any step propagates: the caller records the figure as missing with the
error's reason and never as 0 J. A window whose energy or duration is negative, NaN or
infinite, from any meter, raises ``MeterError`` too.

Several stages (``measure_stages_energy``) share one overhead and one idle window, and their
measured windows take turns: window 1 of every stage, then window 2 of every stage, and so on.
A host whose speed drifts over seconds then affects all stages alike, which keeps ratios
between stages, such as those that ``vqbench check`` gates, steady.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vqbench.errors import MeterError, ScenarioError, VqbenchError
from vqbench.meters.base import EnergyMeter, EnergyReading

logger = logging.getLogger(__name__)

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.959964


@dataclass(frozen=True)
class WindowSettings:
    """How many warm-up inferences and measured windows, and how long each window lasts."""

    warmup: int = 3
    repeats: int = 3
    min_window_s: float = 1.0
    idle_s: float = 1.0


@dataclass(frozen=True)
class StageEnergy:
    """Energy per inference of one stage, summarised over the measured windows.

    ``energy_j_per_inference`` is gross (idle power included). ``dynamic_energy_j_per_inference``
    excludes the idle power over each window's duration. Both are means over the windows, whose
    gross figures are in ``repeats_j_per_inference``.
    ``ci95_j`` is the 95 % half-width of the gross mean (NaN with one window).
    ``n_inferences`` counts measured inferences over all windows, ``window_s`` is the mean
    window duration and ``meter_overhead_s`` the duration of one empty ``begin``/``end``.
    ``idle_power_w`` is NaN when ``idle_s`` is 0, and then so is the dynamic figure.
    ``window_inferences`` and ``window_durations_s`` hold each window's count and duration,
    in the order of ``repeats_j_per_inference``.
    """

    energy_j_per_inference: float
    ci95_j: float
    dynamic_energy_j_per_inference: float
    repeats_j_per_inference: tuple[float, ...]
    idle_power_w: float
    method: str
    n_inferences: int
    window_s: float
    meter_overhead_s: float
    window_inferences: tuple[int, ...] = ()
    window_durations_s: tuple[float, ...] = ()


def t_quantile_975(degrees_of_freedom: int) -> float:
    """Return the 0.975 quantile of Student's t (the factor of a two-sided 95 % interval)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {degrees_of_freedom}")
    if degrees_of_freedom <= len(_T_975):
        return _T_975[degrees_of_freedom - 1]
    # Cornish-Fisher expansion around the normal quantile; within 1e-3 of the exact value
    # for more than 30 degrees of freedom.
    z, nu = _Z_975, float(degrees_of_freedom)
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


def mean_and_ci95(values: tuple[float, ...]) -> tuple[float, float]:
    """Return the mean and the half-width of its 95 % Student-t interval (NaN for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half_width = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half_width


def _check_settings(n_items: int, settings: WindowSettings) -> None:
    if n_items < 1:
        raise ScenarioError(f"energy measurement needs at least one item, got n_items={n_items}")
    if settings.repeats < 1 or settings.warmup < 0:
        raise ScenarioError(
            f"repeats must be >= 1 and warmup >= 0, got repeats={settings.repeats}, "
            f"warmup={settings.warmup}"
        )
    if settings.min_window_s <= 0 or settings.idle_s < 0:
        raise ScenarioError(
            f"min_window_s must be > 0 and idle_s >= 0, got min_window_s={settings.min_window_s}, "
            f"idle_s={settings.idle_s}"
        )


def _checked(reading: EnergyReading, meter: EnergyMeter, window: str) -> EnergyReading:
    """Return ``reading``, or raise MeterError when its energy or duration cannot be real."""
    for field, value in (("energy_j", reading.energy_j), ("duration_s", reading.duration_s)):
        if not math.isfinite(value) or value < 0:
            raise MeterError(
                f"{meter.name} meter returned {field}={value} for the {window}; a window's "
                "energy and duration must be finite and non-negative, so it has no figure"
            )
    return reading


def _measure_overhead_s(meter: EnergyMeter, clock: Callable[[], float]) -> float:
    start_s = clock()
    _checked(meter.end(meter.begin()), meter, "empty overhead window")
    return clock() - start_s


def _measure_idle_power_w(
    meter: EnergyMeter, idle_s: float, sleep: Callable[[float], None]
) -> float:
    if idle_s == 0:
        logger.warning("idle_s is 0: no idle window, so dynamic energy is not reported")
        return math.nan
    token = meter.begin()
    sleep(idle_s)
    reading = _checked(meter.end(token), meter, "idle window")
    if reading.duration_s <= 0:
        raise MeterError(f"{meter.name} meter returned a non-positive idle window duration")
    return reading.energy_j / reading.duration_s


def _run_window(
    work: Callable[[int], object],
    first_item: int,
    n_items: int,
    meter: EnergyMeter,
    min_window_s: float,
    clock: Callable[[], float],
) -> tuple[EnergyReading, int]:
    token = meter.begin()
    start_s = clock()
    count = 0
    while True:
        work((first_item + count) % n_items)
        count += 1
        if clock() - start_s >= min_window_s:
            break
    return _checked(meter.end(token), meter, "measured window"), count


def _combined_method(readings: list[EnergyReading]) -> str:
    methods = list(dict.fromkeys(reading.method for reading in readings))
    if len(methods) > 1:
        logger.warning("windows of one stage used different methods: %s", ", ".join(methods))
    return "+".join(methods)


@dataclass(frozen=True)
class EnergyStage:
    """One stage to meter: ``work(i)`` runs one inference on item ``i mod n_items``."""

    label: str
    work: Callable[[int], object]
    n_items: int


@dataclass
class _StageWindows:
    """The windows measured so far for one stage."""

    next_item: int
    readings: list[EnergyReading]
    gross_j: list[float]
    dynamic_j: list[float]
    counts: list[int]


def measure_stage_energy(
    work: Callable[[int], object],
    n_items: int,
    meter: EnergyMeter,
    settings: WindowSettings,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> StageEnergy:
    """Measure the energy per inference of ``work(i)`` with the windows drawn above.

    ``clock`` and ``sleep`` let tests drive the protocol with a fake clock; they must be the
    clock the meter uses. Raises the MeterError (or other VqbenchError) that stopped it.
    """
    [result] = measure_stages_energy([EnergyStage("stage", work, n_items)], meter, settings, clock=clock, sleep=sleep)
    if isinstance(result, VqbenchError):
        raise result
    return result


def measure_stages_energy(
    stages: Sequence[EnergyStage],
    meter: EnergyMeter,
    settings: WindowSettings,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    after_round: Callable[[], None] | None = None,
) -> list[StageEnergy | VqbenchError]:
    """Measure several stages with their windows interleaved: round ``r`` runs window ``r`` of each.

    A host whose speed changes over seconds (turbo, a shared virtual machine, a neighbour's job)
    then slows every stage's windows alike, so the figures of different stages stay comparable.
    The overhead and idle windows are measured once and shared. With more than one stage, one
    unmetered inference precedes each window, because the other stages' windows may have evicted
    this stage's weights from the caches.

    Returns one entry per stage: its StageEnergy, or the VqbenchError that stopped it. That is
    a MeterError from one of its windows or an error of its own work, and the other stages go on. A
    MeterError of the overhead or idle window concerns every stage and propagates.
    ``after_round`` is called after each round (progress, host load).
    """
    for stage in stages:
        _check_settings(stage.n_items, settings)

    failed: dict[int, VqbenchError] = {}
    for index, stage in enumerate(stages):
        try:
            for i in range(settings.warmup):
                stage.work(i % stage.n_items)
        except VqbenchError as error:
            failed[index] = error

    overhead_s = _measure_overhead_s(meter, clock)
    idle_power_w = _measure_idle_power_w(meter, settings.idle_s, sleep)
    logger.info("%s: idle power %.3f W, meter overhead %.6f s", meter.name, idle_power_w, overhead_s)

    windows = [_StageWindows(settings.warmup, [], [], [], []) for _ in stages]
    for repeat in range(settings.repeats):
        for index, stage in enumerate(stages):
            if index in failed:
                continue
            state = windows[index]
            try:
                if len(stages) > 1:
                    stage.work(state.next_item % stage.n_items)
                reading, count = _run_window(stage.work, state.next_item, stage.n_items, meter,
                                             settings.min_window_s, clock)
            except VqbenchError as error:
                failed[index] = error
                continue
            state.next_item += count
            state.counts.append(count)
            state.readings.append(reading)
            state.gross_j.append(reading.energy_j / count)
            state.dynamic_j.append((reading.energy_j - idle_power_w * reading.duration_s) / count)
            logger.debug("%s window %d: %d inferences, %.4f s, %.6f J", stage.label, repeat, count,
                         reading.duration_s, reading.energy_j)
        if after_round is not None:
            after_round()

    return [
        failed[index] if index in failed
        else _summarise(stage, windows[index], settings, meter, idle_power_w, overhead_s)
        for index, stage in enumerate(stages)
    ]


def _summarise(
    stage: EnergyStage, state: _StageWindows, settings: WindowSettings, meter: EnergyMeter,
    idle_power_w: float, overhead_s: float,
) -> StageEnergy:
    mean_j, ci95_j = mean_and_ci95(tuple(state.gross_j))
    dynamic_mean_j = statistics.fmean(state.dynamic_j)
    if dynamic_mean_j < 0:
        logger.warning(
            "%s, %s: dynamic energy %.3g J per inference is negative: idle power drifted or the "
            "stage is too light for this meter; use longer windows", meter.name, stage.label, dynamic_mean_j,
        )
    return StageEnergy(
        energy_j_per_inference=mean_j,
        ci95_j=ci95_j,
        dynamic_energy_j_per_inference=dynamic_mean_j,
        repeats_j_per_inference=tuple(state.gross_j),
        idle_power_w=idle_power_w,
        method=_combined_method(state.readings),
        n_inferences=state.next_item - settings.warmup,
        window_s=statistics.fmean(reading.duration_s for reading in state.readings),
        meter_overhead_s=overhead_s,
        window_inferences=tuple(state.counts),
        window_durations_s=tuple(reading.duration_s for reading in state.readings),
    )
