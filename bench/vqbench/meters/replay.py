"""A deterministic meter for tests: it replays a cumulative energy counter or a power trace.

``ReplayMeter(counter_j, clock)`` reads any function that returns cumulative joules, with the
clock that times its windows. A test can drive both from one fake machine whose clock and
counter advance together, so the protocol's arithmetic is checked without real hardware or
real seconds. ``ReplayMeter.from_power_trace`` builds the counter from ``(time_s, power_w)``
samples, integrated with the trapezoid rule and held at the last power after the final sample.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import CALLABLE, OptionSpec


@dataclass(frozen=True)
class _ReplayToken:
    start_s: float
    start_j: float


class PowerTraceCounter:
    """Cumulative energy of a piecewise-linear power trace, as a function of trace time."""

    def __init__(self, trace: Sequence[tuple[float, float]]):
        if len(trace) < 1:
            raise MeterError("a replay power trace needs at least one (time_s, power_w) sample")
        times_s = [float(t) for t, _ in trace]
        if any(later <= earlier for earlier, later in zip(times_s, times_s[1:])):
            raise MeterError("replay power trace timestamps must be strictly increasing")
        self.times_s = times_s
        self.powers_w = [float(p) for _, p in trace]
        self._cumulative_j = [0.0]
        for i in range(1, len(times_s)):
            step_j = 0.5 * (self.powers_w[i - 1] + self.powers_w[i]) * (times_s[i] - times_s[i - 1])
            self._cumulative_j.append(self._cumulative_j[-1] + step_j)

    def energy_j_at(self, t_s: float) -> float:
        """Return the energy from the first sample to ``t_s`` (constant power outside the trace)."""
        if t_s <= self.times_s[0]:
            return self.powers_w[0] * (t_s - self.times_s[0])
        i = bisect.bisect_right(self.times_s, t_s) - 1
        if i == len(self.times_s) - 1:
            return self._cumulative_j[-1] + self.powers_w[-1] * (t_s - self.times_s[-1])
        t0_s, t1_s = self.times_s[i], self.times_s[i + 1]
        p0_w, p1_w = self.powers_w[i], self.powers_w[i + 1]
        p_w = p0_w + (p1_w - p0_w) * (t_s - t0_s) / (t1_s - t0_s)
        return self._cumulative_j[i] + 0.5 * (p0_w + p_w) * (t_s - t0_s)


class ReplayMeter(EnergyMeter):
    """Energy from a replayed cumulative counter; always available."""

    name = "replay"
    method = "replay"
    option_specs = {
        "counter_j": OptionSpec(
            CALLABLE,
            "cumulative energy counter in joules, which a test passes",
            required=True,
        ),
        "clock": OptionSpec(CALLABLE, "the clock that times the windows, in seconds"),
    }

    def __init__(
        self,
        counter_j: Callable[[], float],
        clock: Callable[[], float] = time.perf_counter,
    ):
        self._counter_j = counter_j
        self._clock = clock

    @classmethod
    def from_power_trace(
        cls,
        trace: Sequence[tuple[float, float]],
        clock: Callable[[], float] = time.perf_counter,
    ) -> ReplayMeter:
        """Build a meter whose trace time 0 is the clock reading at construction."""
        counter = PowerTraceCounter(trace)
        t0_s = clock()
        return cls(lambda: counter.energy_j_at(clock() - t0_s), clock)

    @classmethod
    def constant_power(cls, power_w: float, clock: Callable[[], float] = time.perf_counter):
        """Build a meter that reports ``power_w`` at all times."""
        return cls.from_power_trace([(0.0, power_w)], clock)

    def probe(self) -> Availability:
        return Availability(True, "replay meter: deterministic figures for tests, not measurements")

    def begin(self) -> _ReplayToken:
        return _ReplayToken(self._clock(), self._counter_j())

    def end(self, token: _ReplayToken) -> EnergyReading:
        energy_j = self._counter_j() - token.start_j
        return EnergyReading(energy_j, self._clock() - token.start_s, self.method)
