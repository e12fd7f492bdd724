"""Verdicts of the regression gate and ``run_check``, which gates a run against a baseline.

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
  ratio threshold decides alone and the result states this. A ratio change that moves the
  baseline's own figure by less than the gate's floor (``min_change_j`` or ``min_change_ms``)
  passes either way, because the ratios of a figure of microseconds swing widely.

Host-measured figures repeat on every link and modeled-device row of a pipeline variant (the
cloud stage and the host's edge stage run once per variant). They are gated once per (pipeline,
variant), on its first row whose edge device is the host. A modeled device's edge energy on other
rows is gated as a deterministic figure when it comes from the profile's MAC rate (basis ``macs``)
and is not gated again when it is the host time scaled by a speed ratio.

A figure or row that the baseline has and the current run lacks is a failure, never a pass. A
noisy figure that the baseline's run did not measure (null, so without samples) gives a skipped
verdict, and so does a ratio whose baseline reference figure is 0, because a ratio to 0 is
undefined. Each skipped verdict's message gives the reason, and the summary line also names the
gates skipped because of a reference of 0.

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
limit. When the reference moved past the limit and the gated figure's own median did not, the
ratio's change comes from the reference (a burst of load during its stage, or an energy estimate
that follows it), so a judged verdict other than pass becomes ``inconclusive`` and the summary
line reports it. The cost is that a real change of the row that coincides with a move of the
reference, for instance a regression on a faster machine, is reported as inconclusive rather
than as a regression. ``on_reference_drift: gate`` judges such verdicts anyway. The 1-minute
load average lags, so the busy-host rule may miss a burst of load shorter than a minute. The
reference rule still catches such a burst when it falls on the reference.

Bad input raises DataError (exit code 2) rather than producing verdicts. That covers a results
file or baseline of another schema version, an empty baseline, and a baseline of another
evaluation set (scenario name, pair count, folds) or other settings (data set, alignment,
measurement; see ``CHECKED_SETTINGS``). It also covers a policy reference that the baseline lacks
and a gated figure that is NaN, infinite, negative, or a fraction above 1. Such values break the
results schema's rule that a figure which could not be measured is null, so no comparison with
them means anything. A baseline entry that records a noisy figure without the samples behind it
was edited or damaged, and is bad input too. Output files may not replace a file of the run
folder being checked, nor the baseline or policy file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from vqbench.check.baseline import (
    BaselineEntry,
    _validate_baseline,
    baseline_evaluation_set,
    baseline_host_load,
    load_baseline,
)
from vqbench.check.host_load import _host_load_notes, run_host_load
from vqbench.check.policy import (
    _ENERGY_METHOD_FIELDS,
    HOST_DEVICES,
    MODELED_EDGE_ENERGY_METRIC,
    MODELED_ENERGY_TOLERANCE,
    CheckPolicy,
    DeterministicGate,
    NoisyGate,
    ReferenceSpec,
    load_policy,
    metric_unit,
)
from vqbench.check.rows import _key_label, _read_latency, _row_key, _row_samples
from vqbench.check.stats import mann_whitney_greater, smallest_p_value
from vqbench.check.validation import (
    _check_same_evaluation_set,
    _check_same_settings,
    _validate_run,
    run_evaluation_set,
    run_settings,
)
from vqbench.errors import DataError
from vqbench.report.loader import LATENCY_FILE, incomplete_cause, load_results, run_completeness
from vqbench.results import ResultRow, RunResults
from vqbench.text import plural

logger = logging.getLogger(__name__)


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


def _ratios(values: list[float], reference: list[float]) -> np.ndarray:
    """Divide each value by the reference's median, which must be above 0."""
    return np.asarray(values, dtype=float) / float(np.median(reference))


def _zero_reference_message(reference_metric: str, side: str) -> str:
    return f"the reference {reference_metric} is 0 in {side}, and a ratio to 0 is undefined"


_NO_REFERENCE_FIGURE = "the baseline's reference row has no figure for this ratio (it was not measured in that run)"
_ZERO_REFERENCE_SKIP = ", so this ratio is not gated"


@dataclass(frozen=True)
class _NoisyInputs:
    label: str
    gate: NoisyGate
    base_values: list[float]
    base_reference: list[float]
    current_values: list[float]
    current_reference: list[float]
    method_note: str


