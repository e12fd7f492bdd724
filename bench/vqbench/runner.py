"""Run a scenario: data -> pipelines -> accuracy and measurements -> results files -> reports.

Phases, in order:

1. check every input that needs no measurement: model cards, the run folder, links, devices
   and their speed ratios, grid locations and hourly files, meters and their options, and the
   HTTP service's variants;
2. resolve the data set (download LFW when the scenario allows it) and read the images;
3. align every image once (cached) and embed the originals with the teacher (cached);
4. remove an old run from the run folder (``--overwrite``), then time and meter the halves of
   every variant together, the variants taking turns (``vqbench.measure``), so that a drift
   of the host's speed affects them alike;
5. for each variant: score every pair (``vqbench.accuracy``) and size each half, then rewrite
   the results files atomically, so an interrupted run keeps every variant it finished;
6. render the HTML and PDF reports from the results files.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from vqbench import __version__
from vqbench.accuracy import align_all, pair_scores, score_variant
from vqbench.data.cache import ArrayCache, default_cache_dir
from vqbench.data.dataset import EvaluationSet, load_pairs, missing_data_message, read_images, resolve_dataset_root
from vqbench.deployment import VariantMeasurement, build_rows, check_deployment
from vqbench.environment import PROJECT_DIR, HostLoadMonitor, collect_environment
from vqbench.errors import DataError, RunError, ScenarioError, VqbenchError
from vqbench.io import write_atomic, write_json_atomic, write_text_atomic
from vqbench.measure import (
    LATENCY_ROUNDS,
    HalfEnergy,
    LatencySamples,
    measure_energies,
    measure_latencies,
    measure_peak_rss,
)
from vqbench.metrics.verification import evaluate_verification
from vqbench.pipelines.base import Components, Pipeline
from vqbench.pipelines.registry import build_pipelines
from vqbench.results import RESULT_COLUMNS, ResultRow, RunResults
from vqbench.scenario import Scenario, expand_path, is_meter_path_option, resolve_meter_options
from vqbench.text import plural

logger = logging.getLogger(__name__)

#: Chips per variant saved beside their reconstructions for the report.
RECONSTRUCTION_SAMPLES = 4


class ProgressReporter(Protocol):
    """Progress display interface used by the runner (the CLI passes a rich one)."""

    def phase(self, description: str, total: int | None) -> Any: ...

    def advance(self, task: Any, amount: int = 1) -> None: ...

    def done(self, task: Any, finished: bool = True) -> None: ...


class SilentProgress:
    """A progress reporter that shows nothing (library use and tests)."""

    def phase(self, description: str, total: int | None) -> None:
        logger.info("%s", description)

    def advance(self, task: Any, amount: int = 1) -> None:
        return None

    def done(self, task: Any, finished: bool = True) -> None:
        return None


@dataclass
class RunOutcome:
    """Outcome of a run: its folder, results, failed variants and duration."""

    out_dir: Path
    results: RunResults
    failures: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class _RunTables:
    rows: list[ResultRow] = field(default_factory=list)
    scores: list[pd.DataFrame] = field(default_factory=list)
    latency: list[pd.DataFrame] = field(default_factory=list)
    energy: list[pd.DataFrame] = field(default_factory=list)
    #: Variants not measured yet, in run order; results.json is marked incomplete while any remain.
    missing: list[str] = field(default_factory=list)
    #: Variants that raised a VqbenchError and have no rows; they also mark results.json incomplete.
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _VariantFrames:
    """One variant's per-pair scores, per-sample latencies and energy windows."""

    scores: pd.DataFrame
    latency: pd.DataFrame
    energy: pd.DataFrame


@contextmanager
def _phase(progress: ProgressReporter, description: str, total: int | None) -> Iterator[Any]:
    task = progress.phase(description, total)
    try:
        yield task
    except BaseException:
        progress.done(task, finished=False)
        raise
    progress.done(task)


