"""A closed-loop load test of ``vqbench serve`` that also checks every response.

``clients`` threads each hold one keep-alive connection and send requests back to back until
``duration_s`` has passed or ``max_requests`` have been sent, cycling through the payloads
from a different offset per client. Each request carries a unique ``X-Request-ID``; a
response counts as correct only when the service echoes that id and its embedding matches
the embedding expected for that payload, so a lost, duplicated or swapped response shows up
as an error. Only the URL given is contacted.

The expected embedding of a payload that the service aligns itself (``cloud-raw``) depends on
the alignment settings. ``loadtest_command`` therefore reads the settings the service lists in
``/v1/pipelines``. Without ``--scenario`` it builds its pipelines with them. With one, it stops
when the scenario's settings differ, naming both, rather than count correct responses as wrong.

Latency is the client's whole request time (connect on the first request, send, queue,
compute, receive). Throughput counts correct responses per second of test time.

A client whose request cannot reach the service (the connection is refused or breaks) waits
before its next one: 50 ms at first, then twice as long after each further such failure, up
to 1 s. A request that gets through resets the wait. So a service that stops mid-test costs
a few failed requests per client and second, each counted as an error, instead of a flood of
connection attempts.

With ``--json``, ``loadtest_command`` checks that the report file can be created before the
test starts. If writing it still fails at the end, ``write_report_json`` raises a RunError
that names the path and refers to the figures printed above, so the caller prints them first.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vqbench.errors import DataError, RunError, ScenarioError
from vqbench.io import write_json_atomic
from vqbench.metrics.latency import percentile_ms
from vqbench.network.client import HttpCloud, HttpTransportError, TransferStats
from vqbench.network.token_file import read_token_file
from vqbench.text import plural

if TYPE_CHECKING:
    from vqbench.scenario import AlignmentConfig

logger = logging.getLogger(__name__)

MAX_CLIENTS = 64
MAX_DURATION_S = 3600.0
#: First and longest wait, in seconds, after a request that could not reach the service.
RETRY_WAIT_FIRST_S = 0.05
RETRY_WAIT_MAX_S = 1.0
#: Error kinds that mean the request did not reach the service, as opposed to an error response.
UNREACHABLE_KINDS = frozenset({"connect", "protocol"})
#: Largest absolute difference between a returned and an expected embedding component.
EMBEDDING_ATOL = 1e-4
SAMPLE_IMAGES_DIR = Path(__file__).resolve().parents[3] / "data" / "lfw-sample" / "lfw-deepfunneled"
#: The ``vqbench loadtest`` option that supplies the token, named in the error for a 401 response.
TOKEN_OPTION = "--token-file"
URL_OPTION = "--url"


@dataclass(frozen=True)
class LoadPayload:
    """One request of the load test and the embedding its response must contain."""

    pipeline: str
    variant: str
    payload: bytes
    expected_embedding: np.ndarray


@dataclass(frozen=True)
class VariantLoad:
    """Per-variant figures of a load test."""

    requests: int
    correct: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    wire_bytes_up_mean: float | None
    wire_bytes_down_mean: float | None
    compute_p50_ms: float | None


@dataclass(frozen=True)
class LoadTestReport:
    """Outcome of a load test: throughput, latency percentiles, errors and response checks."""

    url: str
    clients: int
    duration_s: float
    requests: int
    correct: int
    throughput_rps: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float | None
    errors_by_kind: dict[str, int]
    wrong_embeddings: int
    wrong_request_ids: int
    per_variant: dict[str, VariantLoad] = field(default_factory=dict)

    @property
    def all_correct(self) -> bool:
        """True when every request got its own, correct response."""
        return self.requests > 0 and self.correct == self.requests

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "all_correct": self.all_correct}

    def summary_lines(self) -> list[str]:
        """Describe the report in a few lines of plain text."""
        lines = [
            f"{self.url}: {plural(self.clients, 'client')} for {self.duration_s:.1f} s, {plural(self.requests, 'request')}, "
            f"{self.correct} correct, {self.throughput_rps:.2f} correct responses/s",
            f"latency p50 {_ms(self.latency_p50_ms)}, p95 {_ms(self.latency_p95_ms)}, p99 {_ms(self.latency_p99_ms)}",
            f"errors: {dict(self.errors_by_kind) or 'none'}; wrong embeddings: {self.wrong_embeddings}; "
            f"wrong request ids: {self.wrong_request_ids}",
        ]
        if self.requests == 0:
            lines.append("no request finished within the test's duration, so nothing was checked; give a longer duration")
        for label, load in self.per_variant.items():
            lines.append(
                f"  {label}: {load.requests} requests, p50 {_ms(load.latency_p50_ms)}, p95 {_ms(load.latency_p95_ms)}, "
                f"server compute p50 {_ms(load.compute_p50_ms)}, {_bytes(load.wire_bytes_up_mean)} up and "
                f"{_bytes(load.wire_bytes_down_mean)} down per request"
            )
        return lines


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _bytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} B"


@dataclass(frozen=True)
class _Outcome:
    label: str
    latency_ms: float
    error_kind: str | None
    stats: TransferStats | None


class _RequestBudget:
    """Hands out request numbers until the deadline or the maximum count is reached."""

    def __init__(self, deadline_s: float, max_requests: int) -> None:
        self._deadline_s = deadline_s
        self._remaining = max_requests
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._remaining <= 0 or time.monotonic() >= self._deadline_s:
                return False
            self._remaining -= 1
            return True

    def wait(self, wait_s: float) -> None:
        """Sleep ``wait_s``, or less where the deadline comes first."""
        time.sleep(max(0.0, min(wait_s, self._deadline_s - time.monotonic())))


def check_load_settings(clients: int, duration_s: float, *, clients_name: str = "clients",
                        duration_name: str = "duration_s") -> None:
    """Raise ScenarioError, naming the setting, for a client count or a test length out of range."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ScenarioError(f"{clients_name} must be 1 to {MAX_CLIENTS}, got {clients}")
    if not (math.isfinite(duration_s) and 0 < duration_s <= MAX_DURATION_S):
        raise ScenarioError(f"{duration_name} must be a number of seconds above 0 and at most {MAX_DURATION_S:g}, "
                            f"got {duration_s}")


