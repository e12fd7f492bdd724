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

A window's counter readings are checked before they become a figure. A counter that went
backwards counts as one wrap only when the wrapped delta is below ``max_domain_power_w`` over
the window. Otherwise the counter was reset (driver reload, suspend and resume) or its range
file is wrong. A window long enough for the counter to wrap twice at that power is ambiguous,
and a package counter that did not change over a window of ``STALLED_WINDOW_S`` or more is
frozen. All three raise ``MeterError``, so the figure is missing with the reason, never a
wrong number or 0 J.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import BOOLEAN, PATH, POSITIVE_NUMBER, OptionSpec

logger = logging.getLogger(__name__)

POWERCAP_ROOT_ENV = "VQBENCH_POWERCAP_ROOT"
DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")

# Highest average power that one counted domain (a package, or its DRAM) is taken to draw, in
# watts. NOTE: an estimate, not a hardware limit. Server packages of 2024-2025 are rated at up
# to 500 W TDP (AMD EPYC 9965, Intel Xeon 6980P) and may exceed their rating briefly. So the
# default allows twice that, and the rapl meter's max_domain_power_w option overrides it. A
# reset counter still fails the bound: read as a wrap it implies nearly its whole range (262 kJ
# on Intel) in one window, 26 kW over 10 s, unless it was within ceiling x window of the top.
MAX_DOMAIN_POWER_W = 1000.0

# RAPL counters update about once a millisecond, and the process can be descheduled between a
# clock reading and the counter reads beside it. The power bounds use the window widened by
# this much, so a counter update that lands just outside the timed span is not rejected.
_TIMING_SLACK_S = 0.01

# A package counter that has not changed over this long is frozen, not idle. A live counter
# advances about every millisecond, by at least one energy unit (typically 61 µJ on Intel,
# 15.3 µJ on AMD), and any running package draws more than that. Shorter windows, such as the
# protocol's empty overhead window, may read no change. NOTE: a frozen counter therefore still
# reads 0 J in windows shorter than this, unless the idle window (idle_s) has caught it.
STALLED_WINDOW_S = 0.05

_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)$")
_SUBZONE_DIR = re.compile(r"^intel-rapl:(\d+):(\d+)$")
_UJ_PER_J = 1e6


@dataclass(frozen=True)
class RaplDomain:
    """One counted RAPL domain: its label, counter file and wrap range.

    ``is_package`` is False for DRAM domains. The meter leaves a DRAM domain out, with a
    warning, when it is unreadable at discovery or frozen, instead of failing the whole figure.
    """

    label: str
    energy_path: Path
    max_energy_range_uj: int
    is_package: bool = True


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


def _read_text(path: Path) -> str:
    # A FIFO or device in place of a sysfs attribute would block the read forever, so only
    # regular files (which is what sysfs attributes are) are opened.
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise MeterError(f"cannot read RAPL file {path}: {error}") from error
    if not stat.S_ISREG(mode):
        raise MeterError(
            f"RAPL file {path} is not a regular file, as sysfs attributes are; check that "
            f"{POWERCAP_ROOT_ENV} or the rapl meter's root option names a powercap tree"
        )
    try:
        return path.read_text().strip()
    except PermissionError as error:
        raise _permission_error(path, error) from error
    except OSError as error:
        raise MeterError(f"cannot read RAPL file {path}: {error}") from error


def _read_int(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text)
    except ValueError as error:
        raise MeterError(f"RAPL file {path} does not hold an integer: {text!r}") from error


def _read_name(zone: Path) -> str:
    return _read_text(zone / "name")


def _list_dir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda path: path.name)
    except OSError as error:
        raise MeterError(f"cannot list powercap folder {folder}: {error}") from error


def read_counter_uj(domain: RaplDomain) -> int:
    """Read a domain's counter in µJ; raise MeterError when it lies outside its wrap range."""
    value_uj = _read_int(domain.energy_path)
    if not 0 <= value_uj <= domain.max_energy_range_uj:
        raise MeterError(
            f"RAPL counter {domain.energy_path} reads {value_uj} µJ, outside its range "
            f"0..{domain.max_energy_range_uj} µJ from max_energy_range_uj; the zone's files "
            "disagree, so its energy cannot be computed"
        )
    return value_uj


def _make_domain(zone: Path, label: str, is_package: bool = True) -> RaplDomain:
    energy_path = zone / "energy_uj"
    if not energy_path.exists():
        raise MeterError(f"RAPL zone {zone} has no energy_uj file")
    range_path = zone / "max_energy_range_uj"
    if not range_path.exists():
        raise MeterError(
            f"RAPL zone {zone} has no max_energy_range_uj file, so a counter wrap cannot be "
            "told from a reset"
        )
    max_energy_range_uj = _read_int(range_path)
    if max_energy_range_uj <= 0:
        raise MeterError(
            f"RAPL file {range_path} reads {max_energy_range_uj}, but a counter's wrap range "
            "must be positive, so this zone's energy cannot be computed"
        )
    return RaplDomain(label, energy_path, max_energy_range_uj, is_package)


