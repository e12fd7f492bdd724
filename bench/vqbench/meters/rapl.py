"""RAPL energy counters read from the Linux powercap sysfs tree (Intel and AMD).

Layout read by this meter (the kernel's ``intel_rapl`` driver serves both Intel and AMD
processors under the same ``intel-rapl`` control type)::

    /sys/class/powercap/
      intel-rapl:0/                name = package-0, energy_uj, max_energy_range_uj
        intel-rapl:0:0/            name = core      (inside the package: not added)
        intel-rapl:0:1/            name = uncore    (inside the package: not added)
        intel-rapl:0:2/            name = dram      (added)
      intel-rapl:1/                name = package-1 (second socket)
      intel-rapl:2/                name = psys      (whole platform: not added)

A window's energy is the sum over package and DRAM domains. Core and uncore lie inside the
package figure and psys covers the package too, so adding them would count energy twice. AMD
processors (family 17h and later) expose ``package-N`` and ``core`` zones and no DRAM zone.
The ``intel-rapl-mmio`` tree repeats the package counter through another interface and is
skipped.

Counters are in microjoules and wrap at ``max_energy_range_uj``; this meter converts them to
joules. Since Linux 5.10 ``energy_uj`` is readable by root only, so an unreadable file raises
``MeterError`` with the fix.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading

logger = logging.getLogger(__name__)

POWERCAP_ROOT_ENV = "VQBENCH_POWERCAP_ROOT"
DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")

_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)$")
_SUBZONE_DIR = re.compile(r"^intel-rapl:(\d+):(\d+)$")
_UJ_PER_J = 1e6


@dataclass(frozen=True)
class RaplDomain:
    """One counted RAPL domain: its label, counter file and wrap range."""

    label: str
    energy_path: Path
    max_energy_range_uj: int


def powercap_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the powercap root: the argument, else ``$VQBENCH_POWERCAP_ROOT``, else sysfs."""
    if root is not None:
        return Path(root)
    from_env = os.environ.get(POWERCAP_ROOT_ENV)
    return Path(from_env) if from_env else DEFAULT_POWERCAP_ROOT


def _permission_error(path: Path, error: PermissionError) -> MeterError:
    return MeterError(
        f"cannot read RAPL counter {path}: permission denied. Run as root, or allow reads with "
        f"`sudo chmod a+r {path}` (the kernel resets the mode at boot)."
    )


def _read_int(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except PermissionError as error:
        raise _permission_error(path, error) from error
    except OSError as error:
        raise MeterError(f"cannot read RAPL file {path}: {error}") from error
    try:
        return int(text)
    except ValueError as error:
        raise MeterError(f"RAPL file {path} does not hold an integer: {text!r}") from error


def _read_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError as error:
        raise MeterError(f"cannot read RAPL zone name {zone / 'name'}: {error}") from error


def _make_domain(zone: Path, label: str) -> RaplDomain:
    energy_path = zone / "energy_uj"
    if not energy_path.exists():
        raise MeterError(f"RAPL zone {zone} has no energy_uj file")
    return RaplDomain(label, energy_path, _read_int(zone / "max_energy_range_uj"))


def _package_domains(zone: Path, package_name: str, include_dram: bool) -> list[RaplDomain]:
    domains = [_make_domain(zone, package_name)]
    if not include_dram:
        return domains
    for sub in sorted(zone.iterdir()):
        if _SUBZONE_DIR.match(sub.name) and _read_name(sub) == "dram":
            domains.append(_make_domain(sub, f"{package_name}/dram"))
    return domains


def discover_domains(root: Path, include_dram: bool = True) -> list[RaplDomain]:
    """List the package and DRAM domains under ``root``; raise MeterError when there is none."""
    if not root.is_dir():
        raise MeterError(
            f"powercap directory {root} not found: this kernel or machine exposes no RAPL "
            f"(virtual machines and containers usually do not). Set {POWERCAP_ROOT_ENV} if the "
            "tree lives elsewhere, or choose another meter."
        )
    domains: list[RaplDomain] = []
    for zone in sorted(root.iterdir(), key=lambda path: path.name):
        if not _ZONE_DIR.match(zone.name):
            continue
        name = _read_name(zone)
        if name.startswith("package"):
            domains.extend(_package_domains(zone, name, include_dram))
        elif name == "dram" and include_dram:
            # Some server platforms expose DRAM as a top-level zone instead of a subzone.
            domains.append(_make_domain(zone, f"dram-{zone.name.split(':')[1]}"))
    if not domains:
        raise MeterError(
            f"no RAPL package domain under {root}: no intel-rapl:N directory has a name file "
            "starting with 'package'. Check that the intel_rapl_msr module is loaded."
        )
    return domains


def counter_delta_uj(start_uj: int, end_uj: int, max_energy_range_uj: int) -> int:
    """Return the energy between two counter readings, allowing for one wrap-around."""
    delta_uj = end_uj - start_uj
    if delta_uj < 0:
        # NOTE: two wraps inside one window cannot be detected. At 100 W a 2**32 x 61 µJ
        # range wraps every ~43 minutes, far longer than a measurement window.
        delta_uj += max_energy_range_uj
    return delta_uj


class RaplMeter(EnergyMeter):
    """Package (and DRAM) energy from RAPL counters in the powercap sysfs tree."""

    name = "rapl"
    method = "measured-rapl"

    def __init__(self, root: str | os.PathLike[str] | None = None, include_dram: bool = True):
        self.root = powercap_root(root)
        self.include_dram = include_dram
        self._domains: list[RaplDomain] | None = None

    def probe(self) -> Availability:
        try:
            domains = discover_domains(self.root, self.include_dram)
            for domain in domains:
                _read_int(domain.energy_path)
        except MeterError as error:
            return Availability(False, str(error))
        labels = ", ".join(domain.label for domain in domains)
        return Availability(True, f"RAPL counters readable under {self.root}: {labels}")

    def _get_domains(self) -> list[RaplDomain]:
        if self._domains is None:
            self._domains = discover_domains(self.root, self.include_dram)
            logger.info("RAPL domains: %s", ", ".join(d.label for d in self._domains))
        return self._domains

    def _read_all(self) -> tuple[float, list[int]]:
        return time.perf_counter(), [_read_int(d.energy_path) for d in self._get_domains()]

    def begin(self) -> tuple[float, list[int]]:
        return self._read_all()

    def end(self, token: tuple[float, list[int]]) -> EnergyReading:
        start_s, start_values = token
        end_s, end_values = self._read_all()
        domains_j = {}
        for domain, start_uj, end_uj in zip(self._get_domains(), start_values, end_values):
            delta_uj = counter_delta_uj(start_uj, end_uj, domain.max_energy_range_uj)
            domains_j[domain.label] = delta_uj / _UJ_PER_J
        return EnergyReading(
            energy_j=sum(domains_j.values()),
            duration_s=end_s - start_s,
            method=self.method,
            domains_j=domains_j,
        )
