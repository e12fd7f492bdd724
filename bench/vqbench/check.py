"""The regression gate: compare a run with a stored baseline under a policy.

Two kinds of gates:

* **Deterministic figures** (payload bytes, parameter and MAC counts, model sizes, accuracy) do
  not depend on the machine, so they are compared directly with the baseline within a small
  tolerance.
* **Noisy figures** (stage latency and energy per inference) depend on the machine, so each is
  divided by a reference pipeline variant's figure measured in the same run. The default
  reference is the cloud stage of ``cloud-raw/original``, because cloud-raw does no edge work.
  A uniformly slower machine leaves these ratios unchanged. A regression needs both: the median
  ratio grows past ``max_ratio_growth`` relative to the baseline's, and a one-sided Mann-Whitney U test of
  the per-repeat (energy) or per-sample (latency) ratios against the baseline's is significant
  at ``p_value_threshold``. With so few repeats that the test can never reach that level, the
  ratio threshold decides alone and the result says so.

Host-measured figures repeat on every link and modeled-device row of a pipeline variant (the
cloud stage and the host's edge stage run once per variant). They are gated once per (pipeline,
variant), on its first row whose edge device is the host. A modeled device's edge energy on other
rows is gated as a deterministic figure when it comes from the profile's MAC rate (basis ``macs``)
and is not gated again when it is the host time scaled by a speed ratio.

A figure or row that the baseline has and the current run lacks is a failure, never a pass.

Busy hosts. A ratio cancels a machine that is uniformly slower, but not load that comes and goes
while a run times its stages one after another. The reference's cloud stage may be timed while
other jobs hold the CPUs and a variant's edge stage later on a quiet host, and then the ratio
moves although neither stage's code changed. So every run records the highest 1-minute load
average seen while timing and its logical CPU count (environment.json), and a baseline stores both
from its run. When either run's load exceeded its CPU count, each judged noisy verdict (pass,
warning, improvement, regression) becomes ``inconclusive``, which is neither a pass nor a failure.
The summary line names the busy run, and the deterministic figures are still gated. A policy may
set ``on_busy_host: gate`` to gate noisy figures on busy hosts anyway. Without environment.json,
the results.json warning about a busy host is read instead, and a run or baseline with neither
cannot be judged busy (a note says so).

Edge figures keep the cloud reference. Cloud-raw does no edge work, so no edge figure is common to
every scenario, and absolute edge figures would fail on every change of machine. Each ratio
verdict also reports how far the reference's own median moved when it moved past the growth
limit, so a verdict driven by the reference shows as such. NOTE: on hosts that were not busy by
this rule, a shift of the reference alone still fails the gate. The 1-minute load average lags,
so a burst of load shorter than a minute may go unnoticed.

Bad input raises DataError (exit code 2) rather than producing verdicts. That covers a results
file or baseline of another schema version, an empty baseline, and a baseline of another
evaluation set (scenario name, pair count, folds). It also covers a policy reference that the
baseline lacks and a gated figure that is NaN, infinite, negative, or a fraction above 1. Such
values break the results schema's rule that a figure which could not be measured is null, so no
comparison with them means anything. Output files may not replace a file of the run folder being
checked, nor the baseline or policy file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vqbench import __version__
from vqbench.errors import DataError
from vqbench.io import write_text_atomic
from vqbench.metrics.verification import average_ranks
from vqbench.report.loader import ENVIRONMENT_FILE, LATENCY_FILE, load_results, run_completeness
from vqbench.results import ResultRow, RunResults

logger = logging.getLogger(__name__)

BASELINE_SCHEMA_VERSION = 1

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
#: Largest U-test sample (both groups together) for which the exact null distribution is used.
EXACT_TEST_MAX_SAMPLES = 100
#: Figures that may be negative: dynamic energy is the measured energy minus the idle energy, so
#: noise can push it below 0. Every other gated figure is a count, size, time, energy or fraction.
MAY_BE_NEGATIVE = frozenset({"edge_dynamic_energy_j_per_inference", "cloud_dynamic_energy_j_per_inference"})
#: Figures that are fractions, so they lie in [0, 1].
FRACTION_METRICS = frozenset({"lfw_accuracy_mean", "lfw_accuracy_std", "tar_at_far_1e_3", "roc_auc", "eer"})

# ---------------------------------------------------------------------------------------------
# Policy


class ReferenceSpec(BaseModel):
    """The pipeline variant that noisy figures are divided by."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = "cloud-raw"
    variant: str = "original"


class DeterministicGate(BaseModel):
    """A machine-independent figure compared directly with the baseline.

    The allowed change in the worse direction is the larger of ``relative_tolerance`` times the
    baseline value and ``absolute_tolerance``.
    """

    model_config = ConfigDict(extra="forbid")

    metric: str
    direction: Literal["smaller_is_better", "larger_is_better"] = "smaller_is_better"
    relative_tolerance: float | None = Field(default=None, ge=0)
    absolute_tolerance: float | None = Field(default=None, ge=0)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in ResultRow.model_fields:
            raise ValueError(f"unknown results column {metric!r}; use a numeric column of results.csv")
        return metric


