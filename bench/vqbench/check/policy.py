"""Gate policy: the reference variant, the gated figures with their limits, and the defaults.

``NOISY_METRICS`` lists the metrics that a noisy gate may name and where the samples of each
come from. ``load_policy`` reads a YAML policy file with the scenario files' loader and number
rules, and a field that the file leaves out keeps its default.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from vqbench.errors import DataError
from vqbench.results import ResultRow
from vqbench.scenario import _TYPE_FIXES, UniqueKeyLoader, WholeNumber, _Strict, describe_yaml_error


#: Noisy metric -> (where its samples come from, the sample source, the row's scalar fallback).
NOISY_METRICS: dict[str, tuple[str, str, str]] = {
    "edge_energy_j_per_inference": ("repeats", "edge_energy_j_per_inference_repeats", "edge_energy_j_per_inference"),
    "cloud_energy_j_per_inference": (
        "repeats", "cloud_energy_j_per_inference_repeats", "cloud_energy_j_per_inference",
    ),
    "edge_latency_ms": ("latency", "edge", "edge_latency_ms_p50"),
    "cloud_latency_ms": ("latency", "cloud", "cloud_latency_ms_p50"),
    "transfer_latency_ms": ("latency", "transfer", "transfer_latency_ms_p50"),
    "end_to_end_latency_ms": ("latency", "end_to_end", "end_to_end_latency_ms_p50"),
}
_ENERGY_METHOD_FIELDS = {
    "edge_energy_j_per_inference": "edge_energy_method",
    "cloud_energy_j_per_inference": "cloud_energy_method",
}


def _is_number_type(annotation: object) -> bool:
    """Return True for ``int`` and ``float``, optionally nullable; False for bool, str and lists."""
    if typing.get_origin(annotation) is typing.Union:
        kinds = {kind for kind in typing.get_args(annotation) if kind is not type(None)}
    else:
        kinds = {annotation}
    return all(kind in (int, float) for kind in kinds)


#: The results columns that hold one number (or null), in results.csv order: the columns that a
#: deterministic gate can compare.
NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    name for name, field in ResultRow.model_fields.items() if _is_number_type(field.annotation)
)


#: A number in a policy: a float or an int, finite. Booleans and text are refused rather than
#: read as 1, 0 or a parsed number, and an infinite limit or floor, which would turn a gate off
#: without a word, is refused too.
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ReferenceSpec(_Strict):
    """The pipeline variant that noisy figures are divided by."""

    pipeline: str = "cloud-raw"
    variant: str = "original"


class DeterministicGate(_Strict):
    """A machine-independent figure compared directly with the baseline.

    The allowed change in the worse direction is the larger of ``relative_tolerance`` times the
    baseline value and ``absolute_tolerance``.
    """

    metric: str
    direction: Literal["smaller_is_better", "larger_is_better"] = "smaller_is_better"
    relative_tolerance: FiniteNumber | None = Field(default=None, ge=0)
    absolute_tolerance: FiniteNumber | None = Field(default=None, ge=0)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in ResultRow.model_fields:
            raise ValueError(f"unknown results column {metric!r}; use a numeric column of results.csv "
                             f"({', '.join(NUMERIC_COLUMNS)})")
        if metric not in NUMERIC_COLUMNS:
            raise ValueError(f"results column {metric!r} is not numeric, so a gate cannot compare it with a "
                             f"tolerance; use a numeric column of results.csv ({', '.join(NUMERIC_COLUMNS)})")
        return metric


#: Default floors of a noisy gate: a ratio change worth less than this in the figure's own unit
#: is treated as timer and meter noise. Cloud-raw's edge half only frames the bytes, about
#: 0.02 ms and 20 uJ, and its energy moved 1.8x between two quiet runs of the same code.
DEFAULT_MIN_CHANGE_J = 1e-3
DEFAULT_MIN_CHANGE_MS = 0.1


def metric_unit(metric: str) -> Literal["J", "ms"]:
    """Return the unit of a noisy metric, read from its name."""
    return "ms" if metric.endswith("_ms") else "J"


class NoisyGate(_Strict):
    """A machine-dependent figure gated as a ratio to the reference's ``reference_metric``.

    A ratio change past ``max_ratio_growth`` still passes when, applied to the baseline's own
    median figure, it moves that figure by less than the floor in the figure's unit:
    ``min_change_j`` for energy metrics, ``min_change_ms`` for latency metrics. Left out, the
    floor is ``DEFAULT_MIN_CHANGE_J`` or ``DEFAULT_MIN_CHANGE_MS``; 0 turns it off.
    """

    metric: str
    reference_metric: str
    max_ratio_growth: FiniteNumber = Field(default=1.2, gt=1.0)
    min_change_j: FiniteNumber | None = Field(default=None, ge=0)
    min_change_ms: FiniteNumber | None = Field(default=None, ge=0)

    @field_validator("metric", "reference_metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in NOISY_METRICS:
            raise ValueError(f"unknown noisy metric {metric!r}; choose one of {sorted(NOISY_METRICS)}")
        return metric

    @model_validator(mode="after")
    def _floor_in_metric_unit(self) -> NoisyGate:
        unit = metric_unit(self.metric)
        wrong, right = ("min_change_j", "min_change_ms") if unit == "ms" else ("min_change_ms", "min_change_j")
        if getattr(self, wrong) is not None:
            raise ValueError(f"{self.metric} is in {unit}, so its floor is {right}, not {wrong}")
        if getattr(self, right) is None:
            setattr(self, right, DEFAULT_MIN_CHANGE_MS if unit == "ms" else DEFAULT_MIN_CHANGE_J)
        return self

    @property
    def min_change(self) -> float:
        """The floor in the metric's own unit (see ``metric_unit``)."""
        value = self.min_change_ms if metric_unit(self.metric) == "ms" else self.min_change_j
        return float(value or 0.0)