def _check_noisy(inputs: _NoisyInputs, policy: CheckPolicy) -> CheckResult:
    gate, label = inputs.gate, inputs.label
    limit = f"median ratio to reference {gate.reference_metric} may grow at most {gate.max_ratio_growth:g}x"
    if gate.min_change > 0:
        limit += f" (a change under {gate.min_change:g} {metric_unit(gate.metric)} passes)"
    if not inputs.base_reference:
        return CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, limit, _NO_REFERENCE_FIGURE)
    if float(np.median(inputs.base_reference)) <= 0:
        return CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, limit,
                           _zero_reference_message(gate.reference_metric, "the baseline") + _ZERO_REFERENCE_SKIP)
    base_ratios = _ratios(inputs.base_values, inputs.base_reference)
    base_median = float(np.median(base_ratios))
    if not inputs.current_values:
        return CheckResult(label, gate.metric, "ratio", "missing", base_median, None, None, limit,
                           f"{gate.metric} is in the baseline but missing from this run")
    if not inputs.current_reference:
        return CheckResult(label, gate.metric, "ratio", "missing", base_median, None, None, limit,
                           f"the reference {gate.reference_metric} is missing from this run, so {gate.metric} "
                           "cannot be normalised")
    if float(np.median(inputs.current_reference)) <= 0:
        return CheckResult(label, gate.metric, "ratio", "missing", base_median, None, None, limit,
                           _zero_reference_message(gate.reference_metric, "this run")
                           + f", so {gate.metric} cannot be normalised; check how the reference was measured")
    current_ratios = _ratios(inputs.current_values, inputs.current_reference)
    current_median = float(np.median(current_ratios))
    growth = current_median / base_median if base_median > 0 else math.inf

    n1, n2 = len(current_ratios), len(base_ratios)
    test_note = ""
    p_value: float | None = None
    p_threshold = policy.p_value_threshold
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

    change = "grew" if growth >= 1 else "shrank"
    summary = f"ratio {change} {growth:.3g}x ({base_median:.4g} -> {current_median:.4g})"
    floor_note = _under_floor_note(inputs, growth)
    if floor_note and (growth > gate.max_ratio_growth or growth < 1 / gate.max_ratio_growth):
        status: Status = "pass"
        summary += floor_note
    elif growth > gate.max_ratio_growth and significant_up:
        status: Status = "regression"
    elif growth > gate.max_ratio_growth:
        status, summary = "warn", summary + " but not significantly"
    elif growth < 1 / gate.max_ratio_growth and significant_down:
        status = "improved"
    else:
        status = "pass"
    drift_note, reference_alone = _reference_drift(inputs)
    message = summary + test_note + inputs.method_note + drift_note
    if reference_alone and status != "pass" and policy.on_reference_drift == "inconclusive":
        status, message = "inconclusive", REFERENCE_DRIFT_PREFIX + message
    return CheckResult(label, gate.metric, "ratio", status, base_median, current_median, growth, limit,
                       message, p_value, unit="ratio")


def _under_floor_note(inputs: _NoisyInputs, growth: float) -> str:
    """Say so when the ratio's change, applied to the baseline's own figure, is under the gate's floor.

    Ratios of a tiny figure (cloud-raw's edge half, which only frames the bytes) swing by more
    than any sensible growth limit between quiet runs, while the figure moves by microseconds
    or microjoules. The floor keeps such swings from failing the gate. Returns "" otherwise.
    """
    floor = inputs.gate.min_change
    base_own = float(np.median(inputs.base_values))
    change = abs(base_own * (growth - 1)) if math.isfinite(growth) else math.inf
    if floor <= 0 or change >= floor:
        return ""
    unit = metric_unit(inputs.gate.metric)
    return (f", which moves the baseline's {base_own:.3g} {unit} by {change:.2g} {unit}, under the gate's "
            f"floor of {floor:g} {unit}, so it passes")


#: Starts the message of a ratio verdict that the reference's own move made inconclusive.
REFERENCE_DRIFT_PREFIX = "inconclusive: the reference moved past the limit while this figure did not; measured: "