class NoisyGate(BaseModel):
    """A machine-dependent figure gated as a ratio to the reference's ``reference_metric``."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    reference_metric: str
    max_ratio_growth: float = Field(default=1.2, gt=1.0)

    @field_validator("metric", "reference_metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in NOISY_METRICS:
            raise ValueError(f"unknown noisy metric {metric!r}; choose one of {sorted(NOISY_METRICS)}")
        return metric


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


class CheckPolicy(BaseModel):
    """Gate policy: the reference, the test level and the gated figures. Every field has a default."""

    model_config = ConfigDict(extra="forbid")

    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    p_value_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    #: Per-sample latencies are thinned to this many evenly spaced quantiles before the test.
    max_samples: int = Field(default=256, ge=2)
    deterministic: list[DeterministicGate] = Field(default_factory=_default_deterministic)
    noisy: list[NoisyGate] = Field(default_factory=_default_noisy)
    #: What noisy gates do when either run was timed with a load average above its CPU count:
    #: ``inconclusive`` reports them as neither passed nor failed, ``gate`` judges them anyway.
    on_busy_host: Literal["inconclusive", "gate"] = "inconclusive"


def load_policy(policy_file: Path | None) -> CheckPolicy:
    """Read a YAML policy, or return the built-in default when ``policy_file`` is None."""
    if policy_file is None:
        return CheckPolicy()
    path = Path(policy_file)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise DataError(f"policy file {path} could not be read ({error}); check the path") from error
    except yaml.YAMLError as error:
        raise DataError(f"policy file {path} is not valid YAML ({error}); fix its syntax") from error
    try:
        return CheckPolicy.model_validate(content)
    except ValidationError as error:
        raise DataError(f"policy file {path} is invalid: {_first_error(error)}; fix that key") from error


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{first['msg']} at '{location}'"


# ---------------------------------------------------------------------------------------------
# Mann-Whitney U test


@dataclass(frozen=True)
class UTestResult:
    """One-sided Mann-Whitney U test that the first sample tends to be larger than the second."""

    u_statistic: float
    p_value: float
    method: Literal["exact", "normal"]


def exact_u_counts(n1: int, n2: int) -> np.ndarray:
    """Count the arrangements giving each U in 0..n1*n2 when there are no ties.

    These are the coefficients of the Gaussian binomial [n1+n2 choose n1]_q, built with
    [m, k] = [m-1, k-1] + q^k [m-1, k]. Floats keep large counts (C(100, 50) ~ 1e29) in range.
    """
    size = n1 * n2 + 1
    by_k = [np.zeros(size) for _ in range(n1 + 1)]
    by_k[0][0] = 1.0
    for m in range(1, n1 + n2 + 1):
        for k in range(min(m, n1), 0, -1):
            shifted = np.zeros(size)
            shifted[k:] = by_k[k][: size - k]
            by_k[k] = by_k[k - 1] + shifted
    return by_k[n1]


def mann_whitney_greater(sample: np.ndarray, other: np.ndarray) -> UTestResult:
    """Test whether ``sample`` is stochastically greater than ``other`` (one-sided).

    Uses the exact null distribution when there are no ties and at most
    ``EXACT_TEST_MAX_SAMPLES`` values in all, otherwise the normal approximation with tie and
    continuity corrections.
    """
    x = np.asarray(sample, dtype=float)
    y = np.asarray(other, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("the U test needs at least one value in each sample")
    combined = np.concatenate([x, y])
    ranks = average_ranks(combined)
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    has_ties = len(np.unique(combined)) < len(combined)

    if not has_ties and n1 + n2 <= EXACT_TEST_MAX_SAMPLES:
        counts = exact_u_counts(n1, n2)
        p_value = float(counts[int(round(u)) :].sum() / counts.sum())
        return UTestResult(u, min(p_value, 1.0), "exact")

    _, tie_sizes = np.unique(combined, return_counts=True)
    return UTestResult(u, normal_p_value(u, n1, n2, tie_sizes), "normal")


def normal_p_value(u: float, n1: int, n2: int, tie_sizes: np.ndarray | None = None) -> float:
    """One-sided P(U >= u) from the normal approximation with tie and continuity corrections."""
    n = n1 + n2
    sizes = np.asarray(tie_sizes if tie_sizes is not None else [], dtype=float)
    tie_term = float((sizes**3 - sizes).sum()) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def smallest_p_value(n1: int, n2: int) -> float:
    """Smallest one-sided p-value the U test can return for these sample sizes (no ties)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return 1.0 / math.comb(n1 + n2, n1)


# ---------------------------------------------------------------------------------------------
# Baseline file


class BaselineEntry(BaseModel):
    """One row of the baseline run: its figures and the raw samples behind its noisy figures."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    variant: str
    link: str | None = None
    edge_device: str | None = None
    figures: dict[str, float | None]
    samples: dict[str, list[float]]
    methods: dict[str, str | None] = Field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str | None, str | None]:
        return (self.pipeline, self.variant, self.link, self.edge_device)


class Baseline(BaseModel):
    """The content of a baseline file written by ``write_baseline``.

    ``n_pairs``, ``folds`` and the host load fields are None in baselines written before they
    were recorded. Such baselines still load, and their pair count is read from the entries.
    """

    model_config = ConfigDict(extra="forbid")

    baseline_schema_version: int = BASELINE_SCHEMA_VERSION
    vqbench_version: str
    created_utc: str
    scenario_name: str
    source_run: str
    run_created_utc: str
    #: Pairs and folds that every row of the source run was scored on.
    n_pairs: int | None = None
    folds: list[int] | None = None
    #: The source run's highest 1-minute load average while timing and its logical CPU count.
    max_load_average_1min_while_timing: float | None = None
    cpu_logical_cores: int | None = None
    entries: list[BaselineEntry]


def _row_key(row: ResultRow) -> tuple[str, str, str | None, str | None]:
    return (row.pipeline, row.variant, row.link, row.edge_device)


def _key_label(key: tuple[str, str, str | None, str | None]) -> str:
    pipeline, variant, link, device = key
    extras = [part for part in (link, device) if part]
    return f"{pipeline}/{variant}" + (f" [{', '.join(extras)}]" if extras else "")


def _key_description(key: tuple[str, str, str | None, str | None]) -> str:
    """Describe a row for an error message, without the square brackets that rich reads as markup."""
    pipeline, variant, link, device = key
    extras = [f"{name} {part}" for name, part in (("link", link), ("edge device", device)) if part]
    return f"{pipeline}/{variant}" + (f" ({', '.join(extras)})" if extras else "")


def _thin(values: np.ndarray, max_samples: int) -> list[float]:
    """Keep at most ``max_samples`` values as evenly spaced quantiles of ``values``."""
    if len(values) <= max_samples:
        return [float(v) for v in values]
    return [float(v) for v in np.quantile(values, np.linspace(0, 1, max_samples))]


def _read_latency(results_dir: Path) -> pd.DataFrame | None:
    path = results_dir / LATENCY_FILE
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path, columns=["pipeline", "variant", "stage", "latency_ms"])
    except (OSError, ValueError) as error:
        raise DataError(f"{path} could not be read ({error}); rerun `vqbench run` or delete the file") from error


def _row_samples(row: ResultRow, latency: pd.DataFrame | None, max_samples: int) -> dict[str, list[float]]:
    """Raw samples of every noisy metric for one row; the row's scalar when there are none."""
    samples: dict[str, list[float]] = {}
    for metric, (source, name, scalar_field) in NOISY_METRICS.items():
        values: list[float] = []
        if source == "repeats":
            values = [float(v) for v in getattr(row, name)]
        elif latency is not None:
            chosen = latency[(latency["pipeline"] == row.pipeline) & (latency["variant"] == row.variant)
                             & (latency["stage"] == name)]
            values = _thin(chosen["latency_ms"].to_numpy(dtype=float), max_samples)
        if not values and getattr(row, scalar_field) is not None:
            values = [float(getattr(row, scalar_field))]
        samples[metric] = values
    return samples


