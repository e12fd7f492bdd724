"""Key findings, warnings and the Pareto front, computed from the result rows.

Every sentence here is built from the numbers in the run, and nothing is written in advance.
Comparisons use the ``cloud-raw`` row (variant ``original`` first) on the same link and edge
device as the reference. A run without ``cloud-raw`` is compared against its largest payload.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from vqbench.report.formatting import format_bytes, format_energy, format_number, format_percent
from vqbench.report.loader import RunData
from vqbench.results import ResultRow

REFERENCE_PIPELINE = "cloud-raw"
REFERENCE_VARIANT = "original"
#: Method prefixes that mark a figure as not measured.
UNMEASURED_PREFIXES = ("estimated", "modeled")
#: Accuracy differences below this many percentage points are reported as "the same".
SAME_ACCURACY_POINTS = 0.05

_ENERGY_STAGES = (
    ("edge", "edge_energy_j_per_inference", "edge_energy_method"),
    ("cloud", "cloud_energy_j_per_inference", "cloud_energy_method"),
    ("network", "network_energy_j_per_inference", "network_energy_method"),
)
_KEY_FIGURES = {
    "lfw_accuracy_mean": "accuracy",
    "payload_bytes_mean": "payload size",
    "end_to_end_latency_ms_p50": "end-to-end latency",
    "edge_energy_j_per_inference": "edge energy",
    "cloud_energy_j_per_inference": "cloud energy",
    "network_energy_j_per_inference": "network energy",
    "total_energy_j_per_inference": "total energy",
    "co2e_g_per_inference": "CO2e",
}


def accuracy_noun(assumptions: dict[str, object]) -> str:
    """Say "LFW accuracy" unless the run's assumptions name a data set other than LFW.

    Looks for a ``dataset`` entry (a name, or a mapping with ``name``, ``kind`` or ``path``);
    a run that records none is taken to be on LFW, the default data set.
    """
    dataset = assumptions.get("dataset")
    if isinstance(dataset, dict):
        dataset = " ".join(str(dataset.get(key, "")) for key in ("name", "kind", "path"))
    if dataset is None or not str(dataset).strip():
        return "LFW accuracy"
    return "LFW accuracy" if "lfw" in str(dataset).lower() else "verification accuracy"


def varying_dimensions(rows: Sequence[ResultRow]) -> tuple[bool, bool]:
    """Return whether the rows span several links and several edge devices."""
    links = {row.link for row in rows}
    devices = {row.edge_device for row in rows}
    return len(links) > 1, len(devices) > 1


def row_label(row: ResultRow, rows: Sequence[ResultRow]) -> str:
    """Name a row as ``pipeline/variant``, adding link and device when the run varies them."""
    several_links, several_devices = varying_dimensions(rows)
    label = f"{row.pipeline}/{row.variant}"
    if several_links and row.link:
        label += f" @{row.link}"
    if several_devices and row.edge_device:
        label += f" on {row.edge_device}"
    return label


def is_unmeasured(method: str | None) -> bool:
    """True for a method whose figure is estimated or modeled rather than measured."""
    return bool(method) and method.startswith(UNMEASURED_PREFIXES)


def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Return the indices of points no other point beats, sorted by cost.

    A point is dominated when another costs no more and is at least as accurate, and is
    strictly better in one of the two.
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front: list[int] = []
    best_accuracy = -math.inf
    for index in order:
        if accuracies[index] > best_accuracy:
            front.append(index)
            best_accuracy = accuracies[index]
    return front


def total_energy_methods(row: ResultRow) -> str | None:
    """Join the distinct methods behind a row's energy figures, e.g. ``measured-rapl + modeled-link``."""
    methods: list[str] = []
    for _, value_field, method_field in _ENERGY_STAGES:
        method = getattr(row, method_field)
        if getattr(row, value_field) is not None and method and method not in methods:
            methods.append(method)
    return " + ".join(methods) if methods else None


def find_reference(rows: Sequence[ResultRow], like: ResultRow | None = None) -> ResultRow | None:
    """Return the cloud-raw row on ``like``'s link and device, preferring variant ``original``."""
    candidates = [row for row in rows if row.pipeline == REFERENCE_PIPELINE]
    if like is not None:
        same_setting = [r for r in candidates if r.link == like.link and r.edge_device == like.edge_device]
        candidates = same_setting or candidates
    candidates.sort(key=lambda row: row.variant != REFERENCE_VARIANT)
    return candidates[0] if candidates else None