def default_out_dir(scenario: Scenario, base: Path | None = None) -> Path:
    """Return ``reports/<scenario>-<UTC timestamp>/`` under ``base`` (default: the working folder)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return (base or Path.cwd()) / "reports" / f"{scenario.name}-{stamp}"


def prepare_evaluation(scenario: Scenario, scenario_dir: Path) -> EvaluationSet:
    """Find (or download) the data set, read its pairs and images."""
    config = scenario.dataset
    root = resolve_dataset_root(config, scenario_dir)
    if config.kind == "lfw" and not config.pairs_file and not (root / "pairs.txt").is_file():
        if not config.download:
            raise DataError(missing_data_message(root))
        from vqbench.data.fetch import fetch_lfw

        logger.info("LFW is missing at %s; downloading it", root)
        fetch_lfw(root.parent)
    pairs = load_pairs(config, root, scenario_dir)
    if not pairs:
        raise DataError(f"the data set at {root} yields no pairs for folds {config.folds}; check dataset.folds")
    evaluation = read_images(pairs, root)
    if len({pair.fold for pair in evaluation.pairs}) < 2:
        raise DataError(
            f"only fold {sorted({pair.fold for pair in evaluation.pairs})} has pairs with readable images under {root}; "
            "the protocol needs 2 or more folds, so check dataset.folds and the images of the other folds"
        )
    return evaluation


#: Files a run writes into its folder; ``--overwrite`` removes them before a new run writes.
RUN_FILES = (
    "results.json", "results.csv", "scores.parquet", "latency.parquet", "energy.parquet", "environment.json",
    "report.html", "report.pdf",
)
SAMPLES_DIR = "samples"


class RunFolder:
    """The run folder: checked before the run starts, and cleared of an old run only when the new one writes.

    ``check`` raises ScenarioError when the folder is a file, cannot be created, or already
    contains a run without ``overwrite``. ``claim`` removes the old run's files just before the
    new run writes its first one, so a scenario that fails its checks or its data loading
    leaves the old run as it was. ``discard`` removes the folders that ``check`` created when
    the run stops before ``claim``.
    """

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = path
        self.overwrite = overwrite
        self.claimed = False
        self._created: Path | None = None

    def check(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise ScenarioError(f"--out {path} is a file, not a folder; pass a folder for the run's files")
        if (path / "results.json").exists() and not self.overwrite:
            raise ScenarioError(
                f"{path} already contains a run (results.json); choose another --out folder, "
                "or pass --overwrite to replace that run"
            )
        missing = [folder for folder in (path, *path.parents) if not folder.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ScenarioError(
                f"cannot create the run folder {path}: {error.strerror or error}; pass a writable --out folder"
            ) from error
        self._created = missing[-1] if missing else None

    def claim(self) -> None:
        if self.claimed:
            return
        self.claimed = True
        if not (self.path / "results.json").exists():
            return
        logger.warning("replacing the run in %s", self.path)
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / SAMPLES_DIR, ignore_errors=True)

    def discard(self) -> None:
        if self.claimed or self._created is None:
            return
        for folder in (self.path, *self.path.parents):
            try:
                folder.rmdir()  # removes only an empty folder
            except OSError:
                return
            if folder == self._created:
                return


def _cache_root(scenario: Scenario, scenario_dir: Path) -> Path:
    """Return the scenario's cache folder, created; raise ScenarioError if it cannot be."""
    root = expand_path(scenario.cache_dir, scenario_dir) if scenario.cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        setting = f"cache_dir {scenario.cache_dir!r}" if scenario.cache_dir else f"the cache folder {root} (VQBENCH_CACHE_DIR)"
        raise ScenarioError(f"cannot create {setting}: {error.strerror or error}; choose a writable folder") from error
    return root


