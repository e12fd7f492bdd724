"""The results schema: one row per pipeline variant (and per link and edge device).

Every quantity carries its unit in its name. Energy figures come with a ``*_method`` column
(``measured-rapl``, ``estimated-codecarbon``, ``modeled-device-profile``, ...). A figure that
could not be obtained is ``None`` and the reason is in ``warnings``; it is never 0.

``results_problem`` applies the rules that the schema's types cannot express: the range of each
figure, and one row per (pipeline, variant, link, edge device).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

RESULTS_SCHEMA_VERSION = 1


class ResultRow(BaseModel):
    """One measured pipeline variant."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    variant: str
    n_pairs: int
    n_pairs_skipped: int = 0
    folds: list[int] = Field(default_factory=list)

    lfw_accuracy_mean: Optional[float] = None
    lfw_accuracy_std: Optional[float] = None
    tar_at_far_1e_3: Optional[float] = None
    roc_auc: Optional[float] = None
    eer: Optional[float] = None

    payload_bytes_mean: Optional[float] = None
    payload_bytes_p95: Optional[float] = None

    edge_latency_ms_p50: Optional[float] = None
    edge_latency_ms_p95: Optional[float] = None
    cloud_latency_ms_p50: Optional[float] = None
    cloud_latency_ms_p95: Optional[float] = None
    transfer_latency_ms_p50: Optional[float] = None
    transfer_latency_ms_p95: Optional[float] = None
    #: "modeled-link" (a link profile's model, used end to end) or "measured-http" (the requests timed).
    transfer_latency_basis: Optional[str] = None
    transfer_latency_ms_p50_measured: Optional[float] = None
    transfer_latency_ms_p95_measured: Optional[float] = None
    end_to_end_latency_ms_p50: Optional[float] = None
    end_to_end_latency_ms_p95: Optional[float] = None
    end_to_end_latency_ms_p99: Optional[float] = None

    edge_peak_rss_bytes: Optional[int] = None
    cloud_peak_rss_bytes: Optional[int] = None
    edge_model_bytes: Optional[int] = None
    cloud_model_bytes: Optional[int] = None
    edge_params: Optional[int] = None
    cloud_params: Optional[int] = None
    edge_macs: Optional[int] = None
    cloud_macs: Optional[int] = None
    codebook_size: Optional[int] = None
    code_grid: Optional[str] = None

    edge_energy_j_per_inference: Optional[float] = None
    edge_energy_method: Optional[str] = None
    edge_energy_ci95_j: Optional[float] = None
    edge_dynamic_energy_j_per_inference: Optional[float] = None
    edge_energy_j_per_inference_repeats: list[float] = Field(default_factory=list)
    cloud_energy_j_per_inference: Optional[float] = None
    cloud_energy_method: Optional[str] = None
    cloud_energy_ci95_j: Optional[float] = None
    cloud_dynamic_energy_j_per_inference: Optional[float] = None
    cloud_energy_j_per_inference_repeats: list[float] = Field(default_factory=list)
    network_energy_j_per_inference: Optional[float] = None
    network_energy_method: Optional[str] = None
    # Of the network energy, the part beyond the radio (transit), at the link's factor and at
    # the lowest and highest published factor (vqbench.network.links.TRANSIT_KWH_PER_GB_REFERENCES).
    network_transit_energy_j_per_inference: Optional[float] = None
    network_transit_energy_j_per_inference_min: Optional[float] = None
    network_transit_energy_j_per_inference_max: Optional[float] = None
    total_energy_j_per_inference: Optional[float] = None

    co2e_g_per_inference: Optional[float] = None
    embodied_co2e_g_per_inference: Optional[float] = None
    grid_intensity_edge_gco2e_per_kwh: Optional[float] = None
    grid_intensity_cloud_gco2e_per_kwh: Optional[float] = None

    wire_bytes_up_mean: Optional[float] = None
    wire_bytes_down_mean: Optional[float] = None
    wire_payload_bytes_up_mean: Optional[float] = None
    wire_overhead_bytes_up_mean: Optional[float] = None
    transport: str = "local"

    link: Optional[str] = None
    link_feasible: Optional[bool] = None
    link_infeasible_reason: Optional[str] = None
    edge_device: Optional[str] = None
    edge_time_basis: Optional[str] = None
    detection_fallbacks: int = 0


