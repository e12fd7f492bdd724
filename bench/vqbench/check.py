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
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vqbench import __version__
from vqbench.errors import DataError
from vqbench.io import write_text_atomic
from vqbench.metrics.verification import average_ranks
from vqbench.report.loader import LATENCY_FILE, load_results
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
    """The content of a baseline file written by ``write_baseline``."""

    model_config = ConfigDict(extra="forbid")

    baseline_schema_version: int = BASELINE_SCHEMA_VERSION
    vqbench_version: str
    created_utc: str
    scenario_name: str
    source_run: str
    run_created_utc: str
    entries: list[BaselineEntry]


def _row_key(row: ResultRow) -> tuple[str, str, str | None, str | None]:
    return (row.pipeline, row.variant, row.link, row.edge_device)


def _key_label(key: tuple[str, str, str | None, str | None]) -> str:
    pipeline, variant, link, device = key
    extras = [part for part in (link, device) if part]
    return f"{pipeline}/{variant}" + (f" [{', '.join(extras)}]" if extras else "")


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
    """Store a run's figures and raw noisy samples as a baseline file (JSON), atomically."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    latency = _read_latency(results_dir)
    entries = [
        BaselineEntry(
            pipeline=row.pipeline, variant=row.variant, link=row.link, edge_device=row.edge_device,
            figures=_numeric_figures(row), samples=_row_samples(row, latency, max_samples),
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
        entries=entries,
    )
    baseline_file = Path(baseline_file)
    baseline_file.parent.mkdir(parents=True, exist_ok=True)
    text = baseline.model_dump_json(indent=1)
    write_text_atomic(baseline_file, text)
    logger.info("wrote baseline %s from %s (%d rows)", baseline_file, results_dir, len(entries))
    return baseline_file


def load_baseline(baseline_file: Path) -> Baseline:
    """Read a baseline file; raise DataError naming the file when it is missing or malformed."""
    path = Path(baseline_file)
    if not path.is_file():
        raise DataError(f"baseline file {path} not found; create it with `vqbench check --write-baseline`")
    try:
        return Baseline.model_validate_json(path.read_bytes())
    except ValidationError as error:
        raise DataError(
            f"baseline file {path} is malformed: {_first_error(error)}; rewrite it from a good run"
        ) from error


# ---------------------------------------------------------------------------------------------
# Checking

Status = Literal["pass", "improved", "warn", "regression", "missing", "new", "skipped"]
FAILING: frozenset[str] = frozenset({"regression", "missing"})


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

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when every gate passes, 1 when any figure regressed or is missing."""
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
        return CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, limit,
                           "the baseline has no usable reference figure for this ratio")
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
                       summary + test_note + inputs.method_note, p_value, unit="ratio")


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
    metric = "edge_energy_j_per_inference"
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
    current_samples = _row_samples(row, context["latency"], policy.max_samples)
    for gate in policy.noisy:
        if not entry.samples.get(gate.metric):
            continue
        if is_reference and gate.metric == gate.reference_metric:
            verdicts.append(CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, "",
                                        "this row is the reference for this metric, so its ratio is 1 by definition"))
            continue
        reference_samples = (
            _row_samples(current_reference, context["latency"], policy.max_samples)[gate.reference_metric]
            if current_reference is not None else []
        )
        inputs = _NoisyInputs(
            label, gate, entry.samples[gate.metric],
            base_reference.samples.get(gate.reference_metric, []) if base_reference else [],
            current_samples[gate.metric], reference_samples, _method_note(entry, row, gate.metric),
        )
        verdicts.append(_check_noisy(inputs, policy.p_value_threshold))
    return verdicts


def run_check(results_dir: Path, baseline_file: Path, policy_file: Path | None = None) -> CheckReport:
    """Gate the run in ``results_dir`` against ``baseline_file`` under a policy (default built in).

    Raises DataError (exit code 2) for a missing or malformed results, baseline or policy file.
    """
    results_dir = Path(results_dir)
    policy = load_policy(policy_file)
    baseline = load_baseline(baseline_file)
    results: RunResults = load_results(results_dir)
    latency = _read_latency(results_dir)

    current_rows = {_row_key(row): row for row in results.rows}
    baseline_entries = {entry.key: entry for entry in baseline.entries}
    context = {"policy": policy, "latency": latency, "current_rows": current_rows, "baseline_entries": baseline_entries,
               "primary_keys": primary_keys(list(baseline_entries))}
    notes = []
    if len(context["primary_keys"]) < len(baseline_entries):
        notes.append("host-measured latency and energy are gated once per pipeline variant, on its first host row")
    if latency is None:
        notes.append(f"{LATENCY_FILE} is missing, so latency gates compare the p50 figures alone.")
    if _find(baseline_entries, ("", "", None, None), policy.reference) is None:
        notes.append(f"the baseline has no {policy.reference.pipeline}/{policy.reference.variant} row, "
                     "so ratio gates are skipped; set `reference` in the policy")

    verdicts: list[CheckResult] = []
    for key, entry in baseline_entries.items():
        row = current_rows.get(key)
        if row is None:
            verdicts.append(CheckResult(_key_label(key), "(row)", "row", "missing", None, None, None, "",
                                        "this row is in the baseline but not in the run; was a pipeline removed?"))
            continue
        verdicts.extend(_check_row(entry, row, context))
    for key in current_rows.keys() - baseline_entries.keys():
        verdicts.append(CheckResult(_key_label(key), "(row)", "row", "new", None, None, None, "",
                                    "not in the baseline, so not gated; refresh the baseline to gate it"))
    report = CheckReport(str(results_dir), str(baseline_file), policy, tuple(verdicts), tuple(notes))
    logger.info("check of %s: %d verdicts, %d failures", results_dir, len(verdicts), len(report.failures))
    return report


# ---------------------------------------------------------------------------------------------
# Renderers

_STATUS_STYLE = {"pass": "green", "improved": "cyan", "warn": "yellow", "regression": "bold red",
                 "missing": "bold red", "new": "blue", "skipped": "dim"}
_STATUS_ORDER = ("regression", "missing", "warn", "improved", "new", "skipped", "pass")


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
    """Return one line with the verdict and the count of each status.

    For example ``vqbench check FAILED: 1 regression, ...``.
    """
    return f"vqbench check {'PASSED' if report.passed else 'FAILED'}: {_counts(report) or 'nothing gated'}"


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
    notable = [r for r in _sorted(report.results) if r.status not in ("pass", "skipped")]
    if notable:
        lines += _markdown_rows(notable) + [""]
    for note in report.notes:
        lines.append(f"> Note: {note}")
    lines += ["", "<details><summary>All verdicts</summary>", ""]
    lines += _markdown_rows(_sorted(report.results))
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def render_check_junit(report: CheckReport) -> str:
    """Return JUnit XML: one test case per verdict, failures for regressions and missing figures."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", {
        "name": "vqbench check",
        "tests": str(len(report.results)),
        "failures": str(len(report.failures)),
        "skipped": str(sum(r.status in ("skipped", "new") for r in report.results)),
    })
    for result in report.results:
        case = ET.SubElement(suite, "testcase", {"classname": result.row, "name": result.metric})
        if result.status in FAILING:
            failure = ET.SubElement(case, "failure", {"message": result.message, "type": result.status})
            failure.text = f"{result.message}\nlimit: {result.limit}"
        elif result.status in ("skipped", "new"):
            ET.SubElement(case, "skipped", {"message": result.message})
        else:
            ET.SubElement(case, "system-out").text = f"{result.status}: {result.message}"
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
