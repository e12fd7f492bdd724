"""The baseline file: its schema, ``write_baseline`` and ``load_baseline``.

``load_baseline`` checks the schema version before it validates the content, and validates as
strictly as the results loader: strict types, every figure a possible measurement, no key or
row given twice. The evaluation set, host load and gated figure checks of a loaded baseline are
here too.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vqbench import __version__
from vqbench.check.host_load import HostLoad, run_host_load
from vqbench.check.paths import check_output_path, write_output_text
from vqbench.check.policy import _ENERGY_METHOD_FIELDS, CheckPolicy, _first_error
from vqbench.check.rows import _key_description, _numeric_figures, _read_latency, _row_key, _row_samples
from vqbench.check.validation import (
    EvaluationSetKey,
    _common_value,
    _entry_problem,
    _validate_entry,
    _validate_entry_samples,
    _validate_run,
    run_evaluation_set,
    run_settings,
)
from vqbench.errors import DataError
from vqbench.json_input import parse_json_noting_repeats, repeated_key_location
from vqbench.report.loader import incomplete_cause, load_results, run_completeness

logger = logging.getLogger(__name__)

BASELINE_SCHEMA_VERSION = 1


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

    ``n_pairs``, ``folds``, ``settings`` and the host load fields are None in baselines written
    before they were recorded. Such baselines still load, and their pair count is read from the
    entries. A check against a baseline without ``settings`` notes that the settings were not
    compared.
    """

    model_config = ConfigDict(extra="forbid")

    baseline_schema_version: int = BASELINE_SCHEMA_VERSION
    vqbench_version: str
    created_utc: str
    scenario_name: str
    source_run: str
    run_created_utc: str
    #: Pairs and folds that every row of the source run was scored on. Folds are numbered from 1.
    n_pairs: int | None = Field(default=None, ge=0)
    folds: list[Annotated[int, Field(ge=1)]] | None = None
    #: The source run's ``CHECKED_SETTINGS`` entries of results.json ``assumptions``: data set,
    #: alignment and measurement settings.
    settings: dict[str, Any] | None = None
    #: The source run's highest 1-minute load average while timing and its logical CPU count,
    #: both recorded or both None.
    max_load_average_1min_while_timing: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cpu_logical_cores: int | None = Field(default=None, ge=1)
    entries: list[BaselineEntry]


def write_baseline(results_dir: Path, baseline_file: Path, max_samples: int = 256) -> Path:
    """Store a run's figures and raw noisy samples as a baseline file (JSON), atomically.

    Raises DataError (exit code 2) when ``baseline_file`` is a folder or a file of the run
    folder, or when it cannot be written. It is also raised for an incomplete run, a run without
    rows, a figure of the default policy's gates that ``figure_problem`` rejects, and any figure
    or sample that ``load_baseline`` would reject.
    """
    results_dir, baseline_file = Path(results_dir), Path(baseline_file)
    check_output_path(results_dir, baseline_file, "--write-baseline")
    results = load_results(results_dir)
    complete, variants_missing = run_completeness(results)
    if not complete:
        missing = ", ".join(variants_missing) or "(the run does not list them)"
        raise DataError(
            f"run {results_dir} is incomplete ({incomplete_cause(results)}) and has no rows for the variants "
            f"{missing}, so a baseline from it would not gate them; rerun the scenario to the end and record that run"
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
        settings=run_settings(results),
        max_load_average_1min_while_timing=None if load is None else load.max_load_1min,
        cpu_logical_cores=None if load is None else load.cpus,
        entries=entries,
    )
    problem = _baseline_problem(baseline)
    if problem is not None:
        # _validate_run reads only the gated figures and samples, so this catches the others, such as a NaN
        # latency sample of a stage that no default gate reads.
        raise DataError(f"run {results_dir} would give a baseline that cannot be loaded: {problem}; fix the "
                        "measurement and rerun `vqbench run` before recording this run")
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


def _check_baseline_version(path: Path, data: object) -> None:
    """Raise DataError unless the file declares ``baseline_schema_version`` 1, the version this module reads."""
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


