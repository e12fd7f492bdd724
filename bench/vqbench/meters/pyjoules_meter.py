"""Energy through pyJoules, when it is installed and finds RAPL or NVIDIA devices.

pyJoules is optional. Where it is missing, or where its device factory raises or returns no
device (WSL, Docker on macOS, Raspberry Pi), the meter reports itself unavailable instead of
failing. pyJoules reports RAPL domains in microjoules and NVIDIA GPU domains in millijoules;
this meter converts both to joules.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install pyJoules"


def _load_device_factory() -> Any:
    try:
        from pyJoules.device.device_factory import DeviceFactory
    except ImportError as error:
        raise MeterError(f"pyJoules is not installed ({error}): {INSTALL_HINT}") from error
    return DeviceFactory


def _load_energy_meter_class() -> Any:
    from pyJoules.energy_meter import EnergyMeter as PyJoulesEnergyMeter

    return PyJoulesEnergyMeter


def domain_energy_j(domain: str, value: float) -> float:
    """Convert one pyJoules domain value to joules (GPU domains in mJ, RAPL domains in µJ)."""
    # NOTE: units taken from pyJoules' documentation; not checked on hardware, because
    # pyJoules is not a dependency of vqbench.
    return value / 1e3 if domain.startswith("nvidia_gpu") else value / 1e6


@dataclass(frozen=True)
class _PyJoulesToken:
    start_s: float


class PyJoulesMeter(EnergyMeter):
    """RAPL and NVIDIA energy read by pyJoules' device factory."""

    name = "pyjoules"
    method = "measured-pyjoules"

    def __init__(self, device_factory: Any | None = None, energy_meter_class: Any | None = None):
        """Both arguments default to pyJoules' own classes; tests may pass fakes."""
        self._device_factory = device_factory
        self._energy_meter_class = energy_meter_class
        self._meter: Any | None = None

    def _create_devices(self) -> list[Any]:
        factory = self._device_factory or _load_device_factory()
        try:
            devices = list(factory.create_devices())
        except Exception as error:  # pyJoules raises its own and OS errors when RAPL is absent
            raise MeterError(f"pyJoules found no readable device: {error!r}") from error
        if not devices:
            raise MeterError("pyJoules found no RAPL or NVIDIA device on this machine")
        return devices

    def probe(self) -> Availability:
        try:
            devices = self._create_devices()
        except MeterError as error:
            return Availability(False, str(error))
        return Availability(True, f"pyJoules devices: {', '.join(map(str, devices))}")

    def begin(self) -> _PyJoulesToken:
        if self._meter is None:
            meter_class = self._energy_meter_class or _load_energy_meter_class()
            self._meter = meter_class(self._create_devices())
        self._meter.start()
        return _PyJoulesToken(time.perf_counter())

    def end(self, token: _PyJoulesToken) -> EnergyReading:
        self._meter.stop()
        duration_s = time.perf_counter() - token.start_s
        samples = list(self._meter)
        if not samples:
            raise MeterError("pyJoules returned no sample for the window")
        domains_j = {
            domain: domain_energy_j(domain, value) for domain, value in samples[-1].energy.items()
        }
        negative = {domain: value for domain, value in domains_j.items() if value < 0}
        if negative:
            raise MeterError(
                f"pyJoules reported negative energy {negative}: a counter wrapped inside the "
                "window. Use the rapl meter, which handles wrap-around."
            )
        return EnergyReading(sum(domains_j.values()), duration_s, self.method, domains_j)
