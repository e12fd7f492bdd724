"""Input checks that raise DataError.

A gated figure or sample must be a possible measurement (``figure_problem``), and a baseline
entry must keep the samples behind each noisy figure it records. Every figure, sample and
method name of a baseline entry must be one that ``write_baseline`` writes (``_entry_problem``).
A run and a baseline must have scored the same face pairs (``EvaluationSetKey``) with the same
settings (``CHECKED_SETTINGS``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqbench.check.policy import (
    _ENERGY_METHOD_FIELDS,
    MODELED_EDGE_ENERGY_METRIC,
    NOISY_METRICS,
    NUMERIC_COLUMNS,
    CheckPolicy,
)
from vqbench.check.rows import _key_description, _numeric_figures, _row_key
from vqbench.errors import DataError
from vqbench.results import (  # noqa: F401  (FRACTION_METRICS and MAY_BE_NEGATIVE are re-exported)
    FRACTION_METRICS,
    MAY_BE_NEGATIVE,
    RESULT_COLUMNS,
    RunResults,
    figure_problem,
)


def _sample_problem(values: list[float]) -> float | None:
    """Return the first NaN, infinite or negative value of a latency or energy sample, else None."""
    return next((value for value in values if not math.isfinite(value) or value < 0), None)


def _gated_metrics(policy: CheckPolicy) -> tuple[set[str], set[str]]:
    """Return the figures that ``policy`` compares directly and the noisy metrics whose samples it reads."""
    deterministic = {gate.metric for gate in policy.deterministic} | {MODELED_EDGE_ENERGY_METRIC}
    noisy = {gate.metric for gate in policy.noisy} | {gate.reference_metric for gate in policy.noisy}
    return deterministic, noisy


def _validate_entry(source: str, label: str, figures: Mapping[str, float | None],
                    samples: Mapping[str, list[float]], policy: CheckPolicy, fix: str) -> None:
    """Raise DataError naming the row, metric and value when a gated figure or sample is invalid."""
    deterministic, noisy = _gated_metrics(policy)
    for metric in sorted(deterministic):
        value = figures.get(metric)
        problem = None if value is None else figure_problem(metric, value)
        if problem is not None:
            raise DataError(f"{source}: row {label} has {metric} = {value:g}, but {problem}; {fix}")
    for metric in sorted(noisy):
        bad = _sample_problem(samples.get(metric, []))
        if bad is not None:
            raise DataError(f"{source}: row {label} has the {metric} sample {bad:g}, but a time or energy per "
                            f"inference cannot be NaN, infinite or negative; {fix}")


def _validate_entry_samples(source: str, label: str, figures: Mapping[str, float | None],
                            samples: Mapping[str, list[float]], policy: CheckPolicy, fix: str) -> None:
    """Raise DataError when a baseline entry lacks the samples behind a noisy figure that it records.

    ``write_baseline`` stores samples for every noisy metric and falls back to the row's scalar
    figure, so samples are empty only where that figure is null (not measured). Missing samples
    next to a recorded figure mean an edited or damaged file, and gating without them would drop
    or skip verdicts silently.
    """
    _, noisy = _gated_metrics(policy)
    absent = [metric for metric in sorted(noisy) if metric not in samples]
    if absent:
        raise DataError(f"{source}: row {label} has no samples entry for {', '.join(absent)}, which the noisy gates "
                        f"read; {fix}")
    empty = []
    for metric in sorted(noisy):
        figure_name = NOISY_METRICS[metric][2]
        figure = figures.get(figure_name)
        if not samples[metric] and figure is not None:
            empty.append(f"{metric} ({figure_name} = {figure:g})")
    if empty:
        raise DataError(f"{source}: row {label} records figures but no samples for {', '.join(empty)}, and the "
                        f"noisy gates need those samples; {fix}")


def _entry_problem(location: str, figures: Mapping[str, float | None], samples: Mapping[str, list[float]],
                   methods: Mapping[str, str | None]) -> str | None:
    """Return the first figure, sample or method of a baseline entry that a run cannot have written, or None.

    ``location`` is the entry's key path, such as ``entries.3``. The returned text follows
    "row X " in the caller's message and names the key path and the value. Figures follow the rules of results files
    (``figure_problem``) whether or not a gate reads them. A results column that is not numeric
    appears only as null, because ``write_baseline`` records such a column only when the row
    lacks it.
    """
    for name, value in figures.items():
        path = f"{location}.figures.{name}"
        if name not in RESULT_COLUMNS:
            close = difflib.get_close_matches(name, NUMERIC_COLUMNS, n=1)
            closest = f" (the closest is {close[0]!r})" if close else ""
            return (f"has the figure {name!r} at '{path}', but results.csv has no column of that name{closest}, "
                    "and a baseline records only results columns")
        if value is None:
            continue
        if name not in NUMERIC_COLUMNS:
            return (f"has {name} = {value:g} at '{path}', but {name} is not a numeric column of results.csv, so a "
                    "baseline records it only as null")
        problem = figure_problem(name, value)
        if problem is not None:
            return f"has {name} = {value:g} at '{path}', but {problem}"

    for metric, values in samples.items():
        if metric not in NOISY_METRICS:
            return (f"has samples of {metric!r} at '{location}.samples.{metric}', but samples are recorded only for "
                    f"the noisy metrics {', '.join(NOISY_METRICS)}")
        for index, value in enumerate(values):
            if not math.isfinite(value) or value < 0:
                return (f"has the {metric} sample {value:g} at '{location}.samples.{metric}.{index}', but a time "
                        "or energy per inference cannot be NaN, infinite or negative")

    for metric in methods:
        if metric not in _ENERGY_METHOD_FIELDS:
            return (f"has an energy method for {metric!r} at '{location}.methods.{metric}', but methods are "
                    f"recorded only for {', '.join(_ENERGY_METHOD_FIELDS)}")
    return None


def _validate_run(results_dir: Path, results: RunResults, samples: Mapping[tuple, dict[str, list[float]]],
                  policy: CheckPolicy) -> None:
    source = f"run {results_dir}"
    fix = "fix the measurement and rerun `vqbench run` before gating or recording this run"
    for row in results.rows:
        key = _row_key(row)
        _validate_entry(source, _key_description(key), _numeric_figures(row), samples[key], policy, fix)


@dataclass(frozen=True)
class EvaluationSetKey:
    """The fields of results.json that identify the face pairs a run scored.

    ``n_pairs`` and ``folds`` are None when the rows disagree or do not record them.
    """

    scenario_name: str
    n_pairs: int | None
    folds: tuple[int, ...] | None

    def describe(self) -> str:
        parts = [f"scenario {self.scenario_name!r}"]
        if self.n_pairs is not None:
            parts.append(f"{self.n_pairs} pairs")
        if self.folds:
            parts.append(f"folds {', '.join(str(fold) for fold in self.folds)}")
        return ", ".join(parts)


def _common_value(values: list) -> Any:
    """Return the value shared by every item of ``values``, or None when they differ or there are none."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def run_evaluation_set(results: RunResults) -> EvaluationSetKey:
    folds = _common_value([tuple(row.folds) for row in results.rows])
    return EvaluationSetKey(results.scenario_name, _common_value([row.n_pairs for row in results.rows]),
                            folds or None)


