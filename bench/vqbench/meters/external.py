"""Energy from an external power meter's trace (wall plug or USB meter), read from CSV.

The trace is a CSV file with a header and two columns, ``timestamp_s`` (Unix time in seconds
on the meter's clock) and ``power_w``. A window runs between two host wall-clock readings
(``time.time()``); the meter maps them onto the trace clock with

    trace time = host time + clock_offset_s

and integrates power over that span with the trapezoid rule, interpolating at the window
edges. The trace is checked in three steps:

1. Creating the meter reads the whole file and raises ``MeterError`` for a mistake that no
   wait can fix, naming the line where there is one: a folder or unreadable path, a missing
   header or column, a value that is not a finite number, a negative power, a timestamp that
   is not later than the one before (a repeated sample, a clock that stepped back, a file in
   reverse order), and a trace that starts more than a day after the present, as timestamps
   in milliseconds do.
2. ``probe`` reads the file again and reports the meter unavailable when its last sample plus
   ``max_wait_s`` lies before the present. Every window ends after the present, so such a
   trace could cover one only if its logger caught up by more than ``max_wait_s``. The
   runner then tries the next meter of ``meters.host``.
3. A window that ends after the last sample reads the file again, waiting up to
   ``max_wait_s`` for a live logger to cover it. A window that the trace still does not
   cover raises ``MeterError``. So does a window with two consecutive samples more than
   ``max_sample_gap_s`` apart, counting the last sample at or before its start and the first
   at or after its end. The limit is in seconds, not a share of the window, because the
   protocol's meter-overhead window lasts microseconds. Either way the figure is missing
   with the error as its reason: a missing span is never taken as 0 W, and a long gap is
   never interpolated into a measured figure.

With ``max_wait_s`` above 0 the trace is taken to be live, and a final line without a line
break is skipped because the logger may still be writing it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import (
    NON_NEGATIVE_NUMBER,
    NUMBER,
    PATH,
    POSITIVE_NUMBER,
    OptionSpec,
)

logger = logging.getLogger(__name__)

TRACE_COLUMNS = ("timestamp_s", "power_w")

# NOTE: a window shorter than the sample interval passes this limit too, and its energy is
# then mostly interpolated from samples outside it, so min_window_s should span several samples.
#: Default ``max_sample_gap_s``: a 1 Hz meter that drops one sample still passes.
DEFAULT_MAX_SAMPLE_GAP_S = 2.0

#: A trace that starts this long after the present cannot cover a run that starts now.
MAX_START_AFTER_PRESENT_S = 86_400.0

# Timestamp units that a meter's export may use in place of seconds, as multiples of a second.
_TIMESTAMP_UNITS = ((1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds"))


@dataclass(frozen=True)
class PowerTrace:
    """Power samples on the external meter's clock, with strictly increasing timestamps."""

    timestamps_s: np.ndarray
    powers_w: np.ndarray

    @property
    def span_s(self) -> tuple[float, float]:
        return float(self.timestamps_s[0]), float(self.timestamps_s[-1])


def describe_window(start_s: float, end_s: float) -> str:
    """Return a window in trace time with enough digits to tell a short window's ends apart."""
    return f"{start_s:.6f}..{end_s:.6f} s (trace time, {end_s - start_s:.3g} s long)"


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


def _text_stream(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline="")


def _read_trace_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise MeterError(
            f"power trace path {path} is a folder, not a CSV file; set trace_path to the trace file"
        )
    try:
        return path.read_bytes()
    except OSError as error:
        raise MeterError(f"cannot read power trace {path}: {error}") from error


def _check_header(path: Path, data: bytes) -> None:
    header = next(csv.reader(_text_stream(data), skipinitialspace=True), None)
    if header is None or not set(TRACE_COLUMNS) <= set(header):
        found = "an empty file" if header is None else f"the first line {header}"
        raise MeterError(
            f"power trace {path} must start with the header line 'timestamp_s,power_w' (more "
            f"columns may follow), found {found}; add or fix the header line"
        )


def _raise_first_invalid_row(path: Path, data: bytes) -> None:
    """Scan the trace row by row and raise MeterError naming the first invalid line."""
    reader = csv.DictReader(_text_stream(data), skipinitialspace=True)
    previous_line = 0
    previous_s = -math.inf
    for row in reader:
        timestamp_s, _ = _parse_sample(path, reader.line_num, row)
        if timestamp_s <= previous_s:
            raise MeterError(
                f"power trace {path} line {reader.line_num}: timestamp_s {timestamp_s!r} is not "
                f"later than {previous_s!r} on line {previous_line}; timestamps must strictly "
                "increase, so remove repeated samples, and check for a clock that stepped back "
                "or a file in reverse order"
            )
        previous_line, previous_s = reader.line_num, timestamp_s