def run_scenario(
    scenario: Scenario,
    scenario_path: Path,
    out_dir: Path,
    progress: ProgressReporter | None = None,
    overwrite: bool = False,
) -> RunOutcome:
    """Run every pipeline variant of a scenario and write results and reports into ``out_dir``.

    Every input that can be checked without measuring is checked before the data set is read:
    models, the run folder, links and devices, grid locations, the cache folder, meters and
    their options, and the HTTP service. An old run in ``out_dir`` is removed only when the new
    run is about to write its first file. On KeyboardInterrupt the variants already
    measured are kept: results.json is rewritten with ``complete`` false and the variants not
    reached, environment.json is written, and the interrupt is raised again. A variant that
    raises a VqbenchError is logged and skipped, and results.json lists it in
    ``variants_failed`` and ``variants_missing`` with ``complete`` false. RunError is raised
    when every variant failed.
    """
    progress = progress or SilentProgress()
    started = time.perf_counter()
    scenario_dir = scenario_path.resolve().parent
    # Building the pipelines reads and checks every model card (files, kind, payload), so a
    # scenario that names a wrong or damaged model fails before the run folder or the data are touched.
    components = Components(scenario.alignment, scenario.teacher)
    pipelines = build_pipelines(scenario.pipelines, components)
    for pipeline in pipelines:
        pipeline.check_cloud_model()
    run_folder = RunFolder(out_dir, overwrite)
    run_folder.check()

    meters: list[Any] = []
    http: Any = None
    try:
        # Inputs that need no measurement are checked before the data set is read and the faces aligned.
        check_deployment(scenario.deployment, pipelines)
        assumptions = _assumptions(scenario, scenario_dir)
        cache_root = _cache_root(scenario, scenario_dir)
        meters = _create_meters(scenario, scenario_dir)
        meter, meter_status, meter_warnings = _select_meter(meters)
        http = _open_transport(scenario, scenario_path, scenario_dir, pipelines)

        evaluation = prepare_evaluation(scenario, scenario_dir)
        logger.info(
            "%d pairs in folds %s, %d images (%d unreadable, %d pairs skipped)",
            len(evaluation.pairs), evaluation.folds, len(evaluation.images),
            len(evaluation.skipped_images), evaluation.skipped_pairs,
        )
        chip_cache = ArrayCache(cache_root, "chips")
        embedding_cache = ArrayCache(cache_root, "embeddings")
        check_identity_leakage(pipelines, evaluation)
        configs = _variant_configs(scenario, components)

        with _phase(progress, "Aligning faces", len(evaluation.images)) as task:
            aligned = align_all(evaluation, components, chip_cache, lambda n: progress.advance(task, n))
        detection_fallbacks = _count_fallbacks(evaluation, aligned.detected)

        context = _RunContext(scenario, scenario_path, out_dir, evaluation, assumptions)
        context.warnings.extend(f"image skipped: {path}: {reason}" for path, reason in evaluation.skipped_images.items())
        context.meter_status = meter_status
        context.warnings.extend(meter_warnings)
        context.http = http
        context.run_folder = run_folder
        tables, failures = _run_variants(pipelines, configs, context, aligned, embedding_cache, meter, progress,
                                         detection_fallbacks)
    finally:
        for created in meters:
            created.close()
        if http is not None:
            http.close()
        run_folder.discard()

    results = _write_results(context, tables)
    context.write_environment()
    _render_reports(scenario, out_dir)
    duration_s = time.perf_counter() - started
    logger.info(
        "run finished in %.1f s (chip cache: %d hits, embedding cache: %d hits)",
        duration_s, chip_cache.hits, embedding_cache.hits,
    )
    if not tables.rows:
        raise RunError(f"every pipeline variant failed; see {out_dir / 'results.json'}: {'; '.join(failures)}")
    return RunOutcome(out_dir=out_dir, results=results, failures=failures, duration_s=duration_s)


def _run_variants(
    pipelines: list[Pipeline],
    configs: dict[tuple[str, str], dict],
    context: "_RunContext",
    aligned: Any,
    embedding_cache: ArrayCache,
    meter: Any,
    progress: ProgressReporter,
    detection_fallbacks: int,
) -> tuple[_RunTables, list[str]]:
    """Time and meter all variants together, then score and size each in turn.

    Return the tables and the failures. The results files are rewritten after each variant.
    """
    scenario = context.scenario
    tables = _RunTables()
    failures: list[str] = []
    labels = [f"{pipeline.kind}/{pipeline.variant}" for pipeline in pipelines]
    tables.missing = list(labels)
    try:
        halves = _measure_halves(pipelines, context, meter, progress)
        # Every check has passed and every variant is measured, so an old run is replaced only now.
        context.run_folder.claim()
        for position, (pipeline, label) in enumerate(zip(pipelines, labels)):
            tables.missing = labels[position:]
            try:
                measured, frames = _run_variant(
                    pipeline, configs[(pipeline.kind, pipeline.variant)], context, aligned, embedding_cache,
                    halves[position], progress,
                )
                measured.detection_fallbacks = detection_fallbacks
                rows = build_rows(measured, scenario.deployment, context.intensities)
                # The per-pair and per-sample tables join the results only with the variant's rows,
                # so a variant that fails or is interrupted leaves no trace in the Parquet files.
                tables.rows.extend(rows)
                tables.scores.append(frames.scores)
                tables.latency.append(frames.latency)
                tables.energy.append(frames.energy)
            except VqbenchError as error:
                logger.error("variant %s failed: %s", label, error)
                failures.append(f"{label}: {error}")
                tables.failed.append(label)
                context.warnings.append(f"variant {label} failed and has no results: {error}")
                tables.missing = labels[position + 1 :]
                _write_results(context, tables)
                continue
            tables.missing = labels[position + 1 :]
            _write_results(context, tables)
    except KeyboardInterrupt:
        _keep_interrupted_run(context, tables)
        raise
    return tables, failures


