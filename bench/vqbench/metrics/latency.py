"""Latency percentiles from per-sample timings."""

from __future__ import annotations

import numpy as np


def percentile_ms(latencies_ms: list[float] | np.ndarray, q: float) -> float | None:
    """Return the q-th percentile (linear interpolation), or None for no samples."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return None
    return float(np.percentile(values, q))


def ns_to_ms(duration_ns: int) -> float:
    """Convert a perf_counter_ns difference to milliseconds."""
    return duration_ns / 1e6