def _fallback_reference(rows: Sequence[ResultRow]) -> ResultRow | None:
    with_bytes = [row for row in rows if row.payload_bytes_mean is not None]
    return max(with_bytes, key=lambda row: row.payload_bytes_mean) if with_bytes else None


def _ratio_phrase(value: float, reference: float, noun: str) -> str:
    if value <= 0 or reference <= 0:
        return f"{noun} of {value:g} against {reference:g}"
    ratio = reference / value
    if math.isclose(ratio, 1.0, rel_tol=0.005):
        return f"the same {noun}"
    if ratio > 1:
        return f"{ratio:.3g}x fewer {noun}" if noun == "bytes" else f"{ratio:.3g}x less {noun}"
    return f"{1 / ratio:.3g}x more {noun}"


def _accuracy_phrase(accuracy: float | None, reference: float | None) -> str:
    if accuracy is None or reference is None:
        return "with no accuracy figure to compare"
    points = (accuracy - reference) * 100
    if abs(points) < SAME_ACCURACY_POINTS:
        return f"at the same accuracy ({format_percent(accuracy)})"
    direction = "lower" if points < 0 else "higher"
    return (
        f"at {abs(points):.2g} points {direction} accuracy "
        f"({format_percent(accuracy)} against {format_percent(reference)})"
    )


def _comparison_sentence(row: ResultRow, reference: ResultRow, rows: Sequence[ResultRow]) -> str | None:
    if row.payload_bytes_mean is None or reference.payload_bytes_mean is None:
        return None
    label, reference_label = row_label(row, rows), row_label(reference, rows)
    sentence = (
        f"{label} needs {_ratio_phrase(row.payload_bytes_mean, reference.payload_bytes_mean, 'bytes')} "
        f"than {reference_label} ({format_bytes(row.payload_bytes_mean)} against "
        f"{format_bytes(reference.payload_bytes_mean)}) "
        f"{_accuracy_phrase(row.lfw_accuracy_mean, reference.lfw_accuracy_mean)}"
    )
    energy, reference_energy = row.total_energy_j_per_inference, reference.total_energy_j_per_inference
    if energy is not None and reference_energy is not None:
        methods = total_energy_methods(row) or "method not recorded"
        sentence += f", and uses {_ratio_phrase(energy, reference_energy, 'energy')} in total ({methods})"
    return sentence + "."


def _representative_rows(rows: Sequence[ResultRow], reference: ResultRow) -> list[ResultRow]:
    """Per pipeline, its most accurate row on the bytes-accuracy Pareto front (else its most accurate)."""
    scored = [r for r in rows if r.payload_bytes_mean is not None and r.lfw_accuracy_mean is not None]
    front_indices = pareto_front([r.payload_bytes_mean for r in scored], [r.lfw_accuracy_mean for r in scored])
    front = {id(scored[i]) for i in front_indices}
    by_pipeline: dict[str, list[ResultRow]] = defaultdict(list)
    for row in scored:
        if row is not reference:
            by_pipeline[row.pipeline].append(row)
    chosen = []
    for pipeline_rows in by_pipeline.values():
        on_front = [r for r in pipeline_rows if id(r) in front] or pipeline_rows
        chosen.append(max(on_front, key=lambda r: r.lfw_accuracy_mean))
    return chosen


def _best_sentences(rows: Sequence[ResultRow]) -> list[str]:
    sentences = []
    with_accuracy = [r for r in rows if r.lfw_accuracy_mean is not None]
    if with_accuracy:
        best = max(with_accuracy, key=lambda r: r.lfw_accuracy_mean)
        sentences.append(f"Most accurate: {row_label(best, rows)} at {format_percent(best.lfw_accuracy_mean)}.")
    with_bytes = [r for r in rows if r.payload_bytes_mean is not None]
    if with_bytes:
        smallest = min(with_bytes, key=lambda r: r.payload_bytes_mean)
        sentences.append(
            f"Smallest payload: {row_label(smallest, rows)} at {format_bytes(smallest.payload_bytes_mean)} per face."
        )
    with_energy = [r for r in rows if r.total_energy_j_per_inference is not None]
    if with_energy:
        lowest = min(with_energy, key=lambda r: r.total_energy_j_per_inference)
        sentences.append(
            f"Lowest total energy: {row_label(lowest, rows)} at "
            f"{format_energy(lowest.total_energy_j_per_inference)} per inference "
            f"({total_energy_methods(lowest) or 'method not recorded'})."
        )
    with_co2e = [r for r in rows if r.co2e_g_per_inference is not None]
    if with_co2e:
        lowest = min(with_co2e, key=lambda r: r.co2e_g_per_inference)
        sentences.append(_co2e_sentence(lowest, rows))
    return sentences


