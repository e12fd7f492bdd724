"""A meter that models an edge device's energy from its power profile and the host's time.

Each window is timed on the host, in wall time and in this process's CPU time. The device's
time is the host time multiplied by ``speed_ratio`` (device time / host time), and the busy
fraction is the process's CPU time over wall time, capped at 1:

    energy = device time x (idle_power_w + (active_power_w - idle_power_w) x busy fraction)

So a window spent asleep (the protocol's idle window) is modeled at idle power and a window of
back-to-back single-threaded inferences at active power. For a per-stage figure from MACs,
use ``vqbench.devices.model_stage_on_device`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vqbench.devices import METHOD, DeviceProfile, get_device_profile
from vqbench.errors import ScenarioError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import POSITIVE_NUMBER, STRING, OptionSpec


@dataclass(frozen=True)
class _ModelToken:
    wall_s: float
    cpu_s: float


class DeviceModelMeter(EnergyMeter):
    """Modeled energy of a device profile (``modeled-device-profile``)."""

    name = "model"
    method = METHOD
    option_specs = {
        "device": OptionSpec(STRING, "name of a modeled edge device profile", required=True),
        "speed_ratio": OptionSpec(POSITIVE_NUMBER, "device time / host time for the same work"),
    }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        device = options.get("device")
        if not isinstance(device, str):
            return
        try:
            profile = get_device_profile(device)
        except ScenarioError as error:
            raise ScenarioError(f"meter 'model' option device: {error}") from error
        if profile.measured:
            raise ScenarioError(
                f"meter 'model' option device: {device!r} is measured with a meter, not "
                "modeled; name a modeled edge device profile"
            )

    def __init__(self, device: str | DeviceProfile, speed_ratio: float = 1.0):
        self.profile = get_device_profile(device) if isinstance(device, str) else device
        if speed_ratio <= 0:
            raise ScenarioError(
                f"speed_ratio must be > 0 (device time / host time), got {speed_ratio}"
            )
        self.speed_ratio = speed_ratio

    def probe(self) -> Availability:
        if self.profile.measured:
            return Availability(False, f"device {self.profile.name!r} is measured, not modeled")
        return Availability(
            True,
            f"modeled from the {self.profile.name!r} profile "
            f"({self.profile.idle_power_w} W idle, {self.profile.active_power_w} W active), "
            f"speed_ratio={self.speed_ratio}",
        )

    def begin(self) -> _ModelToken:
        if self.profile.measured:
            raise ScenarioError(
                f"device {self.profile.name!r} is measured with a meter, not modeled"
            )
        return _ModelToken(time.perf_counter(), time.process_time())

    def end(self, token: _ModelToken) -> EnergyReading:
        wall_s = time.perf_counter() - token.wall_s
        cpu_s = time.process_time() - token.cpu_s
        busy_fraction = min(cpu_s / wall_s, 1.0) if wall_s > 0 else 0.0
        device_s = wall_s * self.speed_ratio
        power_w = self.profile.idle_power_w + busy_fraction * (
            self.profile.active_power_w - self.profile.idle_power_w
        )
        return EnergyReading(power_w * device_s, device_s, self.method)
