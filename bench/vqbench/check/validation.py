"""Input checks that raise DataError.

A gated figure or sample must be a possible measurement (``figure_problem``), and a run and a
baseline must have scored the same face pairs (``EvaluationSetKey``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqbench.check.policy import MODELED_EDGE_ENERGY_METRIC, CheckPolicy
from vqbench.check.rows import _key_description, _numeric_figures, _row_key
from vqbench.errors import DataError
from vqbench.results import FRACTION_METRICS, MAY_BE_NEGATIVE, RunResults, figure_problem  # noqa: F401  (re-exported)


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
            raise DataError(f"{source}: row {label} has a {metric} sample of {bad:g}, but a time or energy per "
                            f"inference cannot be NaN, infinite or negative; {fix}")


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
