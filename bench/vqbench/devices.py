"""Edge device profiles and the device model: time and energy of a stage on a device.

Most edge devices (Raspberry Pi, Jetson, phones) have no energy counter that a library can
read, so vqbench models a stage on them from the profiles in ``data_files/devices.yaml``:

- time on the device comes from the stage's MACs divided by the device's sustained MAC rate
  (basis ``"macs"``), or from the time on the host multiplied by a speed ratio
  (``speed_ratio`` = device time / host time, basis ``"speed-ratio"``);
- energy is the device's active power over that time. The dynamic share is
  ``(active - idle) x time``.

Every figure from this module carries the method ``modeled-device-profile``. The ``host``
profile has no constants: the host is measured with a meter, and modeling it raises
``ScenarioError``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from importlib import resources

import yaml

from vqbench.errors import ScenarioError

logger = logging.getLogger(__name__)

METHOD = "modeled-device-profile"
_DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class FigureSource:
    """Source and year of one profile number."""

    source: str
    year: int


#: Minimum faces a day over which a device's embodied CO2e is spread. Fewer would give each
#: face a share beyond any real deployment's, and values near 0 an infinite one.
MIN_INFERENCES_PER_DAY = 0.001


@dataclass(frozen=True)
class DeviceProfile:
    """Power, speed and embodied carbon of one device; ``measured`` profiles have no numbers."""

    name: str
    description: str
    measured: bool = False
    idle_power_w: float | None = None
    active_power_w: float | None = None
    sustained_macs_per_s: float | None = None
    embodied_kgco2e: float | None = None
    lifetime_years: float | None = None
    inferences_per_day: float | None = None
    sources: dict[str, FigureSource] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceStageCost:
    """Modeled time and energy of one inference of a stage on a device."""

    time_s: float
    energy_j: float
    method: str = METHOD
    basis: str = "macs"
    dynamic_energy_j: float = 0.0


_NUMERIC_FIELDS = (
    "idle_power_w",
    "active_power_w",
    "sustained_macs_per_s",
    "embodied_kgco2e",
    "lifetime_years",
    "inferences_per_day",
)


def _parse_profile(name: str, entry: dict) -> DeviceProfile:
    if entry.get("measured", False):
        return DeviceProfile(name, entry.get("description", ""), measured=True)
    missing = [key for key in _NUMERIC_FIELDS if key not in entry or key not in entry["sources"]]
    if missing:
        raise ScenarioError(f"device profile {name!r} lacks a value or source for {missing}")
    sources = {key: FigureSource(**value) for key, value in entry["sources"].items()}
    numbers = {key: float(entry[key]) for key in _NUMERIC_FIELDS}
    return DeviceProfile(name, entry.get("description", ""), sources=sources, **numbers)


@functools.cache
def load_device_profiles() -> dict[str, DeviceProfile]:
    """Read the bundled device profiles, keyed by name."""
    text = resources.files("vqbench").joinpath("data_files/devices.yaml").read_text()
    devices = yaml.safe_load(text)["devices"]
    return {name: _parse_profile(name, entry) for name, entry in devices.items()}


def get_device_profile(name: str) -> DeviceProfile:
    """Return a bundled profile; raise ScenarioError listing valid names for an unknown one."""
    profiles = load_device_profiles()
    if name not in profiles:
        raise ScenarioError(f"unknown device {name!r}; valid devices: {', '.join(profiles)}")
    return profiles[name]


def _modeled(profile: DeviceProfile) -> DeviceProfile:
    if profile.measured:
        raise ScenarioError(
            f"device {profile.name!r} is measured with an energy meter, not modeled; choose an "
            "edge device profile or a meter"
        )
    return profile


def model_stage_on_device(
    profile: DeviceProfile,
    host_time_s: float,
    macs: int | None,
    speed_ratio: float | None,
) -> DeviceStageCost:
    """Model one inference of a stage on ``profile``.

    MACs take precedence when given, because they do not depend on the host's speed.
    Otherwise ``speed_ratio`` (device time / host time) scales the measured host time. A
    scenario's ``speed_ratio`` is a measurement on the device, so ``vqbench.deployment`` passes
    no MACs when the scenario gives one.
    """
    profile = _modeled(profile)
    if macs is not None:
        if macs < 0:
            raise ScenarioError(f"macs must be >= 0, got {macs}")
        time_s = macs / profile.sustained_macs_per_s
        basis = "macs"
    elif speed_ratio is not None:
        if speed_ratio <= 0 or host_time_s < 0:
            raise ScenarioError(
                f"speed_ratio must be > 0 and host_time_s >= 0, got {speed_ratio}, {host_time_s}"
            )
        time_s = host_time_s * speed_ratio
        basis = "speed-ratio"
    else:
        raise ScenarioError(
            f"modeling a stage on {profile.name!r} needs its MACs or a speed_ratio "
            "(device time / host time); give one of them"
        )
    return DeviceStageCost(
        time_s=time_s,
        energy_j=profile.active_power_w * time_s,
        basis=basis,
        dynamic_energy_j=(profile.active_power_w - profile.idle_power_w) * time_s,
    )


def embodied_co2e_g_per_inference(
    profile: DeviceProfile, inferences_per_day: float | None = None
) -> float:
    """Share of the device's embodied CO2e per inference, spread over its lifetime."""
    profile = _modeled(profile)
    per_day = profile.inferences_per_day if inferences_per_day is None else inferences_per_day
    if not per_day >= MIN_INFERENCES_PER_DAY:
        raise ScenarioError(f"inferences_per_day must be at least {MIN_INFERENCES_PER_DAY:g} (one face every "
                            f"{1 / MIN_INFERENCES_PER_DAY:g} days), got {per_day}")
    lifetime_inferences = profile.lifetime_years * _DAYS_PER_YEAR * per_day
    return profile.embodied_kgco2e * 1000.0 / lifetime_inferences
