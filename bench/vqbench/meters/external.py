"""Energy from an external power meter's trace (wall plug or USB meter), read from CSV.

The trace is a CSV file with a header and two columns, ``timestamp_s`` (Unix time in seconds
on the meter's clock) and ``power_w``. A window runs between two host wall-clock readings
(``time.time()``); the meter maps them onto the trace clock with

    trace time = host time + clock_offset_s

and integrates power over that span with the trapezoid rule, interpolating at the window
edges. A trace logger may still be appending while the benchmark runs, so the file is read
again when a window ends after its last sample. A window that the trace does not cover raises
``MeterError``: a missing span is never taken as 0 W. A trace with a NaN, infinite or negative
value is rejected as a whole, with the line number.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import NON_NEGATIVE_NUMBER, NUMBER, PATH, OptionSpec

logger = logging.getLogger(__name__)

TRACE_COLUMNS = ("timestamp_s", "power_w")


@dataclass(frozen=True)
class PowerTrace:
    """Power samples on the external meter's clock."""

    timestamps_s: np.ndarray
    powers_w: np.ndarray

    @property
    def span_s(self) -> tuple[float, float]:
        return float(self.timestamps_s[0]), float(self.timestamps_s[-1])


def _parse_sample(path: Path, line_number: int, row: dict[str, str | None]) -> tuple[float, float]:
    """Parse one trace row; raise MeterError naming the line for a missing or invalid value."""
    values = []
    for column in TRACE_COLUMNS:
        text = row.get(column)
        if text is None or not text.strip():
            raise MeterError(f"power trace {path} line {line_number}: no {column} value")
        try:
            value = float(text)
        except ValueError as error:
            raise MeterError(
                f"power trace {path} line {line_number}: {column} {text!r} is not a number"
            ) from error
        if not math.isfinite(value):
            raise MeterError(
                f"power trace {path} line {line_number}: {column} is {text!r}; every value "
                "must be a finite number"
            )
        values.append(value)
    timestamp_s, power_w = values
    if power_w < 0:
        raise MeterError(
            f"power trace {path} line {line_number}: power_w is {power_w:g}, but power cannot be "
            "negative; check the meter's sign convention or its export"
        )
    return timestamp_s, power_w


def read_power_trace(path: Path) -> PowerTrace:
    """Read a ``timestamp_s, power_w`` CSV file; raise MeterError on a malformed file.

    Every value must be a finite number and every power non-negative; the error names the
    first line that is not.
    """
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            if reader.fieldnames is None or not set(TRACE_COLUMNS) <= set(reader.fieldnames):
                raise MeterError(
                    f"power trace {path} must have the header 'timestamp_s,power_w', "
                    f"found {reader.fieldnames}"
                )
            rows = [_parse_sample(path, reader.line_num, row) for row in reader]
    except OSError as error:
        raise MeterError(f"cannot read power trace {path}: {error}") from error
    if len(rows) < 2:
        raise MeterError(f"power trace {path} needs at least two samples, found {len(rows)}")
    data = np.asarray(rows, dtype=float)
    order = np.argsort(data[:, 0], kind="stable")
    return PowerTrace(data[order, 0], data[order, 1])


def integrate_power_j(trace: PowerTrace, start_s: float, end_s: float) -> float:
    """Integrate the trace over [start_s, end_s] in trace time, with the trapezoid rule."""
    first_s, last_s = trace.span_s
    if start_s < first_s or end_s > last_s:
        raise MeterError(
            f"power trace covers {first_s:.3f}..{last_s:.3f} s but the window needs "
            f"{start_s:.3f}..{end_s:.3f} s (trace time). Record the trace through the whole "
            "run, or set clock_offset_s to the trace clock minus the host clock."
        )
    inside = (trace.timestamps_s > start_s) & (trace.timestamps_s < end_s)
    edge_powers_w = np.interp([start_s, end_s], trace.timestamps_s, trace.powers_w)
    times_s = np.concatenate(([start_s], trace.timestamps_s[inside], [end_s]))
    powers_w = np.concatenate(([edge_powers_w[0]], trace.powers_w[inside], [edge_powers_w[1]]))
    return float(np.sum(0.5 * (powers_w[1:] + powers_w[:-1]) * np.diff(times_s)))


@dataclass(frozen=True)
class _ExternalToken:
    host_start_s: float


class ExternalTraceMeter(EnergyMeter):
    """Energy integrated from a wall or USB power meter's CSV trace."""

    name = "external"
    method = "measured-external"
    option_specs = {
        "trace_path": OptionSpec(
            PATH, "CSV trace (timestamp_s, power_w) written by the power meter", required=True
        ),
        "clock_offset_s": OptionSpec(NUMBER, "trace clock minus host clock, in seconds"),
        "max_wait_s": OptionSpec(
            NON_NEGATIVE_NUMBER, "how long a window waits for a live trace to cover it, in seconds"
        ),
    }

    def __init__(
        self,
        trace_path: str | os.PathLike[str],
        clock_offset_s: float = 0.0,
        max_wait_s: float = 0.0,
    ):
        """``max_wait_s``: how long ``end`` waits for a live trace to cover the window."""
        self.trace_path = Path(trace_path)
        self.clock_offset_s = clock_offset_s
        self.max_wait_s = max_wait_s
        self._trace: PowerTrace | None = None

    def probe(self) -> Availability:
        try:
            trace = read_power_trace(self.trace_path)
        except MeterError as error:
            return Availability(False, str(error))
        first_s, last_s = trace.span_s
        return Availability(
            True,
            f"power trace {self.trace_path}: {len(trace.timestamps_s)} samples over "
            f"{first_s:.3f}..{last_s:.3f} s, clock_offset_s={self.clock_offset_s}",
        )

    def begin(self) -> _ExternalToken:
        return _ExternalToken(time.time())

    def end(self, token: _ExternalToken) -> EnergyReading:
        host_end_s = time.time()
        start_s = token.host_start_s + self.clock_offset_s
        end_s = host_end_s + self.clock_offset_s
        trace = self._trace_covering(end_s)
        energy_j = integrate_power_j(trace, start_s, end_s)
        duration_s = host_end_s - token.host_start_s
        if energy_j < 0 or (energy_j == 0 and duration_s > 0):
            # Negative energy cannot come from a trace that read_power_trace accepted; 0 J means
            # the trace reads 0 W over the whole window, so the meter is not measuring this host.
            raise MeterError(
                f"power trace {self.trace_path} gives {energy_j} J over {start_s:.3f}.."
                f"{end_s:.3f} s (trace time); a window must have positive energy, so check "
                "that the meter is wired to this host and logging"
            )
        return EnergyReading(energy_j, duration_s, self.method)

    def _trace_covering(self, end_s: float) -> PowerTrace:
        deadline_s = time.monotonic() + self.max_wait_s
        while True:
            if self._trace is None or self._trace.span_s[1] < end_s:
                self._trace = read_power_trace(self.trace_path)
            if self._trace.span_s[1] >= end_s or time.monotonic() >= deadline_s:
                return self._trace
            time.sleep(0.05)