@dataclass(frozen=True)
class _MeasuredHalves:
    """A variant's latency samples and the energy of its halves, or the error that stopped them."""

    latency: LatencySamples | None
    energy: tuple[HalfEnergy, HalfEnergy] | None
    error: VqbenchError | None = None


def _measure_halves(
    pipelines: list[Pipeline], context: "_RunContext", meter: Any, progress: ProgressReporter
) -> list[_MeasuredHalves]:
    """Time, then meter, every variant's halves with the variants interleaved (see vqbench.measure)."""
    settings = context.scenario.measurement
    sample_images = context.evaluation.images[: settings.latency_samples]
    if len(sample_images) < settings.latency_samples:
        shortfall = (f"measurement.latency_samples is {settings.latency_samples} but the evaluation set has only "
                     f"{plural(len(sample_images), 'image')}, so each half was timed on {len(sample_images)}")
        logger.warning("%s", shortfall)
        context.warnings.append(shortfall)
    count = plural(len(pipelines), "variant")

    def after_round(task: Any) -> Callable[[], None]:
        def advance() -> None:
            progress.advance(task)
            context.check_host_load()
        return advance

    context.check_host_load()
    rounds = min(LATENCY_ROUNDS, len(sample_images))
    with _phase(progress, f"Timing {count}, interleaved", rounds) as task:
        latencies = measure_latencies(pipelines, sample_images, settings.warmup, context.http, after_round(task))
    timed = [index for index, latency in enumerate(latencies) if isinstance(latency, LatencySamples)]
    metered: dict[int, Any] = {}
    # With every variant failed there is nothing to meter, and no phase to announce.
    if timed:
        with _phase(progress, f"Metering energy of {plural(len(timed), 'variant')}, interleaved", settings.repeats) as task:
            energies = measure_energies(
                [pipelines[index] for index in timed], sample_images, [latencies[index].payloads for index in timed],
                meter, settings, after_round(task),
            )
        metered = dict(zip(timed, energies))
    halves = []
    for index, latency in enumerate(latencies):
        energy = metered.get(index)
        if isinstance(latency, VqbenchError):
            halves.append(_MeasuredHalves(None, None, latency))
        elif isinstance(energy, VqbenchError):
            halves.append(_MeasuredHalves(None, None, energy))
        else:
            halves.append(_MeasuredHalves(latency, energy))
    return halves


def _variant_configs(scenario: Scenario, components: Components) -> dict[tuple[str, str], dict]:
    """Map each variant to the scenario entry it came from, for the memory probe's child process."""
    mapping: dict[tuple[str, str], dict] = {}
    for config in scenario.pipelines:
        for pipeline in build_pipelines([config], components):
            mapping[(pipeline.kind, pipeline.variant)] = config.model_dump()
    return mapping


def check_identity_leakage(pipelines: list[Pipeline], evaluation: EvaluationSet) -> None:
    """Refuse to score a trained model on folds holding any person it was trained on."""
    for pipeline in pipelines:
        trained_on: frozenset[str] | None = getattr(pipeline, "training_people", None)
        if not trained_on:
            continue
        folds_seen: dict[int, set[str]] = {}
        for pair in evaluation.pairs:
            for person in (pair.identity_a, pair.identity_b):
                if person in trained_on:
                    folds_seen.setdefault(pair.fold, set()).add(person)
        if folds_seen:
            allowed = [fold for fold in evaluation.folds if fold not in folds_seen]
            example = sorted(next(iter(folds_seen.values())))[0]
            if allowed:
                choice = f"of those selected, allowed: {allowed}"
            else:
                # View 2 folds share no people, so every fold the card does not list as trained on is allowed.
                train_folds = getattr(getattr(pipeline, "card", None), "train_folds", None)
                unseen = [fold for fold in range(1, 11) if train_folds is not None and fold not in train_folds]
                choice = f"none of those selected is allowed; its card allows folds {unseen}" if unseen else (
                    "none of those selected is allowed")
            raise ScenarioError(
                f"{pipeline.kind}/{pipeline.variant} was trained on people in folds {sorted(folds_seen)} "
                f"(for example {example}); scoring it there would leak identities. "
                f"Set dataset.folds to folds it did not see ({choice})"
            )