def _baseline_problem(baseline: Baseline) -> str | None:
    """Return why ``baseline`` cannot be the output of ``write_baseline``, or None when it can.

    Applies ``_entry_problem`` to each entry, and checks that no two entries share a row key and
    that the host load is recorded in full or not at all.
    """
    first_index: dict[tuple[str, str, str | None, str | None], int] = {}
    for index, entry in enumerate(baseline.entries):
        label = _key_description(entry.key)
        problem = _entry_problem(f"entries.{index}", entry.figures, entry.samples, entry.methods)
        if problem is not None:
            return f"row {label} {problem}"
        if entry.key in first_index:
            return (f"entries.{first_index[entry.key]} and entries.{index} both have the key {label}, but a baseline "
                    "stores one entry per pipeline, variant, link and edge device")
        first_index[entry.key] = index

    load, cpus = baseline.max_load_average_1min_while_timing, baseline.cpu_logical_cores
    if (load is None) != (cpus is None):
        recorded, absent = (("cpu_logical_cores", "max_load_average_1min_while_timing") if load is None
                            else ("max_load_average_1min_while_timing", "cpu_logical_cores"))
        value = cpus if load is None else load
        return (f"{recorded} = {value:g} is recorded without {absent}, but a baseline records the host load with both "
                "fields or with neither")
    return None


def load_baseline(baseline_file: Path) -> Baseline:
    """Read a baseline file, raising DataError that names the file when it is missing, unreadable,
    malformed, of another schema version, or empty.

    A value of the wrong JSON type (``true`` or ``"0.99"`` for a figure), a key given twice and
    a value that ``_baseline_problem`` rejects raise DataError too.
    """
    path = Path(baseline_file)
    if not path.is_file():
        raise DataError(f"baseline file {path} not found; create it with `vqbench check --write-baseline`")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"baseline file {path} could not be read ({error}); check its permissions") from error
    data = parse_json_noting_repeats(content)
    _check_baseline_version(path, data)
    repeated = repeated_key_location(data)
    if repeated is not None:
        raise DataError(f"baseline file {path} gives the key '{repeated}' twice, so one of its values would be "
                        f"ignored; {_rerecord_hint(path)}")

    try:
        # Strict, as the results loader is, because a figure written as true or "0.99" is an edited file.
        baseline = Baseline.model_validate_json(content, strict=True)
    except ValidationError as error:
        raise DataError(f"baseline file {path} is malformed: {_first_error(error)}; {_rerecord_hint(path)}") from error
    problem = _baseline_problem(baseline)
    if problem is not None:
        raise DataError(f"baseline file {path} is invalid: {problem}; {_rerecord_hint(path)}")
    if not baseline.entries:
        raise DataError(f"baseline file {path} has no entries, so it gates nothing; {_rerecord_hint(path)}")
    return baseline


def _validate_baseline(baseline_file: Path, baseline: Baseline, policy: CheckPolicy) -> None:
    """Raise DataError when an entry has an invalid gated figure or sample, or lacks the samples of a noisy figure."""
    source = f"baseline file {baseline_file}"
    for entry in baseline.entries:
        label = _key_description(entry.key)
        _validate_entry(source, label, entry.figures, entry.samples, policy, _rerecord_hint(baseline_file))
        _validate_entry_samples(source, label, entry.figures, entry.samples, policy,
                                f"the file was edited or damaged; {_rerecord_hint(baseline_file)}")


def baseline_evaluation_set(baseline: Baseline) -> EvaluationSetKey:
    """Return the baseline's evaluation set; older baselines give the pair count of their entries only."""
    n_pairs = baseline.n_pairs
    if n_pairs is None:
        counts = [entry.figures.get("n_pairs") for entry in baseline.entries]
        common = _common_value(counts)
        n_pairs = None if common is None else int(common)
    folds = tuple(baseline.folds) if baseline.folds else None
    return EvaluationSetKey(baseline.scenario_name, n_pairs, folds)


def baseline_host_load(baseline: Baseline) -> HostLoad | None:
    """Return the baseline run's host load, or None for baselines written before it was recorded."""
    load, cpus = baseline.max_load_average_1min_while_timing, baseline.cpu_logical_cores
    if load is None or cpus is None:
        return None
    return HostLoad(load, cpus)