def _co2e_sentence(row: ResultRow, rows: Sequence[ResultRow]) -> str:
    """Name the lowest operational CO2e and, when the row has one, its embodied share too."""
    operational = row.co2e_g_per_inference * 1e6
    sentence = (
        f"Lowest operational CO2e (energy times grid intensity): {row_label(row, rows)} at "
        f"{format_number(operational)} g per million inferences"
    )
    if row.embodied_co2e_g_per_inference is None:
        return sentence + "."
    embodied = row.embodied_co2e_g_per_inference * 1e6
    return (
        f"{sentence}, plus {format_number(embodied)} g embodied in the edge device "
        f"({format_number(operational + embodied)} g in all)."
    )


def key_findings(rows: Sequence[ResultRow]) -> list[str]:
    """Write the report's key findings from the rows."""
    if not rows:
        return ["The run has no result rows."]
    findings: list[str] = []
    reference = find_reference(rows)
    if reference is None:
        reference = _fallback_reference(rows)
        if reference is not None:
            findings.append(
                f"The run has no {REFERENCE_PIPELINE} row, so comparisons are against "
                f"{row_label(reference, rows)}, the largest payload."
            )
    if reference is not None:
        same_setting = [r for r in rows if r.link == reference.link and r.edge_device == reference.edge_device]
        for row in _representative_rows(same_setting, reference):
            sentence = _comparison_sentence(row, reference, rows)
            if sentence:
                findings.append(sentence)
    findings.extend(_best_sentences(rows))

    infeasible = [row_label(r, rows) for r in rows if r.link_feasible is False]
    if infeasible:
        findings.append(f"Not feasible on their link (frame size or duty cycle): {', '.join(infeasible)}.")
    unmeasured = [r for r in rows if any(is_unmeasured(getattr(r, m)) for _, _, m in _ENERGY_STAGES)]
    if unmeasured:
        findings.append(
            f"{len(unmeasured)} of {len(rows)} rows include estimated or modeled energy figures; "
            "the warnings list which."
        )
    return findings


def _method_warnings(rows: Sequence[ResultRow]) -> list[str]:
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in rows:
        for stage, value_field, method_field in _ENERGY_STAGES:
            method = getattr(row, method_field)
            if getattr(row, value_field) is not None and is_unmeasured(method):
                grouped[(stage, method)].append(row_label(row, rows))
    return [
        f"{stage.capitalize()} energy is {method.split('-')[0]}, not measured ({method}), for "
        f"{_label_list(labels, len(rows))}."
        for (stage, method), labels in grouped.items()
    ]


def _label_list(labels: list[str], n_rows: int) -> str:
    """Return the affected rows' labels, or "every row (N)" when all of them are affected."""
    if len(labels) == n_rows and n_rows > 1:
        return f"every row ({n_rows})"
    return ", ".join(labels)


def _negative_dynamic_warnings(rows: Sequence[ResultRow]) -> list[str]:
    """Warn about dynamic energies below 0, one sentence per stage that has any."""
    warnings = []
    for stage in ("edge", "cloud"):
        field_name = f"{stage}_dynamic_energy_j_per_inference"
        negative = [(row_label(row, rows), getattr(row, field_name)) for row in rows
                    if getattr(row, field_name) is not None and getattr(row, field_name) < 0]
        if not negative:
            continue
        listed = ", ".join(f"{label} ({format_energy(value)})" for label, value in negative)
        warnings.append(
            f"{stage.capitalize()} dynamic energy is negative for {listed}: the {stage} half drew less power than "
            "the idle window measured, so idle power drifted during the run or the stage is too light for the meter "
            "to resolve. The dynamic figure is noise there. The gross energy per inference does not depend on the "
            "idle window. Longer windows (measurement.min_window_s) give a usable dynamic figure."
        )
    return warnings