def _numeric_figures(row: ResultRow) -> dict[str, float | None]:
    figures: dict[str, float | None] = {}
    for name, value in row.model_dump().items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            continue
        figures[name] = None if value is None else float(value)
    return figures


def write_baseline(results_dir: Path, baseline_file: Path, max_samples: int = 256) -> Path:
    """Store a run's figures and raw noisy samples as a baseline file (JSON), atomically.

    Raises DataError (exit code 2) when ``baseline_file`` is a folder or a file of the run
    folder, or when it cannot be written. It is also raised for an incomplete run, a run without
    rows, and a figure of the default policy's gates that ``figure_problem`` rejects.
    """
    results_dir, baseline_file = Path(results_dir), Path(baseline_file)
    check_output_path(results_dir, baseline_file, "--write-baseline")
    results = load_results(results_dir)
    complete, variants_missing = run_completeness(results)
    if not complete:
        missing = ", ".join(variants_missing) or "(the run does not list them)"
        raise DataError(
            f"run {results_dir} is incomplete: it was interrupted before the variants {missing} finished, and a "
            "baseline from it would not gate them; rerun the scenario to the end and record that run"
        )
    if not results.rows:
        raise DataError(f"run {results_dir} has no rows, so a baseline from it would gate nothing; "
                        "rerun the scenario and record that run")
    latency = _read_latency(results_dir)
    samples = {_row_key(row): _row_samples(row, latency, max_samples) for row in results.rows}
    _validate_run(results_dir, results, samples, CheckPolicy())

    evaluation = run_evaluation_set(results)
    load = run_host_load(results_dir, results)
    entries = [
        BaselineEntry(
            pipeline=row.pipeline, variant=row.variant, link=row.link, edge_device=row.edge_device,
            figures=_numeric_figures(row), samples=samples[_row_key(row)],
            methods={metric: getattr(row, field) for metric, field in _ENERGY_METHOD_FIELDS.items()},
        )
        for row in results.rows
    ]
    baseline = Baseline(
        vqbench_version=__version__,
        created_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        scenario_name=results.scenario_name,
        source_run=str(results_dir),
        run_created_utc=results.created_utc,
        n_pairs=evaluation.n_pairs,
        folds=list(evaluation.folds) if evaluation.folds else None,
        max_load_average_1min_while_timing=None if load is None else load.max_load_1min,
        cpu_logical_cores=None if load is None else load.cpus,
        entries=entries,
    )
    write_output_text(baseline_file, baseline.model_dump_json(indent=1), "--write-baseline")
    if load is not None and load.busy:
        logger.warning(
            "baseline %s comes from a run timed on a busy host (%s), so checks against it report latency and "
            "energy as inconclusive; record a run from a quiet host instead", baseline_file, load.describe(),
        )
    logger.info("wrote baseline %s from %s (%d rows)", baseline_file, results_dir, len(entries))
    return baseline_file


def _rerecord_hint(path: Path) -> str:
    return f"re-record it from a complete run with `vqbench check RUN_DIR --write-baseline {path}`"


def _check_baseline_version(path: Path, content: bytes) -> None:
    """Raise DataError unless the file declares ``baseline_schema_version`` 1, the version this module reads."""
    try:
        data = json.loads(content)
    except ValueError:
        # Invalid JSON is left to the schema validation, which reports where it breaks.
        return
    if not isinstance(data, dict):
        return
    if "baseline_schema_version" not in data:
        raise DataError(
            f"baseline file {path} has no baseline_schema_version, and this vqbench reads only version "
            f"{BASELINE_SCHEMA_VERSION}; {_rerecord_hint(path)}"
        )
    version = data["baseline_schema_version"]
    if type(version) is not int or version != BASELINE_SCHEMA_VERSION:
        raise DataError(
            f"baseline file {path} has baseline_schema_version {version!r}, but this vqbench reads only version "
            f"{BASELINE_SCHEMA_VERSION}; {_rerecord_hint(path)}"
        )


def load_baseline(baseline_file: Path) -> Baseline:
    """Read a baseline file, raising DataError that names the file when it is missing, unreadable,
    malformed, of another schema version, or empty.
    """
    path = Path(baseline_file)
    if not path.is_file():
        raise DataError(f"baseline file {path} not found; create it with `vqbench check --write-baseline`")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"baseline file {path} could not be read ({error}); check its permissions") from error
    _check_baseline_version(path, content)
    try:
        baseline = Baseline.model_validate_json(content)
    except ValidationError as error:
        raise DataError(
            f"baseline file {path} is malformed: {_first_error(error)}; rewrite it from a good run"
        ) from error
    if not baseline.entries:
        raise DataError(f"baseline file {path} has no entries, so it gates nothing; {_rerecord_hint(path)}")
    return baseline