def read_power_trace(path: Path, *, complete_lines_only: bool = False) -> PowerTrace:
    """Read a ``timestamp_s, power_w`` CSV file; raise MeterError on a malformed file.

    Every value must be a finite number, every power non-negative and every timestamp later
    than the one before. The error names the first line that breaks a rule.
    ``complete_lines_only`` skips a final line without a line break, which a live logger may
    still be writing.
    """
    import pandas as pd

    data = _read_trace_bytes(Path(path))
    if complete_lines_only:
        data = data[: data.rfind(b"\n") + 1]
    _check_header(path, data)

    # pandas parses only the two columns into float64 arrays, so memory grows by 16 bytes
    # per sample plus one copy of the file, not by a Python object per row. Only a file that
    # fails a check is scanned again row by row, to name the offending line.
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            skipinitialspace=True,
            index_col=False,
            usecols=list(TRACE_COLUMNS),
            dtype="float64",
        )
    except ValueError as error:
        _raise_first_invalid_row(path, data)
        raise MeterError(f"power trace {path} is not a valid CSV file: {error}") from error
    timestamps_s = frame["timestamp_s"].to_numpy()
    powers_w = frame["power_w"].to_numpy()

    valid = (
        np.isfinite(timestamps_s).all()
        and np.isfinite(powers_w).all()
        and (powers_w >= 0).all()
        and (np.diff(timestamps_s) > 0).all()
    )
    if not valid:
        _raise_first_invalid_row(path, data)
        raise MeterError(
            f"power trace {path} contains a missing, non-finite or negative value or a "
            "timestamp out of order, but no single line could be named; check the file"
        )
    if len(timestamps_s) < 2:
        raise MeterError(
            f"power trace {path} needs at least two samples, found {len(timestamps_s)}"
        )
    return PowerTrace(timestamps_s, powers_w)


def _timestamp_unit_hint(first_s: float, present_s: float) -> str:
    """Return how to fix a trace that starts long after the present."""
    if present_s > 0:
        ratio = first_s / present_s
        for factor, unit in _TIMESTAMP_UNITS:
            if factor / 10 < ratio < factor * 10:
                return (
                    f"the timestamps look like {unit} ({ratio:.0f} times the present in "
                    f"seconds), so export timestamp_s in seconds or divide it by {factor:g}"
                )
    return "set clock_offset_s to the trace clock minus the host clock"


def check_trace_start(path: Path, trace: PowerTrace, present_s: float) -> None:
    """Raise MeterError when the trace starts too long after ``present_s`` to cover a run."""
    first_s = trace.span_s[0]
    if first_s - present_s <= MAX_START_AFTER_PRESENT_S:
        return
    raise MeterError(
        f"power trace {path} starts at {first_s!r} s, {first_s - present_s:.3g} s after the "
        f"present ({present_s:.3f} s in trace time), so it cannot cover this run; "
        + _timestamp_unit_hint(first_s, present_s)
    )


def integrate_power_j(trace: PowerTrace, start_s: float, end_s: float) -> float:
    """Integrate the trace over [start_s, end_s] in trace time, with the trapezoid rule."""
    first_s, last_s = trace.span_s
    if start_s < first_s or end_s > last_s:
        raise MeterError(
            f"power trace covers {first_s:.6f}..{last_s:.6f} s but the window needs "
            f"{describe_window(start_s, end_s)}. Record the trace through the whole run, or "
            "set clock_offset_s to the trace clock minus the host clock."
        )
    inside = (trace.timestamps_s > start_s) & (trace.timestamps_s < end_s)
    edge_powers_w = np.interp([start_s, end_s], trace.timestamps_s, trace.powers_w)
    times_s = np.concatenate(([start_s], trace.timestamps_s[inside], [end_s]))
    powers_w = np.concatenate(([edge_powers_w[0]], trace.powers_w[inside], [edge_powers_w[1]]))
    return float(np.sum(0.5 * (powers_w[1:] + powers_w[:-1]) * np.diff(times_s)))