def _count_fallbacks(evaluation: EvaluationSet, detected: np.ndarray) -> int:
    """Count the evaluated images whose face the detector missed."""
    return int((~detected).sum())


class _RunContext:
    """State shared by the phases of one run: paths, warnings, assumptions, the meter."""

    def __init__(
        self, scenario: Scenario, scenario_path: Path, out_dir: Path, evaluation: EvaluationSet, assumptions: dict
    ) -> None:
        self.scenario = scenario
        self.scenario_path = scenario_path
        self.out_dir = out_dir
        self.evaluation = evaluation
        self.assumptions = assumptions
        self.warnings: list[str] = list(assumptions.pop("_warnings", []))
        self.meter_status: dict[str, dict[str, object]] = {}
        self.created_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.intensities = (
            float(assumptions["grid_intensity_edge"]["gco2e_per_kwh"]),
            float(assumptions["grid_intensity_cloud"]["gco2e_per_kwh"]),
        )
        self.http: Any = None
        self.run_folder: RunFolder | None = None
        self.host_load = HostLoadMonitor()

    def check_host_load(self) -> None:
        """Record the host's load before a timing phase, and warn once if other work competes for the CPUs."""
        _, warning = self.host_load.sample()
        if warning:
            self.warnings.append(warning)

    def write_environment(self) -> None:
        environment = collect_environment(meters=self.meter_status, project_dir=PROJECT_DIR)
        environment["max_load_average_1min_while_timing"] = round(self.host_load.max_load_1min, 2)
        write_json_atomic(self.out_dir / "environment.json", environment)


def _create_meters(scenario: Scenario, scenario_dir: Path) -> list[Any]:
    """Build every host meter the scenario lists, with its options.

    Raises ScenarioError on an unknown name or option, and on a path option that is empty or not
    found. A meter that checks its input when built, such as the external meter's trace, raises
    MeterError (exit code 2) for a mistake in it. Path options resolve against the scenario's folder, like the scenario's other paths. A meter
    that is simply absent here (no RAPL on a VM) falls back to the next one, but a path that the
    user set and mistyped is an input error.
    """
    from vqbench.meters.registry import create_meter

    meters: list[Any] = []
    try:
        for name in scenario.meters.host:
            options = resolve_meter_options(scenario.meters.options.get(name, {}), scenario_dir)
            for option, value in options.items():
                if is_meter_path_option(option) and isinstance(value, str) and not Path(value).exists():
                    raise ScenarioError(
                        f"meters.options.{name}.{option} not found: {value}; fix the path (relative paths "
                        "resolve against the scenario file's folder) or remove the option"
                    )
            meters.append(create_meter(name, **options))
    except BaseException:
        for meter in meters:
            meter.close()
        raise
    return meters


def _select_meter(meters: list[Any]) -> tuple[Any, dict[str, dict[str, object]], list[str]]:
    """Probe the meters in order; return the first available one (or None), each probed meter's status and warnings."""
    status: dict[str, dict[str, object]] = {}
    for meter in meters:
        availability = meter.probe()
        status[meter.name] = {"available": availability.available, "reason": availability.reason}
        if availability.available:
            logger.info("measuring host energy with %s (%s)", meter.name, meter.method)
            warnings = []
            if meter.method.startswith("estimated"):
                warnings.append(f"host energy is an estimate ({meter.method}): {availability.reason}")
            return meter, status, warnings
        logger.warning("energy meter %s unavailable: %s", meter.name, availability.reason)
    tried = ", ".join(f"{name}: {entry['reason']}" for name, entry in status.items())
    return None, status, [f"no host energy meter was available (tried {tried}); energy and CO2e figures are missing"]


def _open_transport(scenario: Scenario, scenario_path: Path, scenario_dir: Path, pipelines: list[Pipeline]) -> Any:
    """Connect to `vqbench serve` when the scenario sends payloads over HTTP; return the client, or None.

    Raises ScenarioError when the service cannot be reached or rejects the client. Nothing has
    been measured yet, so the URL or the token file is at fault. Also raises ScenarioError when
    the service does not serve a variant of the scenario, or aligns a variant it serves with
    other settings than the scenario's, because the run would then score other chips than its
    results record.
    """
    transport = scenario.transport
    if transport.mode != "http":
        return None
    from vqbench.network.client import HttpCloud, HttpTransportError
    from vqbench.network.loadtest import check_alignment

    if not transport.url:
        raise ScenarioError("transport.mode is http but transport.url is not set; give the service's base URL")
    http = HttpCloud.from_config(transport, scenario_dir)
    try:
        try:
            http.health()
            served = http.pipelines()
        except HttpTransportError as error:
            raise ScenarioError(f"transport.url {transport.url} failed before anything was measured: {error}") from error
        _check_served(pipelines, served, transport.url)
        check_alignment(
            pipelines, served, transport.url, f"scenario {scenario_path}",
            consequence="this run's results would record",
            fix="set the scenario's alignment to the service's, or start the service with this scenario",
        )
    except BaseException:
        http.close()
        raise
    logger.info("posting payloads to %s", transport.url)
    return http


