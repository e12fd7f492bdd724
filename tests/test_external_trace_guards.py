"""The external meter's trace checks: order, sample gaps, checks at creation and in probe."""

from __future__ import annotations

import time
import tracemalloc

import pandas  # noqa: F401  (imported here so that the memory test does not trace the import)
import pytest

from vqbench.errors import MeterError
from vqbench.meters import external
from vqbench.meters.external import ExternalTraceMeter, integrate_power_j, read_power_trace
from vqbench.meters.registry import create_meter

HEADER = "timestamp_s,power_w\n"


def _write(path, rows, header=HEADER):
    path.write_text(header + "".join(f"{t!r},{p!r}\n" for t, p in rows))
    return path


def _around_now(offsets_s, power_w=10.0):
    now_s = time.time()
    return [(now_s + offset_s, power_w) for offset_s in offsets_s]


def _measure_one_window(meter):
    token = meter.begin()
    time.sleep(0.01)
    return meter.end(token)


# Timestamps that repeat or go back


def test_repeated_timestamp_rejected(tmp_path):
    # Every timestamp twice, the second time at 100 times the power.
    path = _write(tmp_path / "t.csv", [(0.0, 5.0), (0.0, 500.0), (1.0, 5.0), (1.0, 500.0)])
    with pytest.raises(MeterError) as caught:
        read_power_trace(path)
    assert "line 3: timestamp_s 0.0 is not later than 0.0 on line 2" in str(caught.value)
    assert "remove repeated samples" in str(caught.value)


def test_clock_step_back_rejected(tmp_path):
    path = _write(tmp_path / "t.csv", [(0.0, 5.0), (1.0, 5.0), (2.0, 5.0), (1.5, 5.0), (3.0, 5.0)])
    with pytest.raises(MeterError, match="line 5: timestamp_s 1.5 is not later than 2.0 on line 4"):
        read_power_trace(path)


def test_reversed_trace_rejected(tmp_path):
    path = _write(tmp_path / "t.csv", [(3.0, 5.0), (2.0, 5.0), (1.0, 5.0)])
    with pytest.raises(MeterError, match="line 3: timestamp_s 2.0 is not later than 3.0"):
        read_power_trace(path)


def test_repeated_timestamp_rejected_at_creation(tmp_path):
    rows = [row for row in _around_now(range(-5, 60)) for _ in range(2)]
    with pytest.raises(MeterError, match="timestamps must strictly increase"):
        ExternalTraceMeter(_write(tmp_path / "t.csv", rows))


def test_increasing_trace_accepted(tmp_path):
    trace = read_power_trace(_write(tmp_path / "t.csv", [(0.0, 5.0), (0.5, 6.0), (2.0, 7.0)]))
    assert trace.timestamps_s.tolist() == [0.0, 0.5, 2.0]
    assert trace.powers_w.tolist() == [5.0, 6.0, 7.0]


# Gaps between samples


def test_window_inside_wide_gap_fails(tmp_path):
    # Samples 2e6 s apart, the run in between.
    meter = ExternalTraceMeter(_write(tmp_path / "t.csv", _around_now([-1e6, 1e6], 50.0)))
    with pytest.raises(MeterError) as caught:
        _measure_one_window(meter)
    assert "2e+06 s apart" in str(caught.value)
    assert "more than max_sample_gap_s = 2 s" in str(caught.value)


def test_gap_next_to_window_fails(tmp_path):
    # Dense samples until 1 s ago, then nothing for 50 minutes.
    offsets_s = [k * 0.1 for k in range(-50, -9)] + [3000.0]
    meter = ExternalTraceMeter(_write(tmp_path / "t.csv", _around_now(offsets_s)))
    with pytest.raises(MeterError, match="interpolated, not measured"):
        _measure_one_window(meter)


def test_gap_within_limit_measured(tmp_path):
    meter = ExternalTraceMeter(
        _write(tmp_path / "t.csv", _around_now([-2.0, 3.0, 60.0])), max_sample_gap_s=5.0
    )
    reading = _measure_one_window(meter)
    assert reading.method == "measured-external"
    assert reading.energy_j == pytest.approx(10.0 * reading.duration_s, rel=1e-6)


def test_widest_gap_brackets_window(tmp_path):
    trace = read_power_trace(_write(tmp_path / "t.csv", [(0.0, 1.0), (1.0, 1.0), (5.0, 1.0), (6.0, 1.0)]))
    assert external.widest_sample_gap_s(trace, 1.5, 1.6) == (1.0, 5.0)
    assert external.widest_sample_gap_s(trace, 0.2, 0.8) == (0.0, 1.0)
    assert external.widest_sample_gap_s(trace, 1.0, 1.0) == (1.0, 1.0)