def _check_same_evaluation_set(results_dir: Path, current: EvaluationSetKey, baseline_file: Path,
                               recorded: EvaluationSetKey) -> None:
    """Raise DataError when the run and the baseline scored different pairs.

    Fields that either side lacks are not compared.
    """
    differs = current.scenario_name != recorded.scenario_name
    if current.n_pairs is not None and recorded.n_pairs is not None:
        differs = differs or current.n_pairs != recorded.n_pairs
    if current.folds is not None and recorded.folds is not None:
        differs = differs or current.folds != recorded.folds
    if differs:
        raise DataError(
            f"run {results_dir} was evaluated on {current.describe()}, but baseline file {baseline_file} was recorded "
            f"from {recorded.describe()}; check the run against a baseline of the same scenario, or record one with "
            f"`vqbench check {results_dir} --write-baseline FILE`"
        )


#: Entries of results.json ``assumptions`` that change what a run measures, so a baseline stores
#: them and ``vqbench check`` compares them: the data set and alignment (the entries that
#: ``vqbench compare`` compares, ``vqbench.compare.EVALUATION_ASSUMPTIONS``) and the measurement
#: settings (latency samples, warm-up, repeats, window lengths).
CHECKED_SETTINGS = ("dataset", "alignment", "measurement")


def run_settings(results: RunResults) -> dict[str, Any]:
    """Return the ``CHECKED_SETTINGS`` entries that the run's results.json records."""
    return {name: results.assumptions[name] for name in CHECKED_SETTINGS if name in results.assumptions}


def _check_same_settings(results_dir: Path, current: Mapping[str, Any], baseline_file: Path,
                         recorded: Mapping[str, Any] | None) -> list[str]:
    """Raise DataError when the run and the baseline differ in a setting of ``CHECKED_SETTINGS``.

    A setting that either side does not record is not compared, and the returned notes name it.
    ``recorded`` is None for baselines written before vqbench stored these settings.
    """
    # Imported here because vqbench.compare imports this module.
    from vqbench.compare import _settings_difference

    differences, unknown_in_baseline, unknown_in_run, one_sided = [], [], [], []
    for name in CHECKED_SETTINGS:
        base = None if recorded is None else recorded.get(name)
        run = current.get(name)
        if base is None:
            unknown_in_baseline.append(name)
        if run is None:
            unknown_in_run.append(name)
        if base is None or run is None:
            continue
        if isinstance(base, dict) and isinstance(run, dict):
            # A key that only one side records (one written by another vqbench version) is unknown, not different.
            one_sided += [f"{name}.{key}" for key in sorted(base.keys() ^ run.keys())]
            base = {key: value for key, value in base.items() if key in run}
            run = {key: value for key, value in run.items() if key in base}
        if base != run:
            differences.append(f"{name}: {_settings_difference(base, run)}")
    if differences:
        raise DataError(
            f"run {results_dir} was made with other settings than the run of baseline file {baseline_file}, so "
            f"their figures are not comparable. Differences, baseline value first: {'; '.join(differences)}. Check "
            f"the run against a baseline recorded with the same settings, or record one with "
            f"`vqbench check {results_dir} --write-baseline FILE`"
        )

    notes = []
    if unknown_in_baseline:
        notes.append(f"baseline file {baseline_file} does not record the {', '.join(unknown_in_baseline)} settings "
                     "of its run, so they were not compared with this run's; re-record the baseline with this "
                     "vqbench version to compare them")
    if unknown_in_run:
        notes.append(f"run {results_dir} does not record its {', '.join(unknown_in_run)} settings in results.json, "
                     "so they were not compared with the baseline's")
    if one_sided:
        notes.append(f"settings recorded by only one of the run and the baseline were not compared: "
                     f"{', '.join(one_sided)}")
    return notes