def _check_served(pipelines: list[Pipeline], served: list[dict[str, Any]], url: str) -> None:
    """Raise ScenarioError naming the scenario's variants that the service does not serve."""
    available = {(entry.get("pipeline"), entry.get("variant")) for entry in served}
    missing = [f"{p.kind}/{p.variant}" for p in pipelines if (p.kind, p.variant) not in available]
    if missing:
        listed = ", ".join(sorted(f"{kind}/{variant}" for kind, variant in available)) or "none"
        raise ScenarioError(
            f"the service at {url} does not serve {', '.join(missing)} (it serves: {listed}); start "
            "`vqbench serve` with a scenario that lists these variants, or remove them from this scenario"
        )


def _assumptions(scenario: Scenario, scenario_dir: Path) -> dict:
    """Record grid intensities and measurement settings used by the run."""
    from vqbench.carbon import grid_intensity, read_hourly_intensity

    assumptions: dict[str, Any] = {
        # The evaluation set without machine-specific paths, so that `vqbench compare` can tell
        # runs on other pairs or another alignment apart from runs of the same set elsewhere.
        "dataset": scenario.dataset.model_dump(exclude={"root", "pairs_file", "download"}),
        "alignment": scenario.alignment.model_dump(),
        "measurement": scenario.measurement.model_dump(),
        "transport": scenario.transport.model_dump(exclude={"token_file"}),
        "carbon_attribution": "edge and network (radio, transit) energy at the edge's grid intensity; "
        "cloud energy at the cloud's",
        "_warnings": [],
    }
    assumptions.update(_deployment_assumptions(scenario))
    for side in ("edge", "cloud"):
        location = getattr(scenario.carbon, f"{side}_location")
        hourly_csv = getattr(scenario.carbon, f"{side}_hourly_csv")
        # The location is checked even when an hourly file replaces its figure, so a mistyped
        # location is still rejected. The results name it beside the hour used.
        located = grid_intensity(location)
        if hourly_csv:
            hourly = read_hourly_intensity(expand_path(hourly_csv, scenario_dir))
            hour = hourly.at(datetime.now(timezone.utc))
            intensity = replace(hour, location=f"{located.location}, {hour.location}")
        else:
            intensity = located
        assumptions[f"grid_intensity_{side}"] = {
            "location": intensity.location,
            "gco2e_per_kwh": intensity.gco2e_per_kwh,
            "source": intensity.source,
            "year": intensity.year,
            "is_world_average": intensity.is_world_average,
        }
        if intensity.is_world_average:
            assumptions["_warnings"].append(
                f"the {side} grid intensity is a world average ({intensity.gco2e_per_kwh:.0f} gCO2e/kWh); "
                f"set carbon.{side}_location for a country or cloud region"
            )
    return assumptions


def _deployment_assumptions(scenario: Scenario) -> dict[str, Any]:
    """Link and device profiles used by the run, with their sources, for the report."""
    from dataclasses import asdict

    from vqbench.devices import get_device_profile
    from vqbench.network.links import get_link_profile

    deployment = scenario.deployment
    links = {name: asdict(get_link_profile(name)) for name in deployment.links}
    devices = {
        device.name: {**asdict(get_device_profile(device.name)), "speed_ratio": device.speed_ratio}
        for device in deployment.edge_devices
        if device.name != "host"
    }
    settings = deployment.model_dump(include={"downlink_bytes", "transfers_per_day", "setup_round_trips"})
    return {"links": links, "devices": devices, "deployment": settings}


