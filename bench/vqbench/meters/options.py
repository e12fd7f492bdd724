"""Meter options as a scenario file gives them: declared types, and checks with clear errors.

Each meter class declares the options that a scenario's ``meters.options`` may set in
``option_specs``. The registry checks a meter's options against that declaration before it
builds the meter. A value of the wrong type then fails with the meter, the option, the value
and the expected type, instead of a ``TypeError`` from deep inside a measurement.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The kinds of value an option may take, each with the words that describe it in an error.
NUMBER = "number"
POSITIVE_NUMBER = "positive number"
NON_NEGATIVE_NUMBER = "non-negative number"
BOOLEAN = "boolean"
STRING = "string"
PATH = "path"
INDEX_LIST = "list of non-negative integers"
CALLABLE = "function"


def _is_number(value: Any) -> bool:
    # bool is a subclass of int, but `clock_offset_s: true` is a mistake, not 1 s.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip() != "")


def _is_index_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    return all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value)


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    NUMBER: _is_number,
    POSITIVE_NUMBER: lambda value: _is_number(value) and value > 0,
    NON_NEGATIVE_NUMBER: lambda value: _is_number(value) and value >= 0,
    BOOLEAN: lambda value: isinstance(value, bool),
    STRING: lambda value: isinstance(value, str) and value.strip() != "",
    PATH: _is_path,
    INDEX_LIST: _is_index_list,
    CALLABLE: callable,
}


@dataclass(frozen=True)
class OptionSpec:
    """One constructor option of a meter: its kind of value, and whether a scenario must set it.

    ``nullable`` accepts ``None`` (YAML ``null``) for an option whose default is ``None``.
    ``description`` states what the option sets and in what unit, and errors quote it.
    """

    kind: str
    description: str
    required: bool = False
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CHECKS:
            valid = ", ".join(_KIND_CHECKS)
            raise ValueError(f"unknown option kind {self.kind!r}; valid kinds: {valid}")

    @property
    def settable_in_scenario(self) -> bool:
        """Whether a scenario file can give a value of this kind (YAML has no functions)."""
        return self.kind != CALLABLE

    def accepts(self, value: Any) -> bool:
        """Return whether ``value`` is of this option's kind."""
        if value is None:
            return self.nullable
        return _KIND_CHECKS[self.kind](value)


def describe_value(value: Any) -> str:
    """Return a value and its Python type for an error message, e.g. ``'fast' (str)``."""
    return f"{value!r} ({type(value).__name__})"
