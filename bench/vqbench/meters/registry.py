"""The meter registry: names used in scenario files, mapped to meter classes.

``create_meter("rapl", root=...)`` builds a meter from its name and options;
``probe_all()`` reports to ``vqbench env`` which meters work here and why the others do not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from vqbench.errors import ScenarioError
from vqbench.meters.base import Availability, EnergyMeter
from vqbench.meters.codecarbon_meter import CodecarbonMeter
from vqbench.meters.external import ExternalTraceMeter
from vqbench.meters.model import DeviceModelMeter
from vqbench.meters.nvml import NvmlMeter
from vqbench.meters.pyjoules_meter import PyJoulesMeter
from vqbench.meters.rapl import RaplMeter
from vqbench.meters.replay import ReplayMeter

logger = logging.getLogger(__name__)


def build_registry(classes: Iterable[type[EnergyMeter]]) -> dict[str, type[EnergyMeter]]:
    """Map each class's ``name`` to the class; raise ValueError on a duplicate name."""
    registry: dict[str, type[EnergyMeter]] = {}
    for meter_class in classes:
        if meter_class.name in registry:
            raise ValueError(
                f"meter name {meter_class.name!r} is registered twice: "
                f"{registry[meter_class.name].__name__} and {meter_class.__name__}"
            )
        registry[meter_class.name] = meter_class
    return registry


METERS: dict[str, type[EnergyMeter]] = build_registry(
    [
        RaplMeter,
        PyJoulesMeter,
        NvmlMeter,
        CodecarbonMeter,
        ExternalTraceMeter,
        DeviceModelMeter,
        ReplayMeter,
    ]
)

# Meters that cannot be built without options; probe_all reports them instead of building them.
_NEEDS_OPTIONS = {
    "external": "needs trace_path: a CSV trace (timestamp_s, power_w) from a power meter",
    "model": "needs device: an edge device profile name",
    "replay": "test meter: needs a counter or power trace",
}


def create_meter(name: str, **options: object) -> EnergyMeter:
    """Build the meter registered as ``name`` with ``options`` as constructor arguments."""
    if name not in METERS:
        raise ScenarioError(f"unknown meter {name!r}; valid meters: {', '.join(sorted(METERS))}")
    try:
        return METERS[name](**options)
    except TypeError as error:
        raise ScenarioError(
            f"invalid options {sorted(options)} for meter {name!r}: {error}"
        ) from error


def probe_all() -> dict[str, Availability]:
    """Probe every registered meter with its default options."""
    results = {}
    for name in METERS:
        if name in _NEEDS_OPTIONS:
            results[name] = Availability(False, _NEEDS_OPTIONS[name])
            continue
        meter = create_meter(name)
        try:
            results[name] = meter.probe()
        finally:
            meter.close()
        logger.debug("meter %s: %s", name, results[name])
    return results
