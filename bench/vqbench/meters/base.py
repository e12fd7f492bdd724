"""The energy-meter interface shared by every meter implementation.

A meter reads a cumulative energy figure for one device (a CPU package, a GPU, a whole board).
The measurement protocol calls ``begin()`` before a window of work and ``end(token)`` after it;
the difference is the energy of that window. A meter that cannot read its counter raises
``MeterError``; it never returns 0 J in place of a reading.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vqbench.meters.options import OptionSpec


@dataclass(frozen=True)
class Availability:
    """Whether a meter can run on this machine, and why not when it cannot."""

    available: bool
    reason: str


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one window, in joules, with the method that produced it."""

    energy_j: float
    duration_s: float
    method: str
    domains_j: dict[str, float] = field(default_factory=dict)


class EnergyMeter(abc.ABC):
    """One source of energy figures; subclasses live one per module in ``vqbench.meters``."""

    #: Registry name used in scenario files, e.g. ``"rapl"``.
    name: str
    #: Label attached to every figure this meter produces, e.g. ``"measured-rapl"``.
    method: str
    #: Constructor options that a scenario's ``meters.options`` may set, checked by the registry.
    option_specs: ClassVar[Mapping[str, OptionSpec]] = {}

    @abc.abstractmethod
    def probe(self) -> Availability:
        """Check, without side effects, whether the meter can be read here."""

    @abc.abstractmethod
    def begin(self) -> Any:
        """Start a window and return an opaque token for ``end``."""

    @abc.abstractmethod
    def end(self, token: Any) -> EnergyReading:
        """Close the window started by ``begin`` and return its energy."""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Check option values beyond their kind (e.g. that a named profile exists).

        The registry calls this after every option has passed its ``option_specs`` kind check;
        raise ScenarioError for a bad value. The default checks nothing more.
        """

    def close(self) -> None:
        """Release resources (threads, library handles); the default has none."""