def _run_variant(
    pipeline: Pipeline,
    pipeline_config: dict,
    context: _RunContext,
    aligned: Any,
    embedding_cache: ArrayCache,
    halves: _MeasuredHalves,
    progress: ProgressReporter,
) -> tuple[VariantMeasurement, _VariantFrames]:
    """Score and size one variant timed and metered before; return its measurements and its tables."""
    scenario = context.scenario
    evaluation = context.evaluation
    label = f"{pipeline.kind}/{pipeline.variant}"
    if halves.error is not None:
        raise halves.error
    latency = halves.latency
    edge_energy, cloud_energy = halves.energy

    with _phase(progress, f"Scoring {label}", len(evaluation.images)) as task:
        scored = score_variant(
            pipeline, evaluation, aligned, embedding_cache, scenario.teacher.batch_size,
            lambda n: progress.advance(task, n),
        )
    scores = pair_scores(evaluation, scored.embeddings)
    same = np.asarray([pair.same for pair in evaluation.pairs])
    folds = np.asarray([pair.fold for pair in evaluation.pairs])
    verification = evaluate_verification(scores, same, folds)
    score_table = pd.DataFrame({
        "pipeline": pipeline.kind, "variant": pipeline.variant, "fold": folds,
        "pair_index": [pair.index for pair in evaluation.pairs], "same": same, "score": scores,
    })

    settings = scenario.measurement
    sample_images = evaluation.images[: settings.latency_samples]
    edge_rss = cloud_rss = None
    if settings.memory:
        with _phase(progress, f"Measuring memory of {label}", None):
            edge_rss, cloud_rss, probe_failures = measure_peak_rss(
                pipeline, pipeline_config, scenario.alignment, scenario.teacher, sample_images, latency.payloads
            )
            # The variant's other measurements are kept. Only the failed half's memory column stays empty.
            for failure in probe_failures:
                logger.warning("%s", failure)
                context.warnings.append(f"{label}: peak RSS missing: {failure}")

    if pipeline.edge_aligns:
        _write_reconstructions(pipeline, aligned.chips[:RECONSTRUCTION_SAMPLES], context.out_dir / "samples")
    frames = _VariantFrames(score_table, _latency_table(pipeline, latency), _energy_table(pipeline, edge_energy, cloud_energy))
    for half, energy in (("edge", edge_energy), ("cloud", cloud_energy)):
        if energy.energy is None:
            context.warnings.append(f"{label}: {half} energy missing: {energy.missing_reason}")

    edge_footprint, cloud_footprint = pipeline.footprint()
    measured = VariantMeasurement(
        pipeline=pipeline.kind,
        variant=pipeline.variant,
        n_pairs=len(evaluation.pairs),
        n_pairs_skipped=evaluation.skipped_pairs,
        folds=evaluation.folds,
        verification=verification,
        payload_bytes=scored.payload_bytes,
        edge_ms=latency.edge_ms,
        cloud_ms=latency.cloud_ms,
        edge_energy=edge_energy,
        cloud_energy=cloud_energy,
        edge_footprint=edge_footprint,
        cloud_footprint=cloud_footprint,
        edge_peak_rss_bytes=edge_rss,
        cloud_peak_rss_bytes=cloud_rss,
        sample_payload_bytes=[len(payload) for payload in latency.payloads],
        transfer_ms=latency.transfer_ms,
        wire_bytes_up=latency.wire_bytes_up,
        wire_bytes_down=latency.wire_bytes_down,
        transport=scenario.transport.mode,
        extra_columns=dict(pipeline.info().extra_columns),
    )
    return measured, frames


def _write_reconstructions(pipeline: Pipeline, chips: np.ndarray, folder: Path) -> None:
    """Save a few original chips beside what the cloud rebuilds from their payloads, as PNG."""
    from PIL import Image

    rebuilt = pipeline.reconstruct([pipeline.edge_from_chip(chip) for chip in chips])
    if rebuilt is None:
        return
    for index, (chip, reconstruction) in enumerate(zip(chips, rebuilt)):
        for kind, image in (("original", chip), ("reconstruction", reconstruction)):
            path = folder / f"{pipeline.variant}-{index}-{kind}.png"
            write_atomic(path, lambda stream, image=image: Image.fromarray(image).save(stream, format="PNG"))


def _latency_table(pipeline: Pipeline, latency: Any) -> pd.DataFrame:
    """Per-sample host latencies (and measured HTTP transfer times) of one variant."""
    transfer = latency.transfer_ms or [0.0] * len(latency.cloud_ms)
    end_to_end = [e + t + c for e, t, c in zip(latency.edge_ms, transfer, latency.cloud_ms)]
    stages = [("edge", latency.edge_ms), ("cloud", latency.cloud_ms), ("end_to_end", end_to_end)]
    if latency.transfer_ms:
        stages.append(("transfer", latency.transfer_ms))
    frames = []
    for stage, values in stages:
        frames.append(pd.DataFrame({
            "pipeline": pipeline.kind, "variant": pipeline.variant, "stage": stage,
            "sample_index": np.arange(len(values)), "latency_ms": np.asarray(values, dtype=np.float64),
        }))
    return pd.concat(frames, ignore_index=True)