def run_loadtest(
    url: str,
    clients: int,
    duration_s: float,
    payloads: list[tuple[str, str, bytes, np.ndarray]],
    token: str | None,
    *,
    max_requests: int = 100_000,
    timeout_s: float = 30.0,
) -> LoadTestReport:
    """Run ``clients`` closed-loop clients against ``url`` for ``duration_s`` and check each response.

    ``payloads`` contains (pipeline, variant, payload bytes, expected embedding) tuples.
    """
    check_load_settings(clients, duration_s)
    if not payloads:
        raise ScenarioError("the load test needs at least one payload")
    items = _alternate_variants([LoadPayload(p, v, data, np.asarray(e, dtype=np.float32)) for p, v, data, e in payloads])

    # One preflight request fails fast on a wrong URL or token and fixes the content types.
    with HttpCloud(url, token=token, timeout_s=timeout_s, max_connections=1, token_option=TOKEN_OPTION,
                   url_option=URL_OPTION) as probe:
        try:
            content_types = [probe.content_type_for(item.pipeline, item.variant, item.payload) for item in items]
        except HttpTransportError as error:
            raise ScenarioError(f"{URL_OPTION} {url} failed the preflight request, before any load was sent: "
                                f"{error}") from error

    started_s = time.monotonic()
    budget = _RequestBudget(started_s + duration_s, max_requests)
    results: list[list[_Outcome]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(
            target=_client_loop, args=(url, token, timeout_s, index, clients, items, content_types, budget, results[index]),
            name=f"vqbench-load-{index}", daemon=True,
        )
        for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed_s = time.monotonic() - started_s
    return _summarise(url, clients, elapsed_s, [outcome for outcomes in results for outcome in outcomes])


def _alternate_variants(items: list[LoadPayload]) -> list[LoadPayload]:
    """Order the payloads so that consecutive ones cycle through the variants.

    Each client walks the list from its own offset, so a list grouped by variant would let a
    short test reach only the first variants.
    """
    by_variant: dict[tuple[str, str], list[LoadPayload]] = {}
    for item in items:
        by_variant.setdefault((item.pipeline, item.variant), []).append(item)
    rounds = itertools.zip_longest(*by_variant.values())
    return [item for round_items in rounds for item in round_items if item is not None]


def _client_loop(
    url: str, token: str | None, timeout_s: float, index: int, clients: int, items: list[LoadPayload],
    content_types: list[str], budget: _RequestBudget, outcomes: list[_Outcome],
) -> None:
    # Clients start at evenly spread offsets so that concurrent requests mix variants.
    position = index * len(items) // clients
    wait_s = 0.0
    with HttpCloud(url, token=token, timeout_s=timeout_s, max_connections=1, token_option=TOKEN_OPTION,
                   url_option=URL_OPTION) as cloud:
        while budget.take():
            item = items[position % len(items)]
            outcome = _one_request(cloud, item, content_types[position % len(items)], f"load-{index}-{uuid.uuid4().hex}")
            outcomes.append(outcome)
            position += 1
            if outcome.error_kind in UNREACHABLE_KINDS:
                wait_s = min(max(2 * wait_s, RETRY_WAIT_FIRST_S), RETRY_WAIT_MAX_S)
                budget.wait(wait_s)
            else:
                wait_s = 0.0


def _one_request(cloud: HttpCloud, item: LoadPayload, content_type: str, request_id: str) -> _Outcome:
    label = f"{item.pipeline}/{item.variant}"
    started_ns = time.perf_counter_ns()
    try:
        embedding, stats = cloud.embed(item.pipeline, item.variant, item.payload, content_type, request_id)
    except HttpTransportError as error:
        logger.debug("request %s failed: %s", request_id, error)
        return _Outcome(label, (time.perf_counter_ns() - started_ns) / 1e6, error.kind, None)
    if stats.request_id != request_id:
        return _Outcome(label, stats.total_ms, "wrong_request_id", stats)
    if embedding.shape != item.expected_embedding.shape or not np.allclose(
        embedding, item.expected_embedding, rtol=0.0, atol=EMBEDDING_ATOL
    ):
        return _Outcome(label, stats.total_ms, "wrong_embedding", stats)
    return _Outcome(label, stats.total_ms, None, stats)


def _summarise(url: str, clients: int, elapsed_s: float, outcomes: list[_Outcome]) -> LoadTestReport:
    correct = [outcome for outcome in outcomes if outcome.error_kind is None]
    errors = Counter(outcome.error_kind for outcome in outcomes if outcome.error_kind is not None)
    latencies = [outcome.latency_ms for outcome in correct]
    per_variant: dict[str, VariantLoad] = {}
    for label in sorted({outcome.label for outcome in outcomes}):
        mine = [outcome for outcome in outcomes if outcome.label == label]
        ok = [outcome for outcome in mine if outcome.error_kind is None and outcome.stats is not None]
        per_variant[label] = VariantLoad(
            requests=len(mine),
            correct=len(ok),
            latency_p50_ms=percentile_ms([o.latency_ms for o in ok], 50),
            latency_p95_ms=percentile_ms([o.latency_ms for o in ok], 95),
            wire_bytes_up_mean=float(np.mean([o.stats.wire_bytes_up for o in ok])) if ok else None,
            wire_bytes_down_mean=float(np.mean([o.stats.wire_bytes_down for o in ok])) if ok else None,
            compute_p50_ms=percentile_ms([o.stats.compute_ms for o in ok], 50),
        )
    return LoadTestReport(
        url=url,
        clients=clients,
        duration_s=elapsed_s,
        requests=len(outcomes),
        correct=len(correct),
        throughput_rps=len(correct) / elapsed_s if elapsed_s > 0 else 0.0,
        latency_p50_ms=percentile_ms(latencies, 50),
        latency_p95_ms=percentile_ms(latencies, 95),
        latency_p99_ms=percentile_ms(latencies, 99),
        latency_mean_ms=float(np.mean(latencies)) if latencies else None,
        errors_by_kind=dict(errors),
        wrong_embeddings=errors.get("wrong_embedding", 0),
        wrong_request_ids=errors.get("wrong_request_id", 0),
        per_variant=per_variant,
    )


# ---------------------------------------------------------------------------------------------
# Building payloads from the LFW sample.


def sample_image_files(n_images: int, images_dir: Path = SAMPLE_IMAGES_DIR) -> list[Path]:
    """Return the first ``n_images`` JPEG files of the LFW sample, in sorted order."""
    if not images_dir.is_dir():
        raise DataError(f"LFW sample not found at {images_dir}; run from a checkout of the vqbench repository")
    files = sorted(images_dir.rglob("*.jpg"))[:n_images]
    if not files:
        raise DataError(f"no .jpg files under {images_dir}; restore data/lfw-sample from the repository")
    return files


def build_payloads(pipelines: list[Any], image_files: list[Path]) -> list[tuple[str, str, bytes, np.ndarray]]:
    """Run both halves of every pipeline in this process on each image.

    Returns (pipeline, variant, payload, expected embedding) tuples for ``run_loadtest``.
    """
    payloads: list[tuple[str, str, bytes, np.ndarray]] = []
    for pipeline in pipelines:
        edge_payloads = [pipeline.edge(path.read_bytes()).payload for path in image_files]
        expected = pipeline.cloud(edge_payloads)
        for payload, embedding in zip(edge_payloads, expected):
            payloads.append((pipeline.kind, pipeline.variant, payload, embedding))
    return payloads


def loadtest_command(
    url: str,
    clients: int,
    duration_s: float,
    scenario: Path | None,
    token_file: Path | None,
    n_images: int,
    json_path: Path | None = None,
) -> LoadTestReport:
    """Entry point for ``vqbench loadtest``: build payloads from the LFW sample, then load ``url``.

    The payloads come from the scenario's pipelines (the service's defaults without one, aligned
    with the service's alignment settings), restricted to the variants the service at ``url``
    serves. ``json_path``, where the caller will write the report, is checked with
    ``check_report_path`` before anything else. Raises ScenarioError when the scenario aligns
    differently from the service (``check_alignment``).
    """
    from vqbench.network.service import build_served_pipelines
    from vqbench.scenario import load_scenario

    check_load_settings(clients, duration_s, clients_name="--clients", duration_name="--duration-s")
    if n_images < 1:
        raise ScenarioError(f"--images must be at least 1, got {n_images}")
    if json_path is not None:
        check_report_path(json_path)
    token = read_token_file(token_file) if token_file is not None else None
    with HttpCloud(url, token=token, max_connections=1, token_option=TOKEN_OPTION, url_option=URL_OPTION) as cloud:
        try:
            entries = cloud.pipelines()
        except HttpTransportError as error:
            raise ScenarioError(f"{URL_OPTION} {url} failed before any load was sent: {error}") from error
    served = {(entry["pipeline"], entry["variant"]) for entry in entries}
    if scenario is not None:
        pipelines = build_served_pipelines(load_scenario(scenario))
    else:
        pipelines = build_served_pipelines(None, service_alignment(entries, url))
    usable = [pipeline for pipeline in pipelines if (pipeline.kind, pipeline.variant) in served]
    for pipeline in pipelines:
        if pipeline not in usable:
            logger.warning("%s/%s is not served at %s; left out of the load test", pipeline.kind, pipeline.variant, url)
    if not usable:
        requested = ", ".join(f"{pipeline.kind}/{pipeline.variant}" for pipeline in pipelines)
        offered = ", ".join(f"{kind}/{variant}" for kind, variant in sorted(served))
        raise ScenarioError(f"the service at {url} serves none of the pipelines to test ({requested}); it serves "
                            f"{offered}. Pass the scenario the service was started with")
    check_alignment(usable, entries, url, f"--scenario {scenario}" if scenario is not None else "the default settings")
    image_files = sample_image_files(n_images)
    if len(image_files) < n_images:
        logger.warning("--images %d is more than the %d images of the LFW sample; using all of them", n_images, len(image_files))
    logger.info("building payloads: %d images x %d variants", len(image_files), len(usable))
    payloads = build_payloads(usable, image_files)
    return run_loadtest(url, clients, duration_s, payloads, token)


# ---------------------------------------------------------------------------------------------
# Alignment settings of the service and of the load test.


def service_alignment(entries: list[dict[str, Any]], url: str) -> "AlignmentConfig | None":
    """Return the alignment settings the service lists for the variants it aligns itself.

    ``entries`` is the ``/v1/pipelines`` list. Returns None when no such variant lists its
    settings (a service that predates the field, or one that aligns nothing itself), or when
    the variants list different settings, which ``check_alignment`` then reports.
    """
    from pydantic import ValidationError

    from vqbench.scenario import AlignmentConfig

    published = [entry.get("alignment") for entry in entries if entry.get("aligned_on") == "cloud"]
    distinct = {_settings_text(settings) for settings in published if isinstance(settings, dict)}
    if len(distinct) != 1:
        return None
    settings = next(settings for settings in published if isinstance(settings, dict))
    try:
        alignment = AlignmentConfig.model_validate(settings)
    except ValidationError as error:
        raise ScenarioError(f"the service at {url} lists alignment settings {_settings_text(settings)} that this "
                            f"vqbench cannot use ({error.errors()[0]['msg']}); pass --scenario with the scenario file "
                            "the service was started with") from error
    logger.info("expected embeddings use the service's alignment settings: %s", _settings_text(settings))
    return alignment


def check_alignment(
    pipelines: list[Any], entries: list[dict[str, Any]], url: str, source: str,
    consequence: str = "this load test would compute its expected embeddings with",
    fix: str = "pass --scenario with the scenario file the service was started with",
) -> None:
    """Raise ScenarioError when a variant that the service aligns itself has other settings here.

    Only such variants matter: for the others, this process runs the edge half that aligns the
    face, and the service embeds the payload it receives. ``source`` names where the settings
    here come from (``--scenario FILE``), and ``consequence`` and ``fix`` complete the message
    for the caller (the load test by default). A variant whose entry lists no settings (a
    service that predates the field) is not checked.
    """
    by_name = {(entry["pipeline"], entry["variant"]): entry for entry in entries}
    for pipeline in pipelines:
        entry = by_name.get((pipeline.kind, pipeline.variant), {})
        published = entry.get("alignment")
        components = getattr(pipeline, "components", None)
        if entry.get("aligned_on") != "cloud" or not isinstance(published, dict) or components is None:
            continue
        local = components.alignment_config.model_dump()
        differing = sorted(key for key in set(local) | set(published) if local.get(key) != published.get(key))
        if differing:
            ours = ", ".join(f"{key}={local.get(key)}" for key in differing)
            theirs = ", ".join(f"{key}={published.get(key)}" for key in differing)
            raise ScenarioError(
                f"the service at {url} aligns {pipeline.kind}/{pipeline.variant} with {theirs}, but {consequence} "
                f"{ours} (from {source}); {fix}"
            )


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(settings.items()))