def _default_deterministic() -> list[DeterministicGate]:
    byte_like = (
        "payload_bytes_mean", "payload_bytes_p95", "edge_params", "cloud_params", "edge_macs",
        "cloud_macs", "edge_model_bytes", "cloud_model_bytes",
    )
    gates = [DeterministicGate(metric=m, relative_tolerance=0.01) for m in byte_like]
    gates.append(DeterministicGate(metric="lfw_accuracy_mean", direction="larger_is_better", absolute_tolerance=0.002))
    return gates


#: Default growth limits: per-sample latency ratios move more under machine load than energy ratios.
DEFAULT_ENERGY_RATIO_GROWTH = 1.2
DEFAULT_LATENCY_RATIO_GROWTH = 1.5
#: Edge devices whose figures are measured on the host running the benchmark.
HOST_DEVICES = (None, "", "host")
#: Relative tolerance for a modeled device's edge energy, which the profile fixes.
MODELED_ENERGY_TOLERANCE = 0.01
#: The figure gated directly on modeled-device rows whose edge time comes from the profile's MAC rate.
MODELED_EDGE_ENERGY_METRIC = "edge_energy_j_per_inference"


def _default_noisy() -> list[NoisyGate]:
    energy, latency = DEFAULT_ENERGY_RATIO_GROWTH, DEFAULT_LATENCY_RATIO_GROWTH
    return [
        NoisyGate(metric="edge_energy_j_per_inference", reference_metric="cloud_energy_j_per_inference",
                  max_ratio_growth=energy),
        NoisyGate(metric="cloud_energy_j_per_inference", reference_metric="cloud_energy_j_per_inference",
                  max_ratio_growth=energy),
        NoisyGate(metric="edge_latency_ms", reference_metric="cloud_latency_ms", max_ratio_growth=latency),
        NoisyGate(metric="cloud_latency_ms", reference_metric="cloud_latency_ms", max_ratio_growth=latency),
    ]


