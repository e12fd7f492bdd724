"""CodeCarbon's offline tracker as an energy estimate for CPU and RAM.

CodeCarbon reads RAPL when it can. Where it cannot (most virtual machines), it models CPU
power as TDP x CPU load, and for a CPU missing from its table it assumes a constant per
thread (4 W per thread in codecarbon 3.x). It models RAM power from the installed memory size.
Its figures are therefore labelled ``estimated-codecarbon`` and each window logs which mode
codecarbon chose.

Measured on the development VM (2 vCPUs, "Intel(R) Xeon(R) Processor", 23.5 GB RAM, no
powercap, codecarbon 3.3.2): codecarbon chose cpu_load mode with an assumed TDP of 8 W
(4 W x 2 threads) and modeled RAM at 20 W. RAM was ~90 % of its estimate for one busy thread.

The tracker is configured offline with a country (the country changes only codecarbon's own
CO2 figure, which vqbench does not use), writes no file (no output method, and an output
directory in a temporary folder) and sets ``allow_multiple_runs=True``, so a stale
``.codecarbon.lock`` in the temporary directory never blocks a run. Windows use codecarbon's
task API (``start_task`` / ``stop_task``) on one tracker.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import POSITIVE_NUMBER, STRING, OptionSpec
from vqbench.meters.rapl import DEFAULT_POWERCAP_ROOT, RaplMeter

logger = logging.getLogger(__name__)

_J_PER_KWH = 3.6e6


def _import_codecarbon() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import codecarbon
    except ImportError as error:
        raise MeterError(
            f"codecarbon is not installed ({error}): pip install codecarbon"
        ) from error
    return codecarbon


def describe_codecarbon_mode(tracker: Any) -> str:
    """Describe how a started tracker obtains CPU power (reads codecarbon's private fields)."""
    # NOTE: _hardware, _mode and _tdp are codecarbon internals (3.3.2); a later release may
    # rename them, and then the description reads "unknown".
    for hardware in getattr(tracker, "_hardware", []):
        if type(hardware).__name__ == "CPU":
            mode = getattr(hardware, "_mode", "unknown")
            tdp_w = getattr(hardware, "_tdp", "unknown")
            model = getattr(hardware, "_model", "unknown")
            return f"CPU mode {mode!r} (model {model!r}, TDP {tdp_w} W)"
    return "CPU mode unknown"


def _no_output_options(tracker_class: type) -> dict[str, Any]:
    """Return the arguments that turn off codecarbon's outputs in this codecarbon version."""
    # codecarbon 3.x deprecates save_to_file in favour of output_methods; 2.x lacks the latter.
    base_init = tracker_class.__mro__[1].__init__
    if "output_methods" in inspect.signature(base_init).parameters:
        return {"output_methods": []}
    return {"save_to_file": False}


@dataclass(frozen=True)
class _CodecarbonToken:
    task_name: str
    start_s: float


class CodecarbonMeter(EnergyMeter):
    """CPU and RAM energy estimated by codecarbon's OfflineEmissionsTracker."""

    name = "codecarbon"
    method = "estimated-codecarbon"
    option_specs = {
        "country_iso_code": OptionSpec(
            STRING, "ISO 3166 alpha-3 country for codecarbon's own CO2 figure, e.g. 'FRA'"
        ),
        "measure_power_secs": OptionSpec(
            POSITIVE_NUMBER, "interval between codecarbon's power samples, in seconds"
        ),
    }

    def __init__(self, country_iso_code: str = "USA", measure_power_secs: float = 1.0):
        self.country_iso_code = country_iso_code
        self.measure_power_secs = measure_power_secs
        self._tracker: Any | None = None
        self._output_dir: tempfile.TemporaryDirectory | None = None
        self._window_count = 0
        self.mode_description = "not started"

    def probe(self) -> Availability:
        try:
            codecarbon = _import_codecarbon()
        except MeterError as error:
            return Availability(False, str(error))
        # codecarbon 3.3.2 reads the system powercap tree, whatever VQBENCH_POWERCAP_ROOT is set to.
        if RaplMeter(DEFAULT_POWERCAP_ROOT).probe().available:
            power_source = f"it reads RAPL under {DEFAULT_POWERCAP_ROOT}"
        else:
            power_source = (
                f"no readable RAPL under {DEFAULT_POWERCAP_ROOT}, so it models CPU power as "
                "TDP x load (a constant per thread for CPUs missing from its table) and RAM "
                "power from memory size"
            )
        return Availability(True, f"codecarbon {codecarbon.__version__} estimate: {power_source}")

    def _get_tracker(self) -> Any:
        if self._tracker is not None:
            return self._tracker
        _import_codecarbon()
        from codecarbon import OfflineEmissionsTracker

        self._output_dir = tempfile.TemporaryDirectory(prefix="vqbench-codecarbon-")
        try:
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                measure_power_secs=self.measure_power_secs,
                output_dir=self._output_dir.name,
                **_no_output_options(OfflineEmissionsTracker),
                allow_multiple_runs=True,
                log_level="error",
            )
        except Exception as error:  # codecarbon validates its arguments with assorted errors
            raise MeterError(
                f"codecarbon tracker could not start with country {self.country_iso_code!r}: "
                f"{error}"
            ) from error
        return self._tracker

    def begin(self) -> _CodecarbonToken:
        tracker = self._get_tracker()
        self._window_count += 1
        task_name = f"vqbench-window-{self._window_count}"
        tracker.start_task(task_name)
        if self._window_count == 1:
            self.mode_description = describe_codecarbon_mode(tracker)
            logger.warning(
                "codecarbon energy is an estimate, not a measurement: %s", self.mode_description
            )
        return _CodecarbonToken(task_name, time.perf_counter())

    def end(self, token: _CodecarbonToken) -> EnergyReading:
        data = self._get_tracker().stop_task(token.task_name)
        duration_s = time.perf_counter() - token.start_s
        if data is None:
            raise MeterError(f"codecarbon returned no data for task {token.task_name}")
        domains_j = {
            "cpu": float(data.cpu_energy) * _J_PER_KWH,
            "ram": float(data.ram_energy) * _J_PER_KWH,
        }
        if sum(domains_j.values()) <= 0 and duration_s > 0:
            raise MeterError(
                f"codecarbon reported {sum(domains_j.values())} J over {duration_s:.3f} s; "
                "its log explains why (run with --log-level debug)"
            )
        return EnergyReading(sum(domains_j.values()), duration_s, self.method, domains_j)

    def close(self) -> None:
        self._tracker = None
        if self._output_dir is not None:
            self._output_dir.cleanup()
            self._output_dir = None

    @property
    def output_dir(self) -> Path | None:
        """The temporary directory given to codecarbon (None before the first window)."""
        return Path(self._output_dir.name) if self._output_dir is not None else None