# Mistakes that creating the meter finds before anything is measured


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("timestamp_s\n1\n2\n", "must start with the header line 'timestamp_s,power_w'"),
        ("1796000000.0,10\n1796000001.0,10\n", "found the first line ['1796000000.0', '10']"),
        ("", "found an empty file"),
        ("timestamp_s,power_w\n1,10\n2,-3\n", "line 3: power_w is -3"),
        ("timestamp_s,power_w\n1,10\n2,nan\n", "line 3: power_w is 'nan'"),
        ("timestamp_s,power_w\n1,10\n2,\n", "line 3: no power_w value"),
        ("timestamp_s,power_w\n1,10\n2,ten\n", "line 3: power_w 'ten' is not a number"),
        ("timestamp_s,power_w\n1,10\n", "needs at least two samples, found 1"),
    ],
    ids=["missing column", "no header", "empty", "negative", "nan", "missing value", "text", "one sample"],
)
def test_broken_trace_rejected_at_creation(tmp_path, content, expected):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(MeterError) as caught:
        create_meter("external", trace_path=str(path))
    assert expected in str(caught.value)


def test_trace_folder_rejected_at_creation(tmp_path):
    with pytest.raises(MeterError) as caught:
        create_meter("external", trace_path=str(tmp_path))
    assert f"power trace path {tmp_path} is a folder" in str(caught.value)


def test_millisecond_timestamps_rejected(tmp_path):
    rows = [(t_s * 1000, p_w) for t_s, p_w in _around_now(range(-5, 60))]
    with pytest.raises(MeterError) as caught:
        ExternalTraceMeter(_write(tmp_path / "t.csv", rows))
    assert "cannot cover this run" in str(caught.value)
    assert "the timestamps look like milliseconds (1000 times the present in seconds)" in str(caught.value)


def test_future_trace_suggests_clock_offset(tmp_path):
    rows = _around_now([86_400.0 * 30, 86_400.0 * 31])
    with pytest.raises(MeterError, match="set clock_offset_s to the trace clock minus the host clock"):
        ExternalTraceMeter(_write(tmp_path / "t.csv", rows))


# probe() and traces that end before the present


def test_probe_rejects_trace_ended_before_now(tmp_path):
    meter = ExternalTraceMeter(_write(tmp_path / "t.csv", _around_now([-600.0, -300.0])))
    availability = meter.probe()
    assert not availability.available
    assert "cannot cover a window from now on" in availability.reason


def test_probe_accepts_lagging_live_trace(tmp_path):
    # A logger that flushes every 10 s lags up to 10 s behind the present.
    meter = ExternalTraceMeter(_write(tmp_path / "t.csv", _around_now([-20.0, -5.0])), max_wait_s=10.0)
    assert meter.probe().available


def test_probe_accepts_trace_covering_now(tmp_path):
    meter = ExternalTraceMeter(_write(tmp_path / "t.csv", _around_now([-5.0, 60.0])))
    assert meter.probe().available


# A live trace whose logger is writing its last line


def test_live_trace_skips_unfinished_line(tmp_path):
    path = _write(tmp_path / "t.csv", [(0.0, 5.0), (1.0, 5.0)])
    with path.open("a") as handle:
        handle.write("2.0,")
    trace = read_power_trace(path, complete_lines_only=True)
    assert trace.timestamps_s.tolist() == [0.0, 1.0]


def test_static_trace_rejects_unfinished_line(tmp_path):
    path = _write(tmp_path / "t.csv", [(0.0, 5.0), (1.0, 5.0)])
    with path.open("a") as handle:
        handle.write("2.0,")
    with pytest.raises(MeterError, match="line 4: no power_w value"):
        read_power_trace(path)


def test_static_trace_reads_unterminated_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "0.0,5.0\n1.0,5.0")
    assert read_power_trace(path).timestamps_s.tolist() == [0.0, 1.0]


# Wording of window errors


def test_short_window_error_tells_ends_apart(tmp_path):
    trace = read_power_trace(_write(tmp_path / "t.csv", [(0.0, 5.0), (1.0, 5.0)]))
    # Both ends and the 2**-14 s length are exact binary fractions.
    start_s = 1796521984.8125
    with pytest.raises(MeterError) as caught:
        integrate_power_j(trace, start_s, start_s + 2**-14)
    assert "1796521984.812500..1796521984.812561 s" in str(caught.value)
    assert "6.1e-05 s long" in str(caught.value)


# Memory


def test_trace_read_memory_near_file_size(tmp_path):
    """Reading keeps no Python object per row, so traced memory stays near the file's size.

    tracemalloc records numpy's buffers and Python objects, not the pandas parser's own buffers.
    """
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(f"{1000 + k * 0.001:.3f},20.5\n" for k in range(50_000)))
    tracemalloc.start()
    try:
        read_power_trace(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 4 * path.stat().st_size
