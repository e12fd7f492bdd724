"""Request statistics and server-side energy windows of the cloud service (``GET /metrics``)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vqbench.errors import VqbenchError
from vqbench.metrics.latency import percentile_ms

if TYPE_CHECKING:
    from vqbench.meters.base import EnergyMeter

logger = logging.getLogger(__name__)


class ServiceMetrics:
    """Request counts, status counts per endpoint, and recent compute times per variant.

    Endpoints are route templates; ``unmatched`` counts requests that matched no route (404)
    or were rejected before routing (413 from ``Content-Length``). Counters live for the life
    of the process. Compute times keep the last ``max_samples`` per variant, so the
    percentiles describe recent requests. ``faces_not_detected`` counts, per variant, the
    payloads in which the service's own detector found no face (always 0 where the edge aligns).
    ``connections_timed_out`` counts the connections that the header deadline closed before a
    request reached the app: ``partial_headers`` (answered with 408) and ``silent`` (no byte sent).
    """

    def __init__(self, max_samples: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._max_samples = max_samples
        self.started_unix_s = time.time()
        self._requests: Counter[str] = Counter()
        self._statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self._compute_ms: dict[str, deque[float]] = {}
        self._queue_ms: dict[str, deque[float]] = {}
        self._faces_not_detected: Counter[str] = Counter()
        self._computations = 0
        self._connections_timed_out: Counter[str] = Counter({"partial_headers": 0, "silent": 0})

    def record_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests[endpoint] += 1
            self._statuses[endpoint][status] += 1

    def record_connection_timeout(self, kind: str) -> None:
        """Count a connection closed by the header deadline, of ``kind`` ``partial_headers`` or ``silent``."""
        with self._lock:
            self._connections_timed_out[kind] += 1

    def record_compute(
        self, label: str, compute_ms: float, queue_ms: float, n_payloads: int, faces_not_detected: int = 0
    ) -> None:
        """Count one ``cloud()`` call of ``n_payloads``, of which ``faces_not_detected`` had no face detected."""
        with self._lock:
            self._compute_ms.setdefault(label, deque(maxlen=self._max_samples)).append(compute_ms)
            self._queue_ms.setdefault(label, deque(maxlen=self._max_samples)).append(queue_ms)
            self._faces_not_detected[label] += faces_not_detected
            self._computations += n_payloads

    @property
    def computations(self) -> int:
        """Payloads run through ``cloud()`` so far."""
        with self._lock:
            return self._computations

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": time.time() - self.started_unix_s,
                "requests": dict(self._requests),
                "statuses": {endpoint: {str(status): n for status, n in counts.items()} for endpoint, counts in self._statuses.items()},
                "errors": {
                    endpoint: {str(status): n for status, n in counts.items() if status >= 400}
                    for endpoint, counts in self._statuses.items()
                    if any(status >= 400 for status in counts)
                },
                "connections_timed_out": dict(self._connections_timed_out),
                "payloads_computed": self._computations,
                "compute": {
                    label: {**_timing_summary(values, self._queue_ms[label]),
                            "faces_not_detected": self._faces_not_detected[label]}
                    for label, values in self._compute_ms.items()
                },
            }


def _timing_summary(compute_ms: deque[float], queue_ms: deque[float]) -> dict[str, Any]:
    compute = list(compute_ms)
    queue = list(queue_ms)
    return {
        "samples": len(compute),
        "compute_p50_ms": percentile_ms(compute, 50),
        "compute_p95_ms": percentile_ms(compute, 95),
        "compute_p99_ms": percentile_ms(compute, 99),
        "queue_p50_ms": percentile_ms(queue, 50),
        "queue_p95_ms": percentile_ms(queue, 95),
    }


@dataclass(frozen=True)
class EnergyWindow:
    """Energy of the host over one window, and how many payloads the service computed in it."""

    start_unix_s: float
    duration_s: float
    energy_j: float | None
    method: str
    payloads_computed: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        per_payload = self.energy_j / self.payloads_computed if self.energy_j is not None and self.payloads_computed else None
        power_w = self.energy_j / self.duration_s if self.energy_j is not None and self.duration_s > 0 else None
        return {
            "start_unix_s": self.start_unix_s,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "mean_power_w": power_w,
            "payloads_computed": self.payloads_computed,
            "energy_per_payload_j": per_payload,
            "method": self.method,
            "error": self.error,
        }


class EnergyMonitor:
    """Closes consecutive energy windows of ``window_s`` on a background thread.

    Windows follow each other with only the meter's own ``end`` and ``begin`` time between
    them, which is seconds for codecarbon and microseconds for RAPL.

    The meter covers its whole device (a CPU package, a GPU), not this process alone, so a
    window's energy includes every other load on that device. ``energy_per_payload_j`` is the
    gross figure: window energy / payloads computed in it, with idle power not removed.
    A window whose meter read fails keeps its error and no energy; it never becomes 0 J.
    """

    def __init__(
        self, meter: "EnergyMeter | None", reason: str, window_s: float = 5.0, max_windows: int = 720
    ) -> None:
        self.meter = meter
        self.reason = reason
        self.window_s = window_s
        self._windows: deque[EnergyWindow] = deque(maxlen=max_windows)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count_payloads: Callable[[], int] = lambda: 0
        self._failures = 0

    @property
    def available(self) -> bool:
        return self.meter is not None

    def start(self, count_payloads: Callable[[], int]) -> None:
        """Start closing windows; ``count_payloads`` returns payloads computed so far."""
        if self.meter is None or self._thread is not None:
            return
        self._count_payloads = count_payloads
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vqbench-energy-windows", daemon=True)
        self._thread.start()
        logger.info("server-side energy windows of %.1f s with meter %s", self.window_s, self.meter.name)

    def stop(self) -> None:
        """Close the open window and stop the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.window_s + 10.0)
        self._thread = None

    def _run(self) -> None:
        assert self.meter is not None
        while not self._stop.is_set():
            self._close_one_window(self.meter)

    def _close_one_window(self, meter: "EnergyMeter") -> None:
        start_unix_s = time.time()
        start_s = time.perf_counter()
        try:
            token = meter.begin()
            # Some meters take seconds to begin (codecarbon starts a tracker), so the window opens after.
            start_unix_s = time.time()
            start_count = self._count_payloads()
            self._stop.wait(self.window_s)
            reading = meter.end(token)
        except VqbenchError as error:
            self._record_failure(start_unix_s, time.perf_counter() - start_s, meter, error)
            self._stop.wait(self.window_s)
            return
        window = EnergyWindow(
            start_unix_s, reading.duration_s, reading.energy_j, reading.method, self._count_payloads() - start_count
        )
        with self._lock:
            self._windows.append(window)

    def _record_failure(self, start_unix_s: float, duration_s: float, meter: "EnergyMeter", error: VqbenchError) -> None:
        self._failures += 1
        # Log the first failure and then every 100th, so a broken counter does not flood the log.
        if self._failures == 1 or self._failures % 100 == 0:
            logger.warning("energy window failed (%d so far) with meter %s: %s", self._failures, meter.name, error)
        with self._lock:
            self._windows.append(EnergyWindow(start_unix_s, duration_s, None, meter.method, 0, error=str(error)))

    def snapshot(self, last: int = 120) -> dict[str, Any]:
        if self.meter is None:
            return {"available": False, "reason": self.reason}
        with self._lock:
            windows = list(self._windows)
        measured = [window for window in windows if window.energy_j is not None]
        return {
            "available": True,
            "meter": self.meter.name,
            "method": self.meter.method,
            "reason": self.reason,
            "scope": "the whole device the meter covers, not this process alone",
            "window_s": self.window_s,
            "failed_windows": self._failures,
            "totals": {
                "windows": len(measured),
                "duration_s": sum(window.duration_s for window in measured),
                "energy_j": sum(window.energy_j or 0.0 for window in measured),
                "payloads_computed": sum(window.payloads_computed for window in measured),
            },
            "windows": [window.to_dict() for window in windows[-last:]],
        }


def open_energy_monitor(meter_names: Sequence[str], window_s: float = 5.0) -> EnergyMonitor:
    """Return a monitor on the first available meter of ``meter_names``, or one saying why none is."""
    try:
        from vqbench.meters.registry import create_meter
    except ImportError as error:
        return EnergyMonitor(None, f"vqbench.meters.registry cannot be imported ({error}); no server-side energy")
    reasons: list[str] = []
    for name in meter_names:
        try:
            meter = create_meter(name)
        except VqbenchError as error:
            reasons.append(f"{name}: {error}")
            continue
        availability = meter.probe()
        if availability.available:
            return EnergyMonitor(meter, availability.reason, window_s=window_s)
        reasons.append(f"{name}: {availability.reason}")
    reason = "; ".join(reasons) if reasons else "no energy meter was requested"
    return EnergyMonitor(None, f"no energy meter available ({reason})")