# ---------------------------------------------------------------------------------------------
# Input checks: figure values, evaluation set, host load


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


def _validate_baseline(baseline_file: Path, baseline: Baseline, policy: CheckPolicy) -> None:
    source = f"baseline file {baseline_file}"
    for entry in baseline.entries:
        _validate_entry(source, _key_description(entry.key), entry.figures, entry.samples, policy,
                        _rerecord_hint(baseline_file))


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


def baseline_evaluation_set(baseline: Baseline) -> EvaluationSetKey:
    """Return the baseline's evaluation set; older baselines give the pair count of their entries only."""
    n_pairs = baseline.n_pairs
    if n_pairs is None:
        counts = [entry.figures.get("n_pairs") for entry in baseline.entries]
        common = _common_value(counts)
        n_pairs = None if common is None else int(common)
    folds = tuple(baseline.folds) if baseline.folds else None
    return EvaluationSetKey(baseline.scenario_name, n_pairs, folds)


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


#: The busy-host warning that ``vqbench.environment.busy_host_warning`` adds to results.json.
_BUSY_WARNING = re.compile(
    r"host was busy while timing \(1-minute load average (?P<load>[0-9.]+) on (?P<cpus>\d+) CPUs\)"
)


@dataclass(frozen=True)
class HostLoad:
    """Host load of a run: the highest 1-minute load average while timing, and the logical CPU count."""

    max_load_1min: float
    cpus: int

    @property
    def busy(self) -> bool:
        """Whether more processes were runnable than there were CPUs, the rule the runner warns on."""
        return self.max_load_1min > self.cpus

    def describe(self) -> str:
        return f"load {self.max_load_1min:.2f} on {self.cpus} CPUs"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _environment_load(results_dir: Path) -> HostLoad | None:
    """Return the host load recorded in environment.json, or None when the file or a field is missing or invalid."""
    path = results_dir / ENVIRONMENT_FILE
    try:
        environment = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(environment, dict):
        return None
    load, cpus = environment.get("max_load_average_1min_while_timing"), environment.get("cpu_logical_cores")
    if not _is_number(load) or not _is_number(cpus) or cpus < 1:
        return None
    return HostLoad(float(load), int(cpus))


def run_host_load(results_dir: Path, results: RunResults) -> HostLoad | None:
    """Return the run's host load from environment.json and its busy-host warning, the busier of the two.

    An interrupted run has no environment.json, so its warning in results.json is the only record.
    None means that the run's load is unknown.
    """
    found = []
    environment_load = _environment_load(Path(results_dir))
    if environment_load is not None:
        found.append(environment_load)
    for warning in results.warnings:
        match = _BUSY_WARNING.search(warning)
        if match is not None:
            found.append(HostLoad(float(match["load"]), int(match["cpus"])))
    return max(found, key=lambda load: load.max_load_1min / load.cpus, default=None)


def baseline_host_load(baseline: Baseline) -> HostLoad | None:
    load, cpus = baseline.max_load_average_1min_while_timing, baseline.cpu_logical_cores
    if load is None or cpus is None or cpus < 1:
        return None
    return HostLoad(load, cpus)


# ---------------------------------------------------------------------------------------------
# Output files

#: Example file names for the options that write a file, used when a folder is given instead.
_EXAMPLE_OUTPUT_NAMES = {
    "--write-baseline": "baseline.json", "--junit": "check-junit.xml", "--markdown": "check.md",
    "--benchmark-json": "benchmark.json",
}


def check_output_path(results_dir: Path, path: Path, option: str,
                      inputs: Mapping[str, Path | None] | None = None) -> None:
    """Raise DataError when ``path`` is a folder, a file that a run writes into ``results_dir``, or an input file.

    ``inputs`` maps an option name (``--baseline``) to the file it reads.
    """
    # The runner module loads the measuring code, so it is imported only when an output is written.
    from vqbench.runner import RUN_FILES, SAMPLES_DIR

    path = Path(path)
    if path.is_dir():
        example = path / _EXAMPLE_OUTPUT_NAMES.get(option, "output.txt")
        raise DataError(f"{option} {path} is a folder; give a file path, such as {example}")
    target, run_dir = path.resolve(), Path(results_dir).resolve()
    if (target.parent == run_dir and target.name in RUN_FILES) or target.is_relative_to(run_dir / SAMPLES_DIR):
        raise DataError(
            f"{option} {path} would replace {target.name} of the run folder {results_dir} that is being checked; "
            "write it outside the run folder or under another name"
        )
    for input_option, input_path in (inputs or {}).items():
        if input_path is not None and target == Path(input_path).resolve():
            raise DataError(f"{option} {path} is the file given to {input_option}, which this check reads; "
                            "write it elsewhere")


def write_output_text(path: Path, text: str, option: str) -> Path:
    """Write ``text`` to ``path`` atomically, raising DataError that names ``option`` when that fails."""
    try:
        return write_text_atomic(Path(path), text)
    except OSError as error:
        raise DataError(
            f"{option} {path} could not be written ({error.strerror or error}); choose a writable file path"
        ) from error


# ---------------------------------------------------------------------------------------------
# Checking

Status = Literal["pass", "improved", "warn", "regression", "missing", "new", "skipped", "inconclusive"]
FAILING: frozenset[str] = frozenset({"regression", "missing"})
#: Noisy verdicts that a busy host turns into ``inconclusive``. Missing and skipped verdicts stay as they are.
_JUDGED_STATUSES = frozenset({"pass", "improved", "warn", "regression"})


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one figure of one row."""

    row: str
    metric: str
    kind: Literal["deterministic", "ratio", "row"]
    status: Status
    baseline_value: float | None
    current_value: float | None
    #: Relative change (deterministic) or growth of the median ratio (ratio gates), 1.0 = unchanged.
    change: float | None
    limit: str
    message: str
    p_value: float | None = None
    unit: str = ""


@dataclass(frozen=True)
class CheckReport:
    """All verdicts of one check run."""

    results_dir: str
    baseline_file: str
    policy: CheckPolicy
    results: tuple[CheckResult, ...]
    notes: tuple[str, ...]
    #: Conditions that change how to read the verdicts (a busy host, an incomplete run), printed
    #: on the summary line.
    summary_notes: tuple[str, ...] = ()

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when no figure regressed or is missing (inconclusive verdicts do not fail), else 1."""
        return 0 if self.passed else 1