class CheckPolicy(_Strict):
    """Gate policy: the reference, the test level and the gated figures. Every field has a default."""

    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    p_value_threshold: FiniteNumber = Field(default=0.05, gt=0.0, lt=1.0)
    #: Per-sample latencies are thinned to this many evenly spaced quantiles before the test.
    max_samples: WholeNumber = Field(default=256, ge=2)
    deterministic: list[DeterministicGate] = Field(default_factory=_default_deterministic)
    noisy: list[NoisyGate] = Field(default_factory=_default_noisy)
    #: What noisy gates do when either run was timed with a load average above its CPU count:
    #: ``inconclusive`` reports them as neither passed nor failed, ``gate`` judges them anyway.
    on_busy_host: Literal["inconclusive", "gate"] = "inconclusive"
    #: What a noisy gate does when the reference's own median moved past the gate's growth limit
    #: and the gated figure's did not: ``inconclusive`` reports the verdict as neither passed nor
    #: failed, ``gate`` judges the ratio anyway.
    on_reference_drift: Literal["inconclusive", "gate"] = "inconclusive"

    @field_validator("deterministic")
    @classmethod
    def _one_deterministic_gate_per_metric(cls, gates: list[DeterministicGate]) -> list[DeterministicGate]:
        for metric in _repeated([gate.metric for gate in gates]):
            directions = sorted({gate.direction for gate in gates if gate.metric == metric})
            conflict = ("in both directions, which contradict each other" if len(directions) > 1
                        else "more than once, so it is unclear which tolerance applies")
            raise ValueError(f"metric {metric!r} is gated {conflict}; keep one deterministic gate per metric")
        return gates

    @field_validator("noisy")
    @classmethod
    def _one_noisy_gate_per_metric(cls, gates: list[NoisyGate]) -> list[NoisyGate]:
        for metric in _repeated([gate.metric for gate in gates]):
            raise ValueError(f"noisy metric {metric!r} is gated more than once, so it is unclear which reference "
                             "and growth limit apply; keep one noisy gate per metric")
        return gates


def _repeated(names: list[str]) -> list[str]:
    """Return the names that occur more than once in ``names``, each once, in order of first occurrence."""
    return [name for name in dict.fromkeys(names) if names.count(name) > 1]


def load_policy(policy_file: Path | None) -> CheckPolicy:
    """Read a YAML policy, or return the built-in default when ``policy_file`` is None.

    The file is read as scenario files are: YAML 1.2 plain scalars (``1e-2`` is a number, ``off``
    is text), a key given twice is an error, and numbers are strict (``true`` and ``"2"`` are
    rejected, ``2.0`` is a whole number). An empty file gives the defaults.
    """
    if policy_file is None:
        return CheckPolicy()
    path = Path(policy_file)
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise DataError(f"policy file {path} could not be read ({error}); check the path") from error
    except UnicodeDecodeError as error:
        raise DataError(
            f"policy file {path} is not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start} "
            "cannot be decoded; save the file as UTF-8"
        ) from error
    except yaml.YAMLError as error:
        raise DataError(f"policy file {path} is not valid YAML: {describe_yaml_error(error)}; fix its syntax") from error

    if content is None:
        return CheckPolicy()
    if not isinstance(content, dict):
        raise DataError(
            f"policy file {path} contains a YAML {_yaml_kind(content)}, but a policy is a mapping of policy keys to "
            f"values ({', '.join(CheckPolicy.model_fields)}); write one 'key: value' line per setting"
        )
    try:
        return CheckPolicy.model_validate(content)
    except ValidationError as error:
        raise DataError(f"policy file {path} is invalid: {_first_error(error)}{_policy_fix(error)}") from error


#: Fixes of the policy problems that the scenario module's type fixes do not cover.
_POLICY_FIXES = {
    "extra_forbidden": "remove that key or correct its spelling",
    "missing": "add that key",
}


def _policy_fix(error: ValidationError) -> str:
    """Return "; " and the fix of the first problem, or "" when the validators of this module put it in the message."""
    problem_type = error.errors()[0]["type"]
    if problem_type == "value_error":
        return ""
    return "; " + _TYPE_FIXES.get(problem_type, _POLICY_FIXES.get(problem_type, "correct that value"))


def _yaml_kind(value: object) -> str:
    """Name the YAML node kind of a value that is not a mapping: list, or scalar with the value."""
    if isinstance(value, list):
        return "list"
    return f"scalar ({value!r})"


def _first_error(error: ValidationError) -> str:
    """Describe the first problem of ``error`` as ``message at 'key.path' (got value)``.

    The value is left out for a missing key, for a mapping or list (too long for one line), and
    where a validator of this package already put it in the message.
    """
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    text = f"{first['msg']} at '{location}'"
    value = first.get("input")
    in_message = first["type"] == "value_error" and repr(value) in first["msg"]
    omit_value = first["type"] == "missing" or isinstance(value, (dict, list)) or in_message
    if not omit_value:
        text += f" (got {value!r})"
    return text
