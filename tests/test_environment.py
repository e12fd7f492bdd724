"""The run environment: the busy-host check that flags inflated timings."""

from __future__ import annotations

import os

import pytest

from vqbench.environment import HostLoadMonitor, busy_host_warning


@pytest.mark.parametrize(
    ("load_1min", "cpus", "warns"),
    [(0.3, 2, False), (2.0, 2, False), (2.5, 2, True), (9.0, 8, True)],
)
def test_busy_host_warning_threshold(monkeypatch, load_1min, cpus, warns):
    monkeypatch.setattr(os, "getloadavg", lambda: (load_1min, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)

    measured, warning = busy_host_warning()

    assert measured == load_1min
    assert (warning is not None) == warns
    if warns:
        assert f"load average {load_1min:.1f} on {cpus} CPUs" in warning


def test_host_load_monitor_warns_once(monkeypatch):
    loads = iter([1.0, 5.0, 7.0, 3.0])
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monitor = HostLoadMonitor()

    samples = [monitor.sample() for _ in range(4)]

    assert [load for load, _ in samples] == [1.0, 5.0, 7.0, 3.0]
    assert samples[0][1] is None
    assert samples[1][1] is not None
    assert samples[2][1] is None
    assert samples[3][1] is None
    assert monitor.max_load_1min == 7.0