# ---------------------------------------------------------------------------------------------
# Writing the report.


def check_report_path(path: Path) -> None:
    """Raise ScenarioError unless a report file can be created at ``path``.

    Creates the missing parent folders, as ``write_json_atomic`` would, and a temporary file
    beside ``path`` that it deletes again, so the check uses the same operations as the write.
    """
    if path.is_dir():
        raise ScenarioError(f"--json {path} is a folder; give a file name such as {path / 'loadtest.json'}")
    if path.exists() and not path.is_file():
        # The write renames a new file onto the path, which would replace a device or a pipe.
        raise ScenarioError(f"--json {path} exists and is not a regular file; give the path of a new or regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise ScenarioError(f"cannot write the report to --json {path}: {error.filename or path.parent} is not a folder; "
                            "give a path in a writable folder") from error
    except OSError as error:
        raise ScenarioError(f"cannot write the report to --json {path}: {error.strerror or error}; "
                            "give a path in a writable folder") from error
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise ScenarioError(f"cannot write the report to --json {path}: {error.strerror or error}; "
                            "give a path in a writable folder") from error
    os.close(handle)
    os.unlink(temporary)


def write_report_json(report: LoadTestReport, path: Path) -> None:
    """Write the report as JSON to ``path``, raising RunError that names the path when writing fails."""
    try:
        write_json_atomic(path, report.to_dict())
    except OSError as error:
        raise RunError(f"cannot write the load test report to {path}: {error.strerror or error}; "
                       "its figures are printed above, copy them from there") from error
