"""The run environment: the busy-host check that flags inflated timings."""

from __future__ import annotations

import os

import pytest

from vqbench.environment import busy_host_warning


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