def _optional_domain(zone: Path, label: str, skipped: list[str]) -> RaplDomain | None:
    """Make a DRAM domain and read it once; on failure note why in ``skipped`` and return None."""
    try:
        domain = _make_domain(zone, label, is_package=False)
        read_counter_uj(domain)
    except MeterError as error:
        skipped.append(f"{label} skipped: {error}")
        return None
    return domain


def _package_domains(
    zone: Path, package_name: str, include_dram: bool, skipped: list[str]
) -> list[RaplDomain]:
    domains = [_make_domain(zone, package_name)]
    if not include_dram:
        return domains
    for sub in _list_dir(zone):
        if not _SUBZONE_DIR.match(sub.name):
            continue
        try:
            sub_name = _read_name(sub)
        except MeterError as error:
            skipped.append(f"subzone {sub} skipped: {error}")
            continue
        if sub_name == "dram":
            domain = _optional_domain(sub, f"{package_name}/dram", skipped)
            if domain is not None:
                domains.append(domain)
    return domains


def _check_root(root: Path) -> None:
    if root.is_dir():
        return
    where = (
        f"Set {POWERCAP_ROOT_ENV} or the rapl meter's root option to the folder that contains "
        f"the intel-rapl:N zones (normally {DEFAULT_POWERCAP_ROOT}), or choose another meter."
    )
    if root.exists():
        kind = "a file" if root.is_file() else "not a folder"
        raise MeterError(f"powercap root {root} is {kind}, not a folder. {where}")
    raise MeterError(
        f"powercap directory {root} not found: this kernel or machine exposes no RAPL "
        f"(virtual machines and containers usually do not). {where}"
    )


def discover_domains(root: Path, include_dram: bool = True) -> tuple[list[RaplDomain], list[str]]:
    """List the package and DRAM domains under ``root``, and the DRAM zones left out and why.

    Raise MeterError when there is no usable package domain. A DRAM zone that cannot be read
    is left out instead, so that the package figure is still measured.
    """
    _check_root(root)
    domains: list[RaplDomain] = []
    skipped: list[str] = []
    for zone in _list_dir(root):
        if not _ZONE_DIR.match(zone.name):
            continue
        name = _read_name(zone)
        if name.startswith("package"):
            domains.extend(_package_domains(zone, name, include_dram, skipped))
        elif name == "dram" and include_dram:
            # Some server platforms expose DRAM as a top-level zone instead of a subzone.
            domain = _optional_domain(zone, f"dram-{zone.name.split(':')[1]}", skipped)
            if domain is not None:
                domains.append(domain)
    if not any(domain.is_package for domain in domains):
        raise MeterError(
            f"no RAPL package domain under {root}: no intel-rapl:N directory has a name file "
            "starting with 'package'. Check that the intel_rapl_msr module is loaded."
        )
    return domains, skipped


def counter_delta_uj(start_uj: int, end_uj: int, max_energy_range_uj: int) -> int:
    """Return the energy between two counter readings, taking a decrease as one wrap-around.

    ``window_delta_uj`` decides whether one wrap is plausible; this is only the arithmetic.
    """
    delta_uj = end_uj - start_uj
    if delta_uj < 0:
        delta_uj += max_energy_range_uj
    return delta_uj


def window_delta_uj(
    domain: RaplDomain,
    start_uj: int,
    end_uj: int,
    max_elapsed_s: float,
    max_power_w: float = MAX_DOMAIN_POWER_W,
) -> int:
    """Return a domain's energy over a window in µJ, or raise MeterError when it is implausible.

    ``max_elapsed_s`` is the longest time that can lie between the two readings. The delta,
    wrap included, must fit ``max_power_w`` over that time. The window must also be too short
    for a second wrap at that power, because a second wrap cannot be seen in the readings.
    """
    delta_uj = counter_delta_uj(start_uj, end_uj, domain.max_energy_range_uj)
    bound_uj = max_power_w * (max_elapsed_s + _TIMING_SLACK_S) * _UJ_PER_J
    counter = f"RAPL counter {domain.label} ({domain.energy_path})"
    readings = f"{start_uj} µJ then {end_uj} µJ over {max_elapsed_s:.3f} s"
    ceiling = f"the {max_power_w:g} W ceiling (the rapl meter's max_domain_power_w option)"
    mean_power_w = delta_uj / _UJ_PER_J / max(max_elapsed_s, 1e-9)

    if delta_uj > bound_uj and end_uj < start_uj:
        raise MeterError(
            f"{counter} went backwards ({readings}). Taken as a wrap at max_energy_range_uj="
            f"{domain.max_energy_range_uj} it would mean {delta_uj / _UJ_PER_J:.1f} J, "
            f"{mean_power_w:.0f} W on average, above {ceiling}. So the counter was reset "
            "(driver reload, suspend and resume) or its range file is wrong, and this window "
            "has no energy figure."
        )
    if delta_uj > bound_uj:
        raise MeterError(
            f"{counter} advanced {delta_uj / _UJ_PER_J:.1f} J ({readings}), {mean_power_w:.0f} W "
            f"on average, above {ceiling}. The counter jumped, so this window has no energy "
            "figure."
        )
    if delta_uj + domain.max_energy_range_uj <= bound_uj:
        range_j = domain.max_energy_range_uj / _UJ_PER_J
        raise MeterError(
            f"{counter} may have wrapped more than once in a {max_elapsed_s:.3f} s window: its "
            f"range of {range_j:g} J lasts {range_j / max_power_w:.3g} s at {ceiling}, so the "
            "window's energy is ambiguous. Use shorter windows (measurement.min_window_s and "
            "idle_s), or lower max_domain_power_w to this CPU's maximum power."
        )
    return delta_uj