def _energy_table(pipeline: Pipeline, edge: Any, cloud: Any) -> pd.DataFrame:
    records = []
    for stage, measured in (("edge", edge), ("cloud", cloud)):
        energy = measured.energy
        if energy is None:
            continue
        for repeat, value in enumerate(energy.repeats_j_per_inference):
            records.append({
                "pipeline": pipeline.kind, "variant": pipeline.variant, "stage": stage, "repeat": repeat,
                "energy_j_per_inference": value, "method": energy.method, "idle_power_w": energy.idle_power_w,
                "n_inferences": energy.window_inferences[repeat], "window_s": energy.window_durations_s[repeat],
            })
    columns = ["pipeline", "variant", "stage", "repeat", "energy_j_per_inference", "method",
               "idle_power_w", "n_inferences", "window_s"]
    return pd.DataFrame.from_records(records, columns=columns)


def _write_results(context: _RunContext, tables: _RunTables) -> RunResults:
    """Rewrite results.json, results.csv and the Parquet tables atomically."""
    results = RunResults(
        vqbench_version=__version__,
        scenario_name=context.scenario.name,
        scenario_path=str(context.scenario_path),
        created_utc=context.created_utc,
        rows=tables.rows,
        warnings=list(dict.fromkeys(context.warnings)),
        assumptions=context.assumptions,
        complete=not tables.missing and not tables.failed,
        # Failed variants come before the ones not reached, so the list stays in run order.
        variants_missing=tables.failed + tables.missing,
        variants_failed=tables.failed,
    )
    out_dir = context.out_dir
    write_text_atomic(out_dir / "results.json", results.model_dump_json(indent=2) + "\n")
    frame = pd.DataFrame([row.model_dump() for row in tables.rows], columns=list(RESULT_COLUMNS))
    for column in ("folds", "edge_energy_j_per_inference_repeats", "cloud_energy_j_per_inference_repeats"):
        frame[column] = frame[column].map(lambda value: "[" + ", ".join(str(v) for v in value) + "]")
    write_text_atomic(out_dir / "results.csv", frame.to_csv(index=False))

    if context.scenario.outputs.parquet:
        for name, parts in (("scores", tables.scores), ("latency", tables.latency), ("energy", tables.energy)):
            if parts:
                table = pd.concat(parts, ignore_index=True)
                write_atomic(out_dir / f"{name}.parquet", lambda stream, t=table: t.to_parquet(stream, index=False))
    return results


def _keep_interrupted_run(context: _RunContext, tables: _RunTables) -> None:
    """Write the results of an interrupted run, marked incomplete, and log which variants are missing.

    Interrupted while timing or metering, before the run folder was claimed, the run writes
    nothing, so an old run in the folder stays as it was.
    """
    if not context.run_folder.claimed:
        logger.warning("interrupted while timing or metering, before any variant was finished: nothing was "
                       "written to %s", context.out_dir)
        return
    missing = tables.missing
    context.warnings.append(f"the run was interrupted; {plural(len(missing), 'variant')} without results: "
                            f"{', '.join(missing)}")
    _write_results(context, tables)
    context.write_environment()
    logger.warning(
        "interrupted: results of %s kept in %s, %d not scored (%s)",
        plural(len({(row.pipeline, row.variant) for row in tables.rows}), "variant"), context.out_dir,
        len(missing), ", ".join(missing),
    )


def _render_reports(scenario: Scenario, out_dir: Path) -> None:
    """Render the reports the scenario enables; a rendering failure is logged, and the results files stay."""
    outputs = scenario.outputs
    if not (outputs.html or outputs.pdf):
        return
    from vqbench.report import render_reports

    try:
        render_reports(out_dir, html=outputs.html, pdf=outputs.pdf)
    except Exception as error:  # noqa: BLE001 - the measured results are written, so a report bug must not lose the run
        logger.error("rendering the reports failed (%s); the results files are complete, so retry with `vqbench report %s`", error, out_dir)
        logger.debug("report failure", exc_info=True)