def _unit(metric: str) -> str:
    """Return the unit named in a results column, for the benchmark JSON."""
    if "_bytes" in metric:
        return "bytes"
    if metric.endswith("_params"):
        return "parameters"
    if metric.endswith("_macs"):
        return "MACs"
    if "accuracy" in metric:
        return "fraction"
    if "_ms" in metric:
        return "ms"
    if "_j_" in metric:
        return "J"
    return ""


def _check_deterministic(label: str, gate: DeterministicGate, base: float, current: float | None) -> CheckResult:
    allowed = max(
        (gate.relative_tolerance or 0.0) * abs(base),
        gate.absolute_tolerance or 0.0,
    )
    limit = (
        f"{gate.direction.replace('_', ' ')}, tolerance "
        + " or ".join(
            text for text in (
                f"{gate.relative_tolerance:.3g} relative" if gate.relative_tolerance is not None else "",
                f"{gate.absolute_tolerance:.3g} absolute" if gate.absolute_tolerance is not None else "",
            ) if text
        )
    )
    if current is None:
        return CheckResult(label, gate.metric, "deterministic", "missing", base, None, None, limit,
                           f"{gate.metric} is in the baseline ({base:g}) but missing from this run",
                           unit=_unit(gate.metric))
    worse_by = current - base if gate.direction == "smaller_is_better" else base - current
    change = (current - base) / abs(base) if base else None
    if worse_by > allowed:
        status, message = "regression", f"{gate.metric} went from {base:g} to {current:g}, beyond the tolerance"
    elif -worse_by > allowed:
        status, message = "improved", f"{gate.metric} improved from {base:g} to {current:g}; refresh the baseline"
    else:
        status, message = "pass", f"{gate.metric} {current:g} within tolerance of {base:g}"
    return CheckResult(label, gate.metric, "deterministic", status, base, current, change, limit, message,
                       unit=_unit(gate.metric))


def _ratios(values: list[float], reference: list[float]) -> np.ndarray | None:
    """Divide each value by the reference's median; None when the reference is unusable."""
    if not values or not reference:
        return None
    reference_median = float(np.median(reference))
    if reference_median <= 0:
        return None
    return np.asarray(values, dtype=float) / reference_median


_NO_REFERENCE_FIGURE = "the baseline has no usable reference figure for this ratio"


@dataclass(frozen=True)
class _NoisyInputs:
    label: str
    gate: NoisyGate
    base_values: list[float]
    base_reference: list[float]
    current_values: list[float]
    current_reference: list[float]
    method_note: str


def _check_noisy(inputs: _NoisyInputs, p_threshold: float) -> CheckResult:
    gate, label = inputs.gate, inputs.label
    limit = f"median ratio to reference {gate.reference_metric} may grow at most {gate.max_ratio_growth:g}x"
    base_ratios = _ratios(inputs.base_values, inputs.base_reference)
    if base_ratios is None:
        return CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, limit, _NO_REFERENCE_FIGURE)
    base_median = float(np.median(base_ratios))
    if not inputs.current_values:
        return CheckResult(label, gate.metric, "ratio", "missing", base_median, None, None, limit,
                           f"{gate.metric} is in the baseline but missing from this run")
    current_ratios = _ratios(inputs.current_values, inputs.current_reference)
    if current_ratios is None:
        return CheckResult(label, gate.metric, "ratio", "missing", base_median, None, None, limit,
                           f"the reference {gate.reference_metric} is missing from this run, so {gate.metric} "
                           "cannot be normalised")
    current_median = float(np.median(current_ratios))
    growth = current_median / base_median if base_median > 0 else math.inf

    n1, n2 = len(current_ratios), len(base_ratios)
    test_note = ""
    p_value: float | None = None
    if smallest_p_value(n1, n2) >= p_threshold:
        significant_up = significant_down = True
        test_note = (f" (only {n1} vs {n2} samples, so the U test cannot reach p < {p_threshold:g}; "
                     "the ratio threshold decides alone)")
    else:
        up = mann_whitney_greater(current_ratios, base_ratios)
        down = mann_whitney_greater(base_ratios, current_ratios)
        significant_up, significant_down = up.p_value < p_threshold, down.p_value < p_threshold
        p_value = up.p_value if growth >= 1 else down.p_value
        test_note = f" (U test, {up.method}, p = {p_value:.3g})"

    summary = f"ratio grew {growth:.3g}x ({base_median:.4g} -> {current_median:.4g})"
    if growth > gate.max_ratio_growth and significant_up:
        status: Status = "regression"
    elif growth > gate.max_ratio_growth:
        status, summary = "warn", summary + " but not significantly"
    elif growth < 1 / gate.max_ratio_growth and significant_down:
        status = "improved"
    else:
        status = "pass"
    return CheckResult(label, gate.metric, "ratio", status, base_median, current_median, growth, limit,
                       summary + test_note + inputs.method_note + _reference_drift_note(inputs), p_value,
                       unit="ratio")


def _reference_drift_note(inputs: _NoisyInputs) -> str:
    """Say how far the reference's own median moved between the runs when it moved past the growth limit.

    The ratio moves with the reference as much as with the gated figure, so a large move of the
    reference alone points at the reference's measurement (a busy host, say) rather than at the row.
    """
    base_reference = float(np.median(inputs.base_reference))
    current_reference = float(np.median(inputs.current_reference))
    reference_change = current_reference / base_reference
    limit = inputs.gate.max_ratio_growth
    if 1 / limit <= reference_change <= limit:
        return ""
    base_own, current_own = float(np.median(inputs.base_values)), float(np.median(inputs.current_values))
    own_change = f"{current_own / base_own:.3g}x" if base_own > 0 else "from 0"
    return (f"; the reference's {inputs.gate.reference_metric} itself moved {reference_change:.3g}x "
            f"({base_reference:.4g} -> {current_reference:.4g}) while {inputs.gate.metric} moved {own_change}, "
            "so much of the ratio's change comes from the reference")