def _reference_drift(inputs: _NoisyInputs) -> tuple[str, bool]:
    """Say how far the reference's own median moved when it moved past the growth limit.

    The ratio moves with the reference as much as with the gated figure, so a large move of the
    reference alone points at the reference's measurement (a busy host, a noisy energy estimate)
    rather than at the row. Returns the note ("" when the reference stayed within the limit) and
    whether the reference moved past the limit while the gated figure's own median did not.
    """
    base_reference = float(np.median(inputs.base_reference))
    current_reference = float(np.median(inputs.current_reference))
    reference_change = current_reference / base_reference
    limit = inputs.gate.max_ratio_growth
    if 1 / limit <= reference_change <= limit:
        return "", False
    base_own, current_own = float(np.median(inputs.base_values)), float(np.median(inputs.current_values))
    own_within = base_own > 0 and 1 / limit <= current_own / base_own <= limit
    own_change = f"{current_own / base_own:.3g}x" if base_own > 0 else "from 0"
    note = (f"; the reference's {inputs.gate.reference_metric} itself moved {reference_change:.3g}x "
            f"({base_reference:.4g} -> {current_reference:.4g}) while {inputs.gate.metric} moved {own_change}, "
            "so much of the ratio's change comes from the reference")
    return note, own_within


def _find(entries: dict, key: tuple, reference: ReferenceSpec):
    """Return the reference row on the same link and device as ``key``, else any reference row."""
    pipeline, variant = reference.pipeline, reference.variant
    exact = entries.get((pipeline, variant, key[2], key[3]))
    if exact is not None:
        return exact
    return next((value for k, value in entries.items() if k[:2] == (pipeline, variant)), None)


def _method_change(entry: BaselineEntry, row: ResultRow, metric: str) -> tuple[str, str] | None:
    """Return (baseline method, run method) when an energy figure was obtained by another method, else None."""
    field = _ENERGY_METHOD_FIELDS.get(metric)
    if field is None:
        return None
    before, after = entry.methods.get(metric), getattr(row, field)
    return (before, after) if before and after and before != after else None


def _method_note(entry: BaselineEntry, row: ResultRow, metric: str) -> str:
    change = _method_change(entry, row, metric)
    if change is None:
        return ""
    return f"; method changed from {change[0]} to {change[1]}, so the ratios compare different methods"


def _method_changes(baseline_entries: dict, current_rows: dict, gated_keys: set[tuple],
                    policy: CheckPolicy) -> list[tuple[str, str]]:
    """Return (baseline method, run method) for each noisy energy gate whose method differs."""
    changes = []
    for key in sorted(gated_keys & current_rows.keys(), key=str):
        for gate in policy.noisy:
            change = _method_change(baseline_entries[key], current_rows[key], gate.metric)
            if change is not None:
                changes.append(change)
    return changes


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
            # _validate_baseline has ensured that the baseline's figure is null, so it was not measured.
            verdicts.append(CheckResult(label, gate.metric, "ratio", "skipped", None, None, None, "",
                                        f"{gate.metric} was not measured in the baseline's run, so it is not gated"))
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
        verdicts.append(_mark_busy(_check_noisy(inputs, policy), context["busy_reason"]))
    return verdicts


def _mark_busy(verdict: CheckResult, busy_reason: str | None) -> CheckResult:
    """Turn a judged noisy verdict into ``inconclusive`` when a busy host makes its ratio unreliable."""
    if busy_reason is None:
        return verdict
    message = verdict.message
    if verdict.status == "inconclusive" and message.startswith(REFERENCE_DRIFT_PREFIX):
        message = message.removeprefix(REFERENCE_DRIFT_PREFIX)  # the busy host is the likelier cause
    elif verdict.status not in _JUDGED_STATUSES:
        return verdict
    return replace(verdict, status="inconclusive", message=f"inconclusive: {busy_reason}; measured: {message}")


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


def _missing_row_message(key: tuple, complete: bool, variants_missing: tuple[str, ...], cause: str) -> str:
    """Explain a baseline row that the run lacks; ``cause`` is ``incomplete_cause`` of an incomplete run."""
    if complete:
        return "this row is in the baseline but not in the run; was a pipeline removed?"
    if f"{key[0]}/{key[1]}" in variants_missing:
        return f"this row is in the baseline but not in the run, which is incomplete because {cause}"
    return f"this row is in the baseline but not in the run, which is incomplete because {cause}; that may explain it"