def _missing_figure_warnings(rows: Sequence[ResultRow]) -> list[str]:
    warnings = []
    for field_name, noun in _KEY_FIGURES.items():
        labels = [row_label(r, rows) for r in rows if getattr(r, field_name) is None]
        if labels:
            warnings.append(f"No {noun} figure for {_label_list(labels, len(rows))}.")
    return warnings


def _data_warnings(rows: Sequence[ResultRow]) -> list[str]:
    warnings = []
    for row in rows:
        label = row_label(row, rows)
        if row.detection_fallbacks:
            warnings.append(
                f"{label}: {row.detection_fallbacks} images had no detected face and used the fixed fallback box."
            )
        if row.n_pairs_skipped:
            warnings.append(f"{label}: {row.n_pairs_skipped} pairs were skipped.")
        if row.link_feasible is False:
            warnings.append(f"{label}: the payload does not fit link {row.link} (frame size or duty cycle).")
    return warnings


def _grid_warnings(assumptions: dict[str, object], run_warnings: Sequence[str]) -> list[str]:
    """Warn about world-average grid intensities that the run's own warnings do not already name."""
    warnings = []
    for key, value in assumptions.items():
        if key.startswith("grid_intensity") and isinstance(value, dict) and value.get("is_world_average"):
            where = key.removeprefix("grid_intensity").strip("_") or "grid"
            if any(where in text.lower() and "world average" in text.lower() for text in run_warnings):
                continue
            warnings.append(
                f"The {where} grid intensity is the world average "
                f"({format_number(value.get('gco2e_per_kwh'))} gCO2e/kWh), "
                "not a figure for a known location; CO2e figures inherit that uncertainty."
            )
    return warnings


def _embodied_warnings(rows: Sequence[ResultRow]) -> list[str]:
    with_embodied = [r for r in rows if r.embodied_co2e_g_per_inference is not None]
    without = [r for r in rows if r.embodied_co2e_g_per_inference is None and r.co2e_g_per_inference is not None]
    if not with_embodied or not without:
        return []
    devices = sorted({r.edge_device or "no device" for r in without})
    return [
        f"Embodied CO2e comes from modeled device profiles only; rows on {', '.join(devices)} carry no "
        "embodied figure, so their CO2e is operational alone and not comparable with the modeled devices' total."
    ]


#: Below this many impostor pairs, TAR at FAR = 1e-3 rests on under one false accept per fold.
MIN_IMPOSTOR_PAIRS = 1000


def _impostor_warnings(run: RunData) -> list[str]:
    scores = run.scores
    if scores is None or scores.empty:
        return []
    first = scores[["pipeline", "variant"]].iloc[0]
    one_variant = scores[(scores["pipeline"] == first["pipeline"]) & (scores["variant"] == first["variant"])]
    impostors = int((~one_variant["same"].astype(bool)).sum())
    if impostors >= MIN_IMPOSTOR_PAIRS:
        return []
    folds = max(int(one_variant["fold"].nunique()), 1)
    return [
        f"Only {impostors} impostor pairs ({impostors // folds} per fold over {folds} folds), so TAR at "
        f"FAR = 1e-3 rests on fewer than one false accept per fold; read it as a rough figure and use "
        f"at least {MIN_IMPOSTOR_PAIRS} impostor pairs for a firm one."
    ]


def collect_warnings(run: RunData) -> list[str]:
    """Gather the run's own warnings, unmeasured, negative dynamic and missing figures, and missing files."""
    rows = run.rows
    warnings = list(run.results.warnings)
    warnings.extend(_method_warnings(rows))
    warnings.extend(_negative_dynamic_warnings(rows))
    warnings.extend(_missing_figure_warnings(rows))
    warnings.extend(_data_warnings(rows))
    warnings.extend(_grid_warnings(run.results.assumptions, run.results.warnings))
    warnings.extend(_embodied_warnings(rows))
    warnings.extend(_impostor_warnings(run))
    warnings.extend(run.notes)
    return warnings