@dataclass(frozen=True)
class _Snapshot:
    """Counter values of every domain, with clock readings taken just before and after them."""

    before_s: float
    after_s: float
    values_uj: list[int]


class RaplMeter(EnergyMeter):
    """Package (and DRAM) energy from RAPL counters in the powercap sysfs tree."""

    name = "rapl"
    method = "measured-rapl"
    option_specs = {
        "root": OptionSpec(
            PATH,
            f"powercap folder with the intel-rapl:N zones (default ${POWERCAP_ROOT_ENV}, "
            f"else {DEFAULT_POWERCAP_ROOT})",
            nullable=True,
        ),
        "include_dram": OptionSpec(BOOLEAN, "add the DRAM domains to the package figure"),
        "max_domain_power_w": OptionSpec(
            POSITIVE_NUMBER,
            "highest plausible average power of one RAPL domain, in W; it bounds wrap detection",
        ),
    }

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        include_dram: bool = True,
        max_domain_power_w: float = MAX_DOMAIN_POWER_W,
        clock: Callable[[], float] = time.perf_counter,
    ):
        """``clock`` times the windows; tests pass a fake one."""
        self.root = powercap_root(root)
        self.include_dram = include_dram
        self.max_domain_power_w = max_domain_power_w
        self._clock = clock
        self._domains: list[RaplDomain] | None = None
        self._stalled_warned: set[str] = set()

    def probe(self) -> Availability:
        try:
            domains, skipped = discover_domains(self.root, self.include_dram)
            for domain in domains:
                read_counter_uj(domain)
        except MeterError as error:
            return Availability(False, str(error))
        labels = ", ".join(domain.label for domain in domains)
        reason = f"RAPL counters readable under {self.root}: {labels}"
        if skipped:
            reason += f" ({'; '.join(skipped)})"
        return Availability(True, reason)

    def _get_domains(self) -> list[RaplDomain]:
        if self._domains is None:
            self._domains, skipped = discover_domains(self.root, self.include_dram)
            for reason in skipped:
                logger.warning("RAPL figures leave out a zone: %s", reason)
            logger.info("RAPL domains: %s", ", ".join(d.label for d in self._domains))
        return self._domains

    def _snapshot(self) -> _Snapshot:
        domains = self._get_domains()
        before_s = self._clock()
        values_uj = [read_counter_uj(domain) for domain in domains]
        return _Snapshot(before_s, self._clock(), values_uj)

    def begin(self) -> _Snapshot:
        return self._snapshot()

    def end(self, token: _Snapshot) -> EnergyReading:
        end = self._snapshot()
        min_elapsed_s = end.before_s - token.after_s
        max_elapsed_s = end.after_s - token.before_s
        domains_j = {}
        for domain, start_uj, end_uj in zip(self._get_domains(), token.values_uj, end.values_uj):
            if start_uj == end_uj and min_elapsed_s >= STALLED_WINDOW_S:
                self._handle_stalled(domain, start_uj, min_elapsed_s)
                continue
            delta_uj = window_delta_uj(
                domain, start_uj, end_uj, max_elapsed_s, self.max_domain_power_w
            )
            domains_j[domain.label] = delta_uj / _UJ_PER_J
        duration_s = (end.before_s + end.after_s) / 2 - (token.before_s + token.after_s) / 2
        return EnergyReading(
            energy_j=sum(domains_j.values()),
            duration_s=duration_s,
            method=self.method,
            domains_j=domains_j,
        )

    def _handle_stalled(self, domain: RaplDomain, value_uj: int, elapsed_s: float) -> None:
        """Raise MeterError for a frozen package counter; warn once for a frozen DRAM one."""
        frozen = (
            f"RAPL counter {domain.label} ({domain.energy_path}) stayed at {value_uj} µJ for "
            f"{elapsed_s:.3f} s, but a live counter advances about every millisecond"
        )
        if domain.is_package:
            raise MeterError(
                f"{frozen}. The counter is frozen (a stale or copied powercap tree, or a "
                "virtual machine that passes RAPL through without updating it), so this "
                "window has no energy figure."
            )
        if domain.label not in self._stalled_warned:
            self._stalled_warned.add(domain.label)
            logger.warning("%s; its energy is left out of the RAPL figures", frozen)