def _find(entries: dict, key: tuple, reference: ReferenceSpec):
    """Return the reference row on the same link and device as ``key``, else any reference row."""
    pipeline, variant = reference.pipeline, reference.variant
    exact = entries.get((pipeline, variant, key[2], key[3]))
    if exact is not None:
        return exact
    return next((value for k, value in entries.items() if k[:2] == (pipeline, variant)), None)


def _method_note(entry: BaselineEntry, row: ResultRow, metric: str) -> str:
    field = _ENERGY_METHOD_FIELDS.get(metric)
    if field is None:
        return ""
    before, after = entry.methods.get(metric), getattr(row, field)
    if before and after and before != after:
        return f"; method changed from {before} to {after}, so the ratios compare different methods"
    return ""


def primary_keys(keys: list[tuple[str, str, str | None, str | None]]) -> set[tuple]:
    """Per (pipeline, variant), the key whose noisy figures are gated: its first host row, else its first row."""
    chosen: dict[tuple[str, str], tuple] = {}
    for key in keys:
        current = chosen.get(key[:2])
        if current is None or (current[3] not in HOST_DEVICES and key[3] in HOST_DEVICES):
            chosen[key[:2]] = key
    return set(chosen.values())


def _modeled_edge_verdicts(label: str, entry: BaselineEntry, row: ResultRow) -> list[CheckResult]:
    """Gate a modeled device's edge energy directly when the profile's MAC rate fixes it."""
    metric = MODELED_EDGE_ENERGY_METRIC
    base = entry.figures.get(metric)
    if base is None or row.edge_device in HOST_DEVICES or row.edge_time_basis != "macs":
        return []
    gate = DeterministicGate(metric=metric, relative_tolerance=MODELED_ENERGY_TOLERANCE)
    return [_check_deterministic(label, gate, base, getattr(row, metric))]


def _check_row(entry: BaselineEntry, row: ResultRow, context: dict) -> list[CheckResult]:
    policy: CheckPolicy = context["policy"]
    label = _key_label(entry.key)
    verdicts = []
    for gate in policy.deterministic:
        base = entry.figures.get(gate.metric)
        if base is not None:
            verdicts.append(_check_deterministic(label, gate, base, getattr(row, gate.metric)))

    if entry.key not in context["primary_keys"]:
        verdicts.extend(_modeled_edge_verdicts(label, entry, row))
        return verdicts

    base_reference = _find(context["baseline_entries"], entry.key, policy.reference)
    current_reference = _find(context["current_rows"], entry.key, policy.reference)
    is_reference = entry.key[:2] == (policy.reference.pipeline, policy.reference.variant)
    current_samples = context["current_samples"][entry.key]
    for gate in policy.noisy:
        if not entry.samples.get(gate.metric):
            continue
        if is_reference and gate.metric == gate.reference_metric:
            verdicts.append(CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, "",
                                        "this row is the reference for this metric, so its ratio is 1 by definition"))
            continue
        reference_samples = (
            context["current_samples"][_row_key(current_reference)][gate.reference_metric]
            if current_reference is not None else []
        )
        inputs = _NoisyInputs(
            label, gate, entry.samples[gate.metric],
            base_reference.samples.get(gate.reference_metric, []) if base_reference else [],
            current_samples[gate.metric], reference_samples, _method_note(entry, row, gate.metric),
        )
        verdicts.append(_mark_busy(_check_noisy(inputs, policy.p_value_threshold), context["busy_reason"]))
    return verdicts


def _mark_busy(verdict: CheckResult, busy_reason: str | None) -> CheckResult:
    """Turn a judged noisy verdict into ``inconclusive`` when a busy host makes its ratio unreliable."""
    if busy_reason is None or verdict.status not in _JUDGED_STATUSES:
        return verdict
    return replace(verdict, status="inconclusive", message=f"inconclusive: {busy_reason}; measured: {verdict.message}")


def _check_reference(policy: CheckPolicy, baseline_entries: dict, baseline_file: Path) -> None:
    """Raise DataError when noisy gates are configured but the baseline has no row of their reference."""
    if not policy.noisy or _find(baseline_entries, ("", "", None, None), policy.reference) is not None:
        return
    reference = f"{policy.reference.pipeline}/{policy.reference.variant}"
    variants = sorted({f"{pipeline}/{variant}" for pipeline, variant, _, _ in baseline_entries})
    raise DataError(
        f"the reference {reference}, which the noisy gates divide by, is not in baseline file {baseline_file} "
        f"(its variants: {', '.join(variants)}); set `reference` in a --policy file to one of them, or set "
        "`noisy: []` there to gate the deterministic figures only"
    )


def _host_load_notes(current: HostLoad | None, recorded: HostLoad | None,
                     policy: CheckPolicy) -> tuple[str | None, list[str], list[str]]:
    """Return the busy-host reason that makes noisy verdicts inconclusive (None to judge them), notes, summary notes."""
    notes, summary_notes = [], []
    if recorded is None:
        notes.append("the baseline does not record the host load of its run, so a busy baseline host cannot be "
                     "detected; re-record the baseline to store it")
    if current is None:
        notes.append(f"this run has no host load in {ENVIRONMENT_FILE}, so a busy host cannot be detected")
    busy_runs = []
    for which, load in (("the baseline run", recorded), ("this run", current)):
        if load is not None and load.busy:
            busy_runs.append(f"{which} ({load.describe()})")
    if not busy_runs:
        return None, notes, summary_notes
    reason = f"host busy while timing {' and '.join(busy_runs)}"
    if policy.on_busy_host == "gate":
        summary_notes.append(f"latency and energy gated although the {reason} (policy on_busy_host: gate)")
        return None, notes, summary_notes
    summary_notes.append(f"latency and energy inconclusive, not gated: {reason}; rerun on a quiet host")
    return reason, notes, summary_notes