def run_check(results_dir: Path, baseline_file: Path, policy_file: Path | None = None) -> CheckReport:
    """Gate the run in ``results_dir`` against ``baseline_file`` under a policy (default built in).

    Raises DataError (exit code 2) for bad input. That covers a missing, malformed or
    unsupported results, baseline or policy file, and an empty baseline. It also covers a
    baseline of another evaluation set or other settings, a policy reference that the baseline
    lacks, a gated figure that ``figure_problem`` rejects, and a baseline entry that records a
    noisy figure without its samples.
    """
    results_dir, baseline_file = Path(results_dir), Path(baseline_file)
    policy = load_policy(policy_file)
    baseline = load_baseline(baseline_file)
    results: RunResults = load_results(results_dir)
    _check_same_evaluation_set(results_dir, run_evaluation_set(results), baseline_file,
                               baseline_evaluation_set(baseline))
    settings_notes = _check_same_settings(results_dir, run_settings(results), baseline_file, baseline.settings)
    latency = _read_latency(results_dir)
    current_rows = {_row_key(row): row for row in results.rows}
    current_samples = {key: _row_samples(row, latency, policy.max_samples) for key, row in current_rows.items()}
    _validate_baseline(baseline_file, baseline, policy)
    _validate_run(results_dir, results, current_samples, policy)
    baseline_entries = {entry.key: entry for entry in baseline.entries}
    _check_reference(policy, baseline_entries, baseline_file)

    busy_reason, notes, summary_notes = _host_load_notes(
        run_host_load(results_dir, results), baseline_host_load(baseline), policy)
    notes.extend(settings_notes)
    complete, variants_missing = run_completeness(results)
    if not complete:
        missing = ", ".join(variants_missing) or "not listed"
        summary_notes.append(f"this run is incomplete ({incomplete_cause(results)}), variants missing: {missing}")
    context = {"policy": policy, "current_rows": current_rows, "current_samples": current_samples,
               "baseline_entries": baseline_entries, "primary_keys": primary_keys(list(baseline_entries)),
               "busy_reason": busy_reason}
    if len(context["primary_keys"]) < len(baseline_entries):
        notes.append("host-measured latency and energy are gated once per pipeline variant, on its first host row")
    if latency is None and results.rows:
        notes.append(f"{LATENCY_FILE} is missing, so latency gates compare the p50 figures alone.")

    verdicts: list[CheckResult] = []
    for key, entry in baseline_entries.items():
        row = current_rows.get(key)
        if row is None:
            verdicts.append(CheckResult(_key_label(key), "(row)", "row", "missing", None, None, None, "",
                                        _missing_row_message(key, complete, variants_missing, incomplete_cause(results))))
            continue
        verdicts.extend(_check_row(entry, row, context))
    for key in current_rows.keys() - baseline_entries.keys():
        verdicts.append(CheckResult(_key_label(key), "(row)", "row", "new", None, None, None, "",
                                    "not in the baseline, so not gated; refresh the baseline to gate it"))
    unreferenced = sum(result.message == _NO_REFERENCE_FIGURE for result in verdicts)
    if unreferenced:
        notes.append(f"{plural(unreferenced, 'ratio gate')} skipped because the baseline's reference row has no "
                     "figure for them")
    drifted = sum(result.message.startswith(REFERENCE_DRIFT_PREFIX) for result in verdicts)
    if drifted:
        reference = f"{policy.reference.pipeline}/{policy.reference.variant}"
        summary_notes.append(f"{plural(drifted, 'ratio verdict')} inconclusive because the reference {reference} "
                             "moved past the limit while the gated figure did not; rerun to tell a noisy reference "
                             "from a change (policy on_reference_drift: gate judges them anyway)")
    method_changes = _method_changes(baseline_entries, current_rows, context["primary_keys"], policy)
    if method_changes:
        # A summary note, because a pass across methods does not show that the energy held.
        described = "; ".join(f"{before} to {after}" for before, after in sorted(set(method_changes)))
        summary_notes.append(f"{plural(len(method_changes), 'energy gate')} compare figures obtained by another "
                             f"method than the baseline's ({described}); record a baseline on this kind of machine "
                             "to gate like with like")
    zero_reference = sum(result.message.endswith(_ZERO_REFERENCE_SKIP) for result in verdicts)
    if zero_reference:
        # A summary note, because these gates are off although the baseline records a figure.
        summary_notes.append(f"{plural(zero_reference, 'ratio gate')} skipped because the baseline's reference "
                             "figure is 0 and a ratio to 0 is undefined; re-record the baseline from a run whose "
                             "reference was measured")
    report = CheckReport(str(results_dir), str(baseline_file), policy, tuple(verdicts), tuple(notes),
                         tuple(summary_notes))
    logger.info("check of %s: %d verdicts, %d failures", results_dir, len(verdicts), len(report.failures))
    return report
