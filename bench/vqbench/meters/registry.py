"""The meter registry: names used in scenario files, mapped to meter classes.

``create_meter("rapl", root=...)`` builds a meter from its name and options;
``probe_all()`` reports to ``vqbench env`` which meters work here and why the others do not.
``check_meter_options(name, options)`` checks one meter's options without building or reading
anything; ``create_meter`` calls it, so a run rejects a bad option before it measures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from vqbench.errors import ScenarioError
from vqbench.meters.base import Availability, EnergyMeter
from vqbench.meters.codecarbon_meter import CodecarbonMeter
from vqbench.meters.external import ExternalTraceMeter
from vqbench.meters.model import DeviceModelMeter
from vqbench.meters.nvml import NvmlMeter
from vqbench.meters.options import OptionSpec, describe_value
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


def _meter_class(name: str) -> type[EnergyMeter]:
    if name not in METERS:
        raise ScenarioError(f"unknown meter {name!r}; valid meters: {', '.join(sorted(METERS))}")
    return METERS[name]


def check_meter_options(name: str, options: Mapping[str, Any]) -> None:
    """Check one meter's name and options against its ``option_specs``; raise ScenarioError.

    The error names the meter, the option, the value and the expected kind of value, for an
    unknown meter, an unknown option, a missing required option or a value of the wrong kind.
    Nothing is built or read, so this is cheap enough to call before a run starts.
    """
    meter_class = _meter_class(name)
    specs = meter_class.option_specs
    valid = ", ".join(specs) if specs else "none"
    for option, value in options.items():
        if option not in specs:
            raise ScenarioError(
                f"unknown option {option!r} for meter {name!r}; valid options: {valid}"
            )
        spec = specs[option]
        if not spec.accepts(value):
            raise ScenarioError(
                f"meter {name!r} option {option}: expected a {spec.kind} "
                f"({spec.description}), got {describe_value(value)}"
                + ("" if spec.settable_in_scenario else _NOT_FROM_SCENARIO.format(name=name))
            )
    for option, spec in specs.items():
        if spec.required and option not in options:
            raise ScenarioError(_missing_option_message(name, option, spec))
    meter_class.check_options(options)


# Appended to an error about an option that only Python code can set.
_NOT_FROM_SCENARIO = (
    "; a scenario file cannot give a {name!r} meter a Python function, so remove {name!r} "
    "from meters.host"
)


def _missing_option_message(name: str, option: str, spec: OptionSpec) -> str:
    if not spec.settable_in_scenario:
        return (
            f"meter {name!r} cannot run from a scenario file: its option {option!r} must be a "
            f"Python {spec.kind} ({spec.description}); remove {name!r} from meters.host"
        )
    return (
        f"meter {name!r} needs option {option!r} ({spec.kind}: {spec.description}); "
        f"set it under meters.options.{name}"
    )


def create_meter(name: str, **options: Any) -> EnergyMeter:
    """Build the meter registered as ``name`` from options checked by ``check_meter_options``.

    A constructor may check its input too: the external meter reads its whole trace and raises
    MeterError for a malformed one, so that mistake also stops a run before it measures.
    """
    check_meter_options(name, options)
    return METERS[name](**options)


def _required_options_reason(meter_class: type[EnergyMeter]) -> str | None:
    """Return why a meter cannot be probed without options, or None when it can."""
    required = [
        f"needs option {option}: {spec.description}"
        for option, spec in meter_class.option_specs.items()
        if spec.required
    ]
    return "; ".join(required) if required else None


def probe_all() -> dict[str, Availability]:
    """Probe every registered meter with its default options."""
    results = {}
    for name, meter_class in METERS.items():
        needs_options = _required_options_reason(meter_class)
        if needs_options is not None:
            results[name] = Availability(False, needs_options)
            continue
        meter = create_meter(name)
        try:
            results[name] = meter.probe()
        finally:
            meter.close()
        logger.debug("meter %s: %s", name, results[name])
    return results