def _missing_row_message(key: tuple, complete: bool, variants_missing: tuple[str, ...]) -> str:
    if complete:
        return "this row is in the baseline but not in the run; was a pipeline removed?"
    if f"{key[0]}/{key[1]}" in variants_missing:
        return "this row is in the baseline but not in the run, which was interrupted before this variant finished"
    return "this row is in the baseline but not in the run; the run was interrupted, which may explain it"


def run_check(results_dir: Path, baseline_file: Path, policy_file: Path | None = None) -> CheckReport:
    """Gate the run in ``results_dir`` against ``baseline_file`` under a policy (default built in).

    Raises DataError (exit code 2) for bad input: a missing, malformed or unsupported results,
    baseline or policy file, an empty baseline, a baseline of another evaluation set, a policy
    reference that the baseline lacks, or a gated figure that ``figure_problem`` rejects.
    """
    results_dir, baseline_file = Path(results_dir), Path(baseline_file)
    policy = load_policy(policy_file)
    baseline = load_baseline(baseline_file)
    results: RunResults = load_results(results_dir)
    _check_same_evaluation_set(results_dir, run_evaluation_set(results), baseline_file,
                               baseline_evaluation_set(baseline))
    latency = _read_latency(results_dir)
    current_rows = {_row_key(row): row for row in results.rows}
    current_samples = {key: _row_samples(row, latency, policy.max_samples) for key, row in current_rows.items()}
    _validate_baseline(baseline_file, baseline, policy)
    _validate_run(results_dir, results, current_samples, policy)
    baseline_entries = {entry.key: entry for entry in baseline.entries}
    _check_reference(policy, baseline_entries, baseline_file)

    busy_reason, notes, summary_notes = _host_load_notes(
        run_host_load(results_dir, results), baseline_host_load(baseline), policy)
    complete, variants_missing = run_completeness(results)
    if not complete:
        missing = ", ".join(variants_missing) or "not listed"
        summary_notes.append(f"this run is incomplete (interrupted), variants missing: {missing}")
    context = {"policy": policy, "current_rows": current_rows, "current_samples": current_samples,
               "baseline_entries": baseline_entries, "primary_keys": primary_keys(list(baseline_entries)),
               "busy_reason": busy_reason}
    if len(context["primary_keys"]) < len(baseline_entries):
        notes.append("host-measured latency and energy are gated once per pipeline variant, on its first host row")
    if latency is None:
        notes.append(f"{LATENCY_FILE} is missing, so latency gates compare the p50 figures alone.")

    verdicts: list[CheckResult] = []
    for key, entry in baseline_entries.items():
        row = current_rows.get(key)
        if row is None:
            verdicts.append(CheckResult(_key_label(key), "(row)", "row", "missing", None, None, None, "",
                                        _missing_row_message(key, complete, variants_missing)))
            continue
        verdicts.extend(_check_row(entry, row, context))
    for key in current_rows.keys() - baseline_entries.keys():
        verdicts.append(CheckResult(_key_label(key), "(row)", "row", "new", None, None, None, "",
                                    "not in the baseline, so not gated; refresh the baseline to gate it"))
    unreferenced = sum(result.message == _NO_REFERENCE_FIGURE for result in verdicts)
    if unreferenced:
        notes.append(f"{plural(unreferenced, 'ratio gate')} skipped because the baseline's reference row has no "
                     "figure for them")
    report = CheckReport(str(results_dir), str(baseline_file), policy, tuple(verdicts), tuple(notes),
                         tuple(summary_notes))
    logger.info("check of %s: %d verdicts, %d failures", results_dir, len(verdicts), len(report.failures))
    return report


# ---------------------------------------------------------------------------------------------
# Renderers

_STATUS_STYLE = {"pass": "green", "improved": "cyan", "warn": "yellow", "regression": "bold red",
                 "missing": "bold red", "new": "blue", "skipped": "dim", "inconclusive": "magenta"}
_STATUS_ORDER = ("regression", "missing", "inconclusive", "warn", "improved", "new", "skipped", "pass")


def _sorted(results: tuple[CheckResult, ...]) -> list[CheckResult]:
    return sorted(results, key=lambda r: (_STATUS_ORDER.index(r.status), r.row, r.metric))


def _format_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _format_change(result: CheckResult) -> str:
    if result.change is None:
        return "–"
    if result.kind == "ratio":
        return f"{result.change:.3g}x"
    return f"{result.change * 100:+.2f} %"