class RunResults(BaseModel):
    """The content of ``results.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = RESULTS_SCHEMA_VERSION
    vqbench_version: str
    scenario_name: str
    scenario_path: str
    created_utc: str
    rows: list[ResultRow]
    warnings: list[str] = Field(default_factory=list)
    assumptions: dict[str, object] = Field(default_factory=dict)
    complete: bool = Field(True, description="False when the run was interrupted before its last variant or a variant failed.")
    variants_missing: list[str] = Field(
        default_factory=list, description="Variants without rows: those that failed and those an interrupted run did not reach."
    )
    variants_failed: list[str] = Field(default_factory=list, description="Variants that failed; the run's warnings give each error.")


#: Column order of results.csv: the schema's field order.
RESULT_COLUMNS: tuple[str, ...] = tuple(ResultRow.model_fields)


# ---------------------------------------------------------------------------------------------
# Value rules that the field types cannot express. The loader of results.json and `vqbench check`
# both apply them, so report, compare and check accept and reject the same files.

#: Figures that may be negative: dynamic energy is the measured energy minus the idle energy, so
#: noise can push it below 0. Every other figure is a count, size, time, energy, CO2e mass, grid
#: intensity or fraction.
MAY_BE_NEGATIVE = frozenset({"edge_dynamic_energy_j_per_inference", "cloud_dynamic_energy_j_per_inference"})
#: Figures that are fractions, so they lie in [0, 1].
FRACTION_METRICS = frozenset({"lfw_accuracy_mean", "lfw_accuracy_std", "tar_at_far_1e_3", "roc_auc", "eer"})
#: Integer fields are stored as int64 in results.csv and in the tables built from them.
_INT64_MAX = 2**63 - 1


def figure_problem(metric: str, value: float) -> str | None:
    """Return why ``value`` cannot be a figure of ``metric``, or None when it can.

    A figure that could not be measured is null in results.json, so NaN and infinity are
    invalid. Only the figures in ``MAY_BE_NEGATIVE`` may be below 0, and fractions may not exceed 1.
    """
    if math.isnan(value):
        return "NaN is not a measurement (a figure that could not be measured is null)"
    if math.isinf(value):
        return "an infinite value is not a measurement"
    if value < 0 and metric not in MAY_BE_NEGATIVE:
        return f"{metric} cannot be negative"
    if value > 1 and metric in FRACTION_METRICS:
        return f"{metric} is a fraction and cannot exceed 1"
    return None


def row_key(row: ResultRow) -> tuple[str, str, str | None, str | None]:
    """Return the (pipeline, variant, link, edge device) that identifies ``row``."""
    return (row.pipeline, row.variant, row.link, row.edge_device)


def describe_row_key(key: tuple[str, str, str | None, str | None]) -> str:
    """Describe a row for an error message: ``pipeline/variant (link wifi, edge device host)``."""
    pipeline, variant, link, device = key
    extras = [f"{name} {part}" for name, part in (("link", link), ("edge device", device)) if part]
    return f"{pipeline}/{variant}" + (f" ({', '.join(extras)})" if extras else "")


def _scalar_problem(name: str, value: object) -> str | None:
    """Return why a scalar field's value is impossible, with the value, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and abs(value) > _INT64_MAX:
        return f"{name} = {value:.3e}, but {name} is too large for a 64-bit integer"
    problem = figure_problem(name, float(value))
    return None if problem is None else f"{name} = {value:g}, but {problem}"


def _list_problem(name: str, values: list[object]) -> str | None:
    """Return why an item of a list field (folds, energy repeats) is impossible, or None."""
    for index, value in enumerate(values):
        if name == "folds" and isinstance(value, int) and value < 1:
            return f"folds[{index}] = {value}, but folds are numbered from 1"
        if name.endswith("_repeats") and isinstance(value, float) and (not math.isfinite(value) or value < 0):
            # The repeats are samples of the figure named without the suffix, as `vqbench check` names them.
            metric = name.removesuffix("_repeats")
            return (f"the {metric} sample {value:g} ({name}[{index}]), but an energy per inference cannot be "
                    "NaN, infinite or negative")
    return None


def row_problem(row: ResultRow) -> str | None:
    """Return the first impossible value of ``row`` as ``field = value, but reason``, or None."""
    for name, value in row.model_dump().items():
        problem = _list_problem(name, value) if isinstance(value, list) else _scalar_problem(name, value)
        if problem is not None:
            return problem
    return _energy_method_problem(row)


#: The fields of a row that name how its energy figures were obtained.
_ENERGY_METHOD_FIELDS = ("edge_energy_method", "cloud_energy_method", "network_energy_method")


@functools.cache
def known_energy_methods() -> frozenset[str]:
    """Return every method label that a meter, a device profile or a link model gives its figures."""
    from vqbench.devices import METHOD as DEVICE_METHOD
    from vqbench.meters.registry import METERS
    from vqbench.network.links import METHOD as LINK_METHOD

    labels = {DEVICE_METHOD, LINK_METHOD}
    for meter_class in METERS.values():
        labels.add(meter_class.method)
        labels.update(label for label in [getattr(meter_class, "sampling_method", None)] if label)
    return frozenset(labels)


def _energy_method_problem(row: ResultRow) -> str | None:
    """Return why an energy figure's method is unknown, or None.

    A null method is allowed: readers show it as not recorded rather than guess one.
    """
    for method_field in _ENERGY_METHOD_FIELDS:
        method = getattr(row, method_field)
        if method is not None and method not in known_energy_methods():
            return (f"{method_field} = {method!r}, but that is no method vqbench writes "
                    f"(known: {', '.join(sorted(known_energy_methods()))})")
    return None


def _non_finite_location(value: object, location: str) -> str | None:
    """Return the location of the first NaN or infinite number inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return location
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        items = [(f"{location}.{key}", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{location}[{index}]", item) for index, item in enumerate(value)]
    for item_location, item in items:
        found = _non_finite_location(item, item_location)
        if found is not None:
            return found
    return None


def results_problem(results: RunResults) -> str | None:
    """Return why ``results`` cannot be the output of a run, or None when it can.

    Checks each row's values against ``figure_problem`` and the fold and repeat rules, that no two
    rows share a ``row_key``, and that ``assumptions`` contains no NaN or infinity
    (a run writes a missing number as null). The reason names the row or the location.
    """
    first_index: dict[tuple[str, str, str | None, str | None], int] = {}
    for index, row in enumerate(results.rows):
        key = row_key(row)
        problem = row_problem(row)
        if problem is not None:
            return f"row {describe_row_key(key)} has {problem}"
        if key in first_index:
            return (f"rows[{first_index[key]}] and rows[{index}] both have the key {describe_row_key(key)}, but a "
                    "run writes one row per pipeline, variant, link and edge device")
        first_index[key] = index
    location = _non_finite_location(results.assumptions, "assumptions")
    if location is not None:
        return f"{location} is NaN or infinite, but a run writes a number it does not have as null"
    return None
