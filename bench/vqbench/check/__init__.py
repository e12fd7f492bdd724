"""The regression gate of ``vqbench check``: compare a run with a stored baseline under a policy.

Modules, each importing only modules listed above it:

* ``policy``: the gate policy, its defaults and ``load_policy``.
* ``stats``: the one-sided Mann-Whitney U test.
* ``rows``: row keys and labels, and the figures and noisy samples read from a run's rows.
* ``validation``: checks of gated figures and samples, and of the evaluation set and settings.
* ``host_load``: a run's host load and the busy-host rule.
* ``paths``: checks and atomic writes of output paths.
* ``baseline``: the baseline file, ``write_baseline`` and ``load_baseline``.
* ``verdicts``: the verdicts and ``run_check``. Its docstring explains how the gate decides.
* ``output``: the console table, Markdown, JUnit XML and benchmark JSON, and ``write_check_outputs``.

The package re-exports the public names of these modules.
"""

from vqbench.check.baseline import (
    BASELINE_SCHEMA_VERSION,
    Baseline,
    BaselineEntry,
    baseline_evaluation_set,
    baseline_host_load,
    load_baseline,
    write_baseline,
)
from vqbench.check.host_load import HostLoad, run_host_load
from vqbench.check.output import (
    CHECK_RENDERERS,
    QUIET_STATUSES,
    check_output_paths,
    check_summary,
    render_check_benchmark_json,
    render_check_junit,
    render_check_markdown,
    render_check_table,
    write_check_outputs,
)
from vqbench.check.paths import check_output_path, write_output_text
from vqbench.check.policy import (
    DEFAULT_ENERGY_RATIO_GROWTH,
    DEFAULT_LATENCY_RATIO_GROWTH,
    HOST_DEVICES,
    MODELED_EDGE_ENERGY_METRIC,
    MODELED_ENERGY_TOLERANCE,
    NOISY_METRICS,
    NUMERIC_COLUMNS,
    CheckPolicy,
    DeterministicGate,
    NoisyGate,
    ReferenceSpec,
    load_policy,
)
from vqbench.check.stats import (
    EXACT_TEST_MAX_SAMPLES,
    UTestResult,
    exact_u_counts,
    mann_whitney_greater,
    normal_p_value,
    smallest_p_value,
)
from vqbench.check.validation import (
    CHECKED_SETTINGS,
    FRACTION_METRICS,
    MAY_BE_NEGATIVE,
    EvaluationSetKey,
    figure_problem,
    run_evaluation_set,
    run_settings,
)
from vqbench.check.verdicts import FAILING, CheckReport, CheckResult, Status, plural, primary_keys, run_check

__all__ = [
    "BASELINE_SCHEMA_VERSION",
    "CHECKED_SETTINGS",
    "CHECK_RENDERERS",
    "DEFAULT_ENERGY_RATIO_GROWTH",
    "DEFAULT_LATENCY_RATIO_GROWTH",
    "EXACT_TEST_MAX_SAMPLES",
    "FAILING",
    "FRACTION_METRICS",
    "HOST_DEVICES",
    "MAY_BE_NEGATIVE",
    "MODELED_EDGE_ENERGY_METRIC",
    "MODELED_ENERGY_TOLERANCE",
    "NOISY_METRICS",
    "NUMERIC_COLUMNS",
    "QUIET_STATUSES",
    "Baseline",
    "BaselineEntry",
    "CheckPolicy",
    "CheckReport",
    "CheckResult",
    "DeterministicGate",
    "EvaluationSetKey",
    "HostLoad",
    "NoisyGate",
    "ReferenceSpec",
    "Status",
    "UTestResult",
    "baseline_evaluation_set",
    "baseline_host_load",
    "check_output_path",
    "check_output_paths",
    "check_summary",
    "exact_u_counts",
    "figure_problem",
    "load_baseline",
    "load_policy",
    "mann_whitney_greater",
    "normal_p_value",
    "plural",
    "primary_keys",
    "render_check_benchmark_json",
    "render_check_junit",
    "render_check_markdown",
    "render_check_table",
    "run_check",
    "run_evaluation_set",
    "run_host_load",
    "run_settings",
    "smallest_p_value",
    "write_baseline",
    "write_check_outputs",
    "write_output_text",
]