_STATUS_NOUNS = {
    "regression": ("regression", "regressions"), "missing": ("missing figure", "missing figures"),
    "warn": ("warning", "warnings"), "improved": ("improvement", "improvements"), "new": ("new row", "new rows"),
    "skipped": ("skipped", "skipped"), "pass": ("passed", "passed"),
    "inconclusive": ("inconclusive", "inconclusive"),
}


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 row``, ``2 rows``: the count with the noun in the right number."""
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


def _counts(report: CheckReport) -> str:
    counts = {status: sum(r.status == status for r in report.results) for status in _STATUS_ORDER}
    return ", ".join(plural(count, *_STATUS_NOUNS[status]) for status, count in counts.items() if count)


#: Statuses hidden from the console table unless ``show_passing`` is set.
QUIET_STATUSES = frozenset({"pass", "skipped"})


def check_summary(report: CheckReport) -> str:
    """Return one line with the verdict, the count of each status and the report's summary notes.

    For example ``vqbench check FAILED: 1 regression, ...``.
    """
    line = f"vqbench check {'PASSED' if report.passed else 'FAILED'}: {_counts(report) or 'nothing gated'}"
    return "; ".join([line, *report.summary_notes])


def render_check_table(report: CheckReport, show_passing: bool = False):
    """Return a rich renderable: a one-line summary, then a table of the verdicts, failures first.

    Passing and skipped verdicts are left out of the table unless ``show_passing`` is True; the
    summary line still counts them.
    """
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    shown = [r for r in _sorted(report.results) if show_passing or r.status not in QUIET_STATUSES]
    hidden = len(report.results) - len(shown)
    summary = check_summary(report)
    if hidden:
        summary += f" ({plural(hidden, 'passing or skipped verdict')} not shown; pass --verbose to list them)"
    parts: list = [Text(summary, style="bold green" if report.passed else "bold red")]
    if shown:
        table = Table(caption=escape("; ".join(report.notes)) or None)
        for header in ("status", "row", "metric", "baseline", "current", "change", "p", "detail"):
            table.add_column(header, overflow="fold")
        for result in shown:
            table.add_row(
                f"[{_STATUS_STYLE[result.status]}]{result.status}[/]", escape(result.row), result.metric,
                _format_value(result.baseline_value), _format_value(result.current_value), _format_change(result),
                "–" if result.p_value is None else f"{result.p_value:.3g}", escape(result.message),
            )
        parts.append(table)
    elif report.notes:
        parts.append(Text("Note: " + "; ".join(report.notes), style="dim"))
    return Group(*parts)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_rows(results: list[CheckResult]) -> list[str]:
    lines = ["| status | row | metric | baseline | current | change | detail |", "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        cells = (r.status, r.row, r.metric, _format_value(r.baseline_value), _format_value(r.current_value),
                 _format_change(r), r.message)
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    return lines


def render_check_markdown(report: CheckReport) -> str:
    """Return a Markdown summary for a pull-request comment: failures in a table, the rest folded."""
    icon = "✅" if report.passed else "❌"
    lines = [f"### {icon} vqbench check {'passed' if report.passed else 'failed'}", "", _counts(report) + ".", ""]
    for note in report.summary_notes:
        lines += [f"**Warning:** {note}.", ""]
    notable = [r for r in _sorted(report.results) if r.status not in ("pass", "skipped")]
    if notable:
        lines += _markdown_rows(notable) + [""]
    for note in report.notes:
        lines.append(f"> Note: {note}")
    lines += ["", "<details><summary>All verdicts</summary>", ""]
    lines += _markdown_rows(_sorted(report.results))
    lines += ["", "</details>", ""]
    return "\n".join(lines)


#: Statuses written as skipped test cases in JUnit XML: neither passed nor failed.
_JUNIT_SKIPPED = frozenset({"skipped", "new", "inconclusive"})


def render_check_junit(report: CheckReport) -> str:
    """Return JUnit XML: one test case per verdict, failures for regressions and missing figures."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", {
        "name": "vqbench check",
        "tests": str(len(report.results)),
        "failures": str(len(report.failures)),
        "skipped": str(sum(r.status in _JUNIT_SKIPPED for r in report.results)),
    })
    for result in report.results:
        case = ET.SubElement(suite, "testcase", {"classname": result.row, "name": result.metric})
        if result.status in FAILING:
            failure = ET.SubElement(case, "failure", {"message": result.message, "type": result.status})
            failure.text = f"{result.message}\nlimit: {result.limit}"
        elif result.status in _JUNIT_SKIPPED:
            ET.SubElement(case, "skipped", {"message": result.message})
        else:
            ET.SubElement(case, "system-out").text = f"{result.status}: {result.message}"
    if report.summary_notes:
        ET.SubElement(suite, "system-out").text = "\n".join(report.summary_notes)
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def render_check_benchmark_json(report: CheckReport) -> str:
    """Return github-action-benchmark ``customSmallerIsBetter`` JSON: a list of {name, unit, value}.

    Accuracy is turned into an error rate (1 - accuracy) so that smaller is better for every entry.
    Ratio gates report the current median ratio to the reference.
    """
    entries = []
    for result in report.results:
        if result.current_value is None or result.kind == "row":
            continue
        name, value, unit = f"{result.row} {result.metric}", result.current_value, result.unit
        if result.metric == "lfw_accuracy_mean":
            name, value, unit = f"{result.row} lfw_error_rate", 1.0 - value, "fraction"
        elif result.kind == "ratio":
            name, unit = f"{result.row} {result.metric} ratio to reference", "ratio"
        entries.append({"name": name, "unit": unit, "value": value, "extra": result.message})
    return json.dumps(entries, indent=2) + "\n"


#: The report files that `vqbench check` writes, by option: the renderer of each.
CHECK_RENDERERS: dict[str, Callable[[CheckReport], str]] = {
    "--junit": render_check_junit,
    "--markdown": render_check_markdown,
    "--benchmark-json": render_check_benchmark_json,
}


def check_output_paths(results_dir: Path, outputs: Mapping[str, Path | None], baseline_file: Path | None,
                       policy_file: Path | None = None) -> None:
    """Raise DataError before a check when an output path is unusable (see ``check_output_path``) or given twice.

    ``outputs`` maps an option of ``CHECK_RENDERERS`` to its path, or to None when not given.
    """
    inputs = {"--baseline": baseline_file, "--policy": policy_file}
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output_path(results_dir, path, option, inputs)
        target = Path(path).resolve()
        if target in seen:
            raise DataError(f"{seen[target]} and {option} both name {path}; give each output its own file")
        seen[target] = option


def write_check_outputs(report: CheckReport, outputs: Mapping[str, Path | None],
                        policy_file: Path | None = None) -> list[Path]:
    """Render and write each report file in ``outputs`` (option -> path or None); return the paths written.

    Raises DataError (exit code 2) for a path that ``check_output_paths`` rejects or that cannot be written.
    """
    check_output_paths(Path(report.results_dir), outputs, Path(report.baseline_file), policy_file)
    written = []
    for option, path in outputs.items():
        if path is not None:
            written.append(write_output_text(Path(path), CHECK_RENDERERS[option](report), option))
    return written
