"""Host load of a run and the busy-host rule of the noisy gates.

A run's load is read from environment.json and from the busy-host warning in results.json.
``_host_load_notes`` decides whether a busy host makes the noisy verdicts inconclusive.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from vqbench.check.policy import CheckPolicy
from vqbench.report.loader import ENVIRONMENT_FILE
from vqbench.results import RunResults


#: The busy-host warning that ``vqbench.environment.busy_host_warning`` adds to results.json.
_BUSY_WARNING = re.compile(
    r"host was busy while timing \(1-minute load average (?P<load>[0-9.]+) on (?P<cpus>\d+) CPUs\)"
)


@dataclass(frozen=True)
class HostLoad:
    """Host load of a run: the highest 1-minute load average while timing, and the logical CPU count."""

    max_load_1min: float
    cpus: int

    @property
    def busy(self) -> bool:
        """Whether more processes were runnable than there were CPUs, the rule the runner warns on."""
        return self.max_load_1min > self.cpus

    def describe(self) -> str:
        return f"load {self.max_load_1min:.2f} on {self.cpus} CPUs"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _environment_load(results_dir: Path) -> HostLoad | None:
    """Return the host load recorded in environment.json, or None when the file or a field is missing or invalid."""
    path = results_dir / ENVIRONMENT_FILE
    try:
        environment = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(environment, dict):
        return None
    load, cpus = environment.get("max_load_average_1min_while_timing"), environment.get("cpu_logical_cores")
    if not _is_number(load) or not _is_number(cpus) or cpus < 1:
        return None
    return HostLoad(float(load), int(cpus))


def run_host_load(results_dir: Path, results: RunResults) -> HostLoad | None:
    """Return the run's host load from environment.json and its busy-host warning, the busier of the two.

    An interrupted run has no environment.json, so its warning in results.json is the only record.
    None means that the run's load is unknown.
    """
    found = []
    environment_load = _environment_load(Path(results_dir))
    if environment_load is not None:
        found.append(environment_load)
    for warning in results.warnings:
        match = _BUSY_WARNING.search(warning)
        if match is not None:
            found.append(HostLoad(float(match["load"]), int(match["cpus"])))
    return max(found, key=lambda load: load.max_load_1min / load.cpus, default=None)


def _host_load_notes(current: HostLoad | None, recorded: HostLoad | None,
                     policy: CheckPolicy) -> tuple[str | None, list[str], list[str]]:
    """Return the busy-host reason that makes noisy verdicts inconclusive (None to judge them), notes, summary notes."""
    notes, summary_notes = [], []
    if recorded is None:
        notes.append("the baseline does not record the host load of its run, so a busy baseline host cannot be "
                     "detected; re-record the baseline to store it")
    if current is None:
        notes.append(f"this run has no host load in {ENVIRONMENT_FILE}, so a busy host cannot be detected")
    busy_runs = []
    for which, load in (("the baseline run", recorded), ("this run", current)):
        if load is not None and load.busy:
            busy_runs.append(f"{which} ({load.describe()})")
    if not busy_runs:
        return None, notes, summary_notes
    reason = f"host busy while timing {' and '.join(busy_runs)}"
    if policy.on_busy_host == "gate":
        summary_notes.append(f"latency and energy gated although the {reason} (policy on_busy_host: gate)")
        return None, notes, summary_notes
    summary_notes.append(f"latency and energy inconclusive, not gated: {reason}; rerun on a quiet host")
    return reason, notes, summary_notes