def widest_sample_gap_s(trace: PowerTrace, start_s: float, end_s: float) -> tuple[float, float]:
    """Return the two consecutive samples furthest apart among those bracketing or inside a window.

    The window must lie inside the trace. A window that starts and ends on one sample has no
    interval, so that sample is returned twice.
    """
    first = int(np.searchsorted(trace.timestamps_s, start_s, side="right")) - 1
    last = int(np.searchsorted(trace.timestamps_s, end_s, side="left"))
    times_s = trace.timestamps_s[first : last + 1]
    if len(times_s) < 2:
        return float(times_s[0]), float(times_s[0])
    widest = int(np.argmax(np.diff(times_s)))
    return float(times_s[widest]), float(times_s[widest + 1])


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
            NON_NEGATIVE_NUMBER,
            "how long a window waits for a live trace to cover it, in seconds; above 0, an "
            "unfinished last line of the trace is skipped",
        ),
        "max_sample_gap_s": OptionSpec(
            POSITIVE_NUMBER,
            "largest interval between the samples bracketing or inside a window, in seconds; "
            f"a window with a wider gap fails instead of being interpolated "
            f"(default {DEFAULT_MAX_SAMPLE_GAP_S:g})",
        ),
    }

    def __init__(
        self,
        trace_path: str | os.PathLike[str],
        clock_offset_s: float = 0.0,
        max_wait_s: float = 0.0,
        max_sample_gap_s: float = DEFAULT_MAX_SAMPLE_GAP_S,
    ):
        """Read and check the whole trace; raise MeterError when no window could use it.

        ``max_wait_s``: how long ``end`` waits for a live trace to cover the window.
        ``max_sample_gap_s``: the widest interval between samples that a window may span.
        """
        self.trace_path = Path(trace_path)
        self.clock_offset_s = clock_offset_s
        self.max_wait_s = max_wait_s
        self.max_sample_gap_s = max_sample_gap_s
        self._trace: PowerTrace = self._read_trace()
        check_trace_start(self.trace_path, self._trace, self._present_s())

    def _read_trace(self) -> PowerTrace:
        return read_power_trace(self.trace_path, complete_lines_only=self.max_wait_s > 0)

    def _present_s(self) -> float:
        """Return the present on the trace clock."""
        return time.time() + self.clock_offset_s

    def probe(self) -> Availability:
        try:
            trace = self._read_trace()
        except MeterError as error:
            return Availability(False, str(error))
        self._trace = trace
        first_s, last_s = trace.span_s
        present_s = self._present_s()
        if last_s + self.max_wait_s < present_s:
            return Availability(
                False,
                f"power trace {self.trace_path} ends at {last_s:.3f} s, {present_s - last_s:.3g} s "
                f"before the present in trace time, and max_wait_s is {self.max_wait_s:g} s, so it "
                "cannot cover a window from now on; start the meter's logger, raise max_wait_s "
                "if the logger writes in batches, or set clock_offset_s to the trace clock minus "
                "the host clock",
            )
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
        self._check_sample_gap(trace, start_s, end_s)
        duration_s = host_end_s - token.host_start_s
        if energy_j < 0 or (energy_j == 0 and duration_s > 0):
            # Negative energy cannot come from a trace that read_power_trace accepted; 0 J means
            # the trace reads 0 W over the whole window, so the meter is not measuring this host.
            raise MeterError(
                f"power trace {self.trace_path} gives {energy_j} J over "
                f"{describe_window(start_s, end_s)}; a window must have positive energy, so "
                "check that the meter is wired to this host and logging"
            )
        return EnergyReading(energy_j, duration_s, self.method)

    def _check_sample_gap(self, trace: PowerTrace, start_s: float, end_s: float) -> None:
        """Raise MeterError when the window's samples are more than max_sample_gap_s apart."""
        before_s, after_s = widest_sample_gap_s(trace, start_s, end_s)
        if after_s - before_s <= self.max_sample_gap_s:
            return
        raise MeterError(
            f"power trace {self.trace_path} has no sample between {before_s!r} s and "
            f"{after_s!r} s, {after_s - before_s:.6g} s apart, around the window "
            f"{describe_window(start_s, end_s)}; that is more than max_sample_gap_s = "
            f"{self.max_sample_gap_s:g} s, so the power in the window would be interpolated, "
            "not measured. Log the meter at a higher rate, or raise max_sample_gap_s"
        )

    def _trace_covering(self, end_s: float) -> PowerTrace:
        deadline_s = time.monotonic() + self.max_wait_s
        while True:
            if self._trace.span_s[1] < end_s:
                self._trace = self._read_trace()
            if self._trace.span_s[1] >= end_s or time.monotonic() >= deadline_s:
                return self._trace
            time.sleep(0.05)
