"""Read a run folder into memory: results.json is required, every other file is optional.

A missing or unreadable optional file becomes ``None`` plus a note that the report prints, so
that a report can always be built from whatever a run left behind. A results.json of another
schema version is rejected, because its fields may mean something else.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from vqbench.errors import DataError
from vqbench.json_input import parse_json_noting_repeats, repeated_key_location
from vqbench.results import RESULTS_SCHEMA_VERSION, ResultRow, RunResults, results_problem

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SCORES_FILE = "scores.parquet"
LATENCY_FILE = "latency.parquet"
ENERGY_FILE = "energy.parquet"
ENVIRONMENT_FILE = "environment.json"
SAMPLES_DIR = "samples"

_SCORES_COLUMNS = ("pipeline", "variant", "fold", "pair_index", "same", "score")
_LATENCY_COLUMNS = ("pipeline", "variant", "stage", "sample_index", "latency_ms")
_ENERGY_COLUMNS = ("pipeline", "variant", "stage", "repeat", "energy_j_per_inference", "method")
_SAMPLE_NAME = re.compile(r"^(?P<variant>.+)-(?P<index>\d+)-(?P<kind>original|reconstruction)\.png$")


@dataclass(frozen=True)
class SamplePair:
    """One original face and its reconstruction, as PNG files."""

    variant: str
    index: int
    original_png: Path
    reconstruction_png: Path


@dataclass(frozen=True)
class RunData:
    """Everything a report needs from one run folder."""

    run_dir: Path
    results: RunResults
    scores: pd.DataFrame | None
    latency: pd.DataFrame | None
    energy: pd.DataFrame | None
    environment: dict[str, Any] | None
    samples: tuple[SamplePair, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rows(self) -> list[ResultRow]:
        return self.results.rows


def load_results(run_dir: Path) -> RunResults:
    """Read and validate ``results.json``; raise DataError naming the file when that fails.

    A file whose ``schema_version`` is not ``RESULTS_SCHEMA_VERSION`` is rejected before its rows
    are validated. A file without ``schema_version`` reads as version 1, the schema's default.
    After the types, the values are checked with ``results_problem``: an impossible figure (NaN,
    infinite, out of range) or two rows with the same key make the file invalid.
    """
    path = Path(run_dir) / RESULTS_FILE
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a results file; pass a run folder written by `vqbench run`")
    if not path.is_file():
        raise DataError(f"{path} not found; pass a run folder written by `vqbench run`")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path} could not be read ({error}); check its permissions") from error
    if content.startswith(codecs.BOM_UTF8):
        # JSON text has no byte order mark (RFC 8259, section 8.1); some Windows editors add one.
        raise DataError(f"{path} starts with a UTF-8 byte order mark, which JSON does not allow; save the file "
                        "as UTF-8 without BOM, or rerun `vqbench run` to rewrite it")
    _check_schema_version(path, content)
    repeated = repeated_key_location(parse_json_noting_repeats(content))
    if repeated is not None:
        raise DataError(f"{path} gives the key '{repeated}' twice, so one of its values would be ignored; "
                        "rerun `vqbench run` to rewrite it")
    try:
        # Strict: a figure written as text ("0.9") or a flag written as a number is an edited
        # file, not something `vqbench run` writes, so it is refused rather than converted.
        results = RunResults.model_validate_json(content, strict=True)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise DataError(
            f"{path} is not a valid results file ({error.error_count()} errors, first at "
            f"'{location}': {first['msg']}); rerun `vqbench run` to rewrite it"
        ) from error
    problem = results_problem(results)
    if problem is not None:
        raise DataError(f"{path} is not a valid results file: {problem}; rerun `vqbench run` to rewrite it")
    return results


def _check_schema_version(path: Path, content: bytes) -> None:
    """Raise DataError when results.json declares a schema version other than the supported one."""
    try:
        data = json.loads(content)
    except ValueError:
        # Invalid JSON is left to the schema validation, which reports where it breaks.
        return
    if not isinstance(data, dict) or "schema_version" not in data:
        return
    version = data["schema_version"]
    if type(version) is int and version == RESULTS_SCHEMA_VERSION:
        return
    writer = data.get("vqbench_version")
    written_by = f" (written by vqbench {writer})" if isinstance(writer, str) else ""
    raise DataError(
        f"{path} has results schema_version {version!r}{written_by}, but this vqbench reads only version "
        f"{RESULTS_SCHEMA_VERSION}; read it with the vqbench version that wrote it, or rerun `vqbench run`"
    )


def run_completeness(results: RunResults) -> tuple[bool, tuple[str, ...]]:
    """Return whether the run finished every variant, and the variants an interrupted run lacks.

    An interrupted run marks results.json with ``"complete": false`` and lists the variants it
    did not finish in ``variants_missing``. A file without the marker reads as complete.
    """
    complete = getattr(results, "complete", True)
    missing = getattr(results, "variants_missing", None) or ()
    return complete is not False, tuple(str(variant) for variant in missing)


def incomplete_cause(results: RunResults) -> str:
    """Name why an incomplete run lacks variants: the variants that failed, else an interruption."""
    failed = getattr(results, "variants_failed", None) or ()
    if failed:
        noun = "the variant" if len(failed) == 1 else "the variants"
        return f"{noun} {', '.join(str(variant) for variant in failed)} failed"
    return "it was interrupted"


def incomplete_run_note(results: RunResults) -> str | None:
    """Return one sentence stating why the run is incomplete and which variants it lacks, or None."""
    complete, missing = run_completeness(results)
    if complete:
        return None
    if not missing:
        return f"The run is incomplete ({incomplete_cause(results)}) but does not list the missing variants."
    noun = "the variant" if len(missing) == 1 else "the variants"
    return f"The run is incomplete ({incomplete_cause(results)}), so it has no rows for {noun} {', '.join(missing)}."


def _read_parquet(path: Path, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        notes.append(f"{path.name} is missing, so the plots built from it are left out.")
        return None
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        logger.warning("could not read %s: %s", path, error)
        notes.append(f"{path.name} could not be read ({error}), so the plots built from it are left out.")
        return None
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        notes.append(f"{path.name} lacks the columns {missing}, so the plots built from it are left out.")
        return None
    return frame


def _read_environment(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"{path.name} is missing, so the environment section is empty.")
        return None
    try:
        environment = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        notes.append(f"{path.name} could not be read ({error}), so the environment section is empty.")
        return None
    if not isinstance(environment, dict):
        notes.append(f"{path.name} does not contain a JSON object, so the environment section is empty.")
        return None
    return environment


def find_samples(samples_dir: Path) -> tuple[SamplePair, ...]:
    """Pair ``<variant>-<k>-original.png`` with ``<variant>-<k>-reconstruction.png``."""
    if not samples_dir.is_dir():
        return ()
    found: dict[tuple[str, int], dict[str, Path]] = {}
    for path in sorted(samples_dir.glob("*.png")):
        match = _SAMPLE_NAME.match(path.name)
        if match:
            key = (match["variant"], int(match["index"]))
            found.setdefault(key, {})[match["kind"]] = path
    pairs = [
        SamplePair(variant, index, files["original"], files["reconstruction"])
        for (variant, index), files in sorted(found.items())
        if "original" in files and "reconstruction" in files
    ]
    return tuple(pairs)


def load_run(run_dir: Path) -> RunData:
    """Read a run folder. Only results.json is required."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    notes: list[str] = []
    incomplete = incomplete_run_note(results)
    if incomplete is not None:
        notes.append(incomplete)
    scores = _read_parquet(run_dir / SCORES_FILE, _SCORES_COLUMNS, notes)
    latency = _read_parquet(run_dir / LATENCY_FILE, _LATENCY_COLUMNS, notes)
    energy = _read_parquet(run_dir / ENERGY_FILE, _ENERGY_COLUMNS, notes)
    environment = _read_environment(run_dir / ENVIRONMENT_FILE, notes)
    samples = find_samples(run_dir / SAMPLES_DIR)
    return RunData(run_dir, results, scores, latency, energy, environment, samples, tuple(notes))
