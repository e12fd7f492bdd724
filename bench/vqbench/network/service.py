"""The cloud half as an HTTP service: ``vqbench serve``.

Each request carries one payload exactly as an edge half produced it, and the service routes
it to the ``cloud()`` method of the pipeline variant named in the path. The payload is the
request body itself: no form encoding, no base64, nothing unpickled.

Endpoints (JSON responses; every error body is ``{"error", "detail", "fix"}``):

=========================================  ==================================================
``GET /health``                            models loaded, warm-up result, versions (no token)
``GET /v1/pipelines``                      variants served and the content types they accept
``POST /v1/embed/{pipeline}/{variant}``    body: one payload -> ``{embedding, compute_ms}``
``POST /v1/match/{pipeline}/{variant}``    body: a payload pair (framing below) -> cosine
``POST /v1/gallery/{name}/enrol``          ``?pipeline=&variant=&label=``, body: one payload
``POST /v1/gallery/{name}/identify``       ``?pipeline=&variant=``, body: one payload
``GET|DELETE /v1/gallery/{name}``          gallery size, or remove the gallery
``GET /metrics``                           request counts, statuses, compute time, energy
=========================================  ==================================================

Content types. ``PAYLOAD_KINDS`` maps each pipeline kind to the media types its payload may
be sent as, so serving a new kind of payload takes one entry there. A pipeline kind without
an entry accepts ``application/octet-stream``. Current entries:

- ``cloud-raw``: the camera's image file, ``image/jpeg``, ``image/png`` or ``image/webp``.
- ``cloud-codec``: the codec's own type, ``image/jpeg``, ``image/webp`` or ``image/png``.
- ``edge-vq-recon`` and ``edge-vq-student``: ``application/vnd.vqbench.vq-codes`` (or
  ``application/octet-stream``), the versioned header and bit-packed indices.

For image payloads the service reads the image header before decoding: the format must match
the declared content type and the pixel count must stay under the kind's limit, so a small
file that claims a huge image is rejected before any memory is allocated for it.

Match framing (``Content-Type: application/vnd.vqbench.pair``, the payloads' own type in the
``X-Payload-Type`` header)::

    uint32 big-endian length of A | A bytes | uint32 big-endian length of B | B bytes

Checks, in order: bearer token (401), pipeline and variant (404), content type (415), body
size (413, from ``Content-Length`` before the body is read, then while reading it), payload
validation and decoding (422). A ``PayloadError`` or ``CorruptImageError`` raised by a
pipeline's ``cloud()`` becomes a 422; any other exception becomes a 500 whose traceback is
logged with the request id. Every response carries ``X-Request-ID``: the client's value when
it is 1 to 64 characters of ``[A-Za-z0-9._:-]``, otherwise one the service generates.

Concurrency: requests are parsed and validated on the event loop, and ``cloud()`` runs on
one worker thread. The pipelines share one aligner and one teacher, and dlib does not document
its detector and networks as safe to call from several threads at once. Requests wait for the
worker in arrival order. Beyond ``max_pending_requests`` waiting, the service returns 503 with
``Retry-After``. ``compute_ms`` is the time inside ``cloud()`` and ``queue_ms`` the wait for
the worker. NOTE: one worker uses at most the cores that one ``cloud()`` call uses, so the
throughput measured is that of a single model instance.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import ipaddress
import logging
import math
import platform
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from vqbench import __version__
from vqbench.data.align import CorruptImageError
from vqbench.errors import PayloadError, RunError, ScenarioError, VqbenchError
from vqbench.metrics.latency import percentile_ms
from vqbench.pipelines.base import Components, Pipeline

if TYPE_CHECKING:
    from vqbench.meters.base import EnergyMeter
    from vqbench.scenario import Scenario

logger = logging.getLogger(__name__)

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
VQ_CODES_TYPE = "application/vnd.vqbench.vq-codes"
OPAQUE_TYPE = "application/octet-stream"
PAIR_CONTENT_TYPE = "application/vnd.vqbench.pair"
PAYLOAD_TYPE_HEADER = "x-payload-type"
REQUEST_ID_HEADER = "x-request-id"

_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_LABEL_CHARS = 128
_PAIR_LENGTH = struct.Struct(">I")

#: Default pipelines served without a scenario: cloud-raw, and cloud-codec at JPEG quality 50.
DEFAULT_PIPELINE_CONFIGS: tuple[dict[str, Any], ...] = (
    {"kind": "cloud-raw"},
    {"kind": "cloud-codec", "codec": "jpeg", "qualities": [50]},
)

#: Hook for the VQ-VAE pipelines: served by default once the scenario schema accepts their
#: kind and their default model files exist. Until then each entry is skipped with a log line.
DEFAULT_VQ_PIPELINE_CONFIGS: tuple[dict[str, Any], ...] = (
    {"kind": "edge-vq-recon"},
    {"kind": "edge-vq-student"},
)


# ---------------------------------------------------------------------------------------------
# Payload kinds: which media types each pipeline kind accepts, and the image header check.


@dataclass(frozen=True)
class PayloadKind:
    """Accepted media types and image limits for the payload of one pipeline kind.

    ``content_types`` maps a pipeline variant to the media types its payload may be sent as.
    ``max_image_pixels`` turns on the image header check (format and pixel count) before
    ``cloud()`` decodes the payload; None means the payload is not an image file.
    """

    name: str
    content_types: Callable[[Pipeline], tuple[str, ...]]
    max_image_pixels: int | None = None


def _codec_content_types(pipeline: Pipeline) -> tuple[str, ...]:
    codec = getattr(pipeline, "codec", None)
    return (f"image/{codec}",) if codec in ("jpeg", "webp", "png") else RAW_IMAGE_TYPES


PAYLOAD_KINDS: dict[str, PayloadKind] = {
    # The bound of 4096 x 4096 pixels covers a 16 MP camera sensor.
    "cloud-raw": PayloadKind("image-file", lambda pipeline: RAW_IMAGE_TYPES, max_image_pixels=4096 * 4096),
    # Chips are at most 150 x 150 pixels. The bound leaves room but stops decompression bombs.
    "cloud-codec": PayloadKind("codec-chip", _codec_content_types, max_image_pixels=1024 * 1024),
    "edge-vq-recon": PayloadKind("vq-codes", lambda pipeline: (VQ_CODES_TYPE, OPAQUE_TYPE)),
    "edge-vq-student": PayloadKind("vq-codes", lambda pipeline: (VQ_CODES_TYPE, OPAQUE_TYPE)),
}
OPAQUE_PAYLOAD_KIND = PayloadKind("opaque", lambda pipeline: (OPAQUE_TYPE,))


def payload_kind_of(pipeline: Pipeline) -> PayloadKind:
    """Return the payload kind registered for a pipeline's kind (opaque bytes when none is)."""
    return PAYLOAD_KINDS.get(pipeline.kind, OPAQUE_PAYLOAD_KIND)


def check_image_header(payload: bytes, content_type: str, max_pixels: int) -> None:
    """Check an image payload's format and size from its header, without decoding pixels.

    Raises PayloadError when the header cannot be parsed, when the format differs from
    ``content_type``, or when the image has more than ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as image:
            width, height = image.size
            mime_type = image.get_format_mimetype()
    except Image.DecompressionBombError as error:
        raise PayloadError(f"image payload declares too many pixels: {error}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        raise PayloadError(f"image payload header is invalid: {error}") from error
    if mime_type != content_type:
        raise PayloadError(f"payload is {mime_type or 'an unknown format'} but Content-Type is {content_type}")
    if width * height > max_pixels:
        raise PayloadError(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")


def media_type(content_type: str | None) -> str:
    """Return the lower-case media type of a Content-Type value, without its parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


# ---------------------------------------------------------------------------------------------
# Errors as responses.


class ServiceProblem(VqbenchError):
    """A request the service rejects, with the HTTP status, an error code and the fix."""

    def __init__(self, status: int, error: str, detail: str, fix: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.fix = fix
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, "fix": self.fix}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------------
# Metrics and energy windows.


class ServiceMetrics:
    """Request counts, status counts per endpoint, and recent compute times per variant.

    Endpoints are route templates; ``unmatched`` counts requests that matched no route (404)
    or were rejected before routing (413 from ``Content-Length``). Counters live for the life
    of the process. Compute times keep the last ``max_samples`` per variant, so the
    percentiles describe recent requests.
    """

    def __init__(self, max_samples: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._max_samples = max_samples
        self.started_unix_s = time.time()
        self._requests: Counter[str] = Counter()
        self._statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self._compute_ms: dict[str, deque[float]] = {}
        self._queue_ms: dict[str, deque[float]] = {}
        self._computations = 0

    def record_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests[endpoint] += 1
            self._statuses[endpoint][status] += 1

    def record_compute(self, label: str, compute_ms: float, queue_ms: float, n_payloads: int) -> None:
        with self._lock:
            self._compute_ms.setdefault(label, deque(maxlen=self._max_samples)).append(compute_ms)
            self._queue_ms.setdefault(label, deque(maxlen=self._max_samples)).append(queue_ms)
            self._computations += n_payloads

    @property
    def computations(self) -> int:
        """Payloads run through ``cloud()`` so far."""
        with self._lock:
            return self._computations

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": time.time() - self.started_unix_s,
                "requests": dict(self._requests),
                "statuses": {endpoint: {str(status): n for status, n in counts.items()} for endpoint, counts in self._statuses.items()},
                "errors": {
                    endpoint: {str(status): n for status, n in counts.items() if status >= 400}
                    for endpoint, counts in self._statuses.items()
                    if any(status >= 400 for status in counts)
                },
                "payloads_computed": self._computations,
                "compute": {label: _timing_summary(values, self._queue_ms[label]) for label, values in self._compute_ms.items()},
            }


def _timing_summary(compute_ms: deque[float], queue_ms: deque[float]) -> dict[str, Any]:
    compute = list(compute_ms)
    queue = list(queue_ms)
    return {
        "samples": len(compute),
        "compute_p50_ms": percentile_ms(compute, 50),
        "compute_p95_ms": percentile_ms(compute, 95),
        "compute_p99_ms": percentile_ms(compute, 99),
        "queue_p50_ms": percentile_ms(queue, 50),
        "queue_p95_ms": percentile_ms(queue, 95),
    }


@dataclass(frozen=True)
class EnergyWindow:
    """Energy of the host over one window, and how many payloads the service computed in it."""

    start_unix_s: float
    duration_s: float
    energy_j: float | None
    method: str
    payloads_computed: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        per_payload = self.energy_j / self.payloads_computed if self.energy_j is not None and self.payloads_computed else None
        power_w = self.energy_j / self.duration_s if self.energy_j is not None and self.duration_s > 0 else None
        return {
            "start_unix_s": self.start_unix_s,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "mean_power_w": power_w,
            "payloads_computed": self.payloads_computed,
            "energy_per_payload_j": per_payload,
            "method": self.method,
            "error": self.error,
        }


class EnergyMonitor:
    """Closes consecutive energy windows of ``window_s`` on a background thread.

    Windows follow each other with only the meter's own ``end`` and ``begin`` time between
    them, which is seconds for codecarbon and microseconds for RAPL.

    The meter covers its whole device (a CPU package, a GPU), not this process alone, so a
    window's energy includes every other load on that device. ``energy_per_payload_j`` is the
    gross figure: window energy / payloads computed in it, with idle power not removed.
    A window whose meter read fails keeps its error and no energy; it never becomes 0 J.
    """

    def __init__(
        self, meter: "EnergyMeter | None", reason: str, window_s: float = 5.0, max_windows: int = 720
    ) -> None:
        self.meter = meter
        self.reason = reason
        self.window_s = window_s
        self._windows: deque[EnergyWindow] = deque(maxlen=max_windows)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count_payloads: Callable[[], int] = lambda: 0
        self._failures = 0

    @property
    def available(self) -> bool:
        return self.meter is not None

    def start(self, count_payloads: Callable[[], int]) -> None:
        """Start closing windows; ``count_payloads`` returns payloads computed so far."""
        if self.meter is None or self._thread is not None:
            return
        self._count_payloads = count_payloads
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vqbench-energy-windows", daemon=True)
        self._thread.start()
        logger.info("server-side energy windows of %.1f s with meter %s", self.window_s, self.meter.name)

    def stop(self) -> None:
        """Close the open window and stop the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.window_s + 10.0)
        self._thread = None

    def _run(self) -> None:
        assert self.meter is not None
        while not self._stop.is_set():
            self._close_one_window(self.meter)

    def _close_one_window(self, meter: "EnergyMeter") -> None:
        start_unix_s = time.time()
        start_s = time.perf_counter()
        try:
            token = meter.begin()
            # Some meters take seconds to begin (codecarbon starts a tracker), so the window opens after.
            start_unix_s = time.time()
            start_count = self._count_payloads()
            self._stop.wait(self.window_s)
            reading = meter.end(token)
        except VqbenchError as error:
            self._record_failure(start_unix_s, time.perf_counter() - start_s, meter, error)
            self._stop.wait(self.window_s)
            return
        window = EnergyWindow(
            start_unix_s, reading.duration_s, reading.energy_j, reading.method, self._count_payloads() - start_count
        )
        with self._lock:
            self._windows.append(window)

    def _record_failure(self, start_unix_s: float, duration_s: float, meter: "EnergyMeter", error: VqbenchError) -> None:
        self._failures += 1
        # Log the first failure and then every 100th, so a broken counter does not flood the log.
        if self._failures == 1 or self._failures % 100 == 0:
            logger.warning("energy window failed (%d so far) with meter %s: %s", self._failures, meter.name, error)
        with self._lock:
            self._windows.append(EnergyWindow(start_unix_s, duration_s, None, meter.method, 0, error=str(error)))

    def snapshot(self, last: int = 120) -> dict[str, Any]:
        if self.meter is None:
            return {"available": False, "reason": self.reason}
        with self._lock:
            windows = list(self._windows)
        measured = [window for window in windows if window.energy_j is not None]
        return {
            "available": True,
            "meter": self.meter.name,
            "method": self.meter.method,
            "reason": self.reason,
            "scope": "the whole device the meter covers, not this process alone",
            "window_s": self.window_s,
            "failed_windows": self._failures,
            "totals": {
                "windows": len(measured),
                "duration_s": sum(window.duration_s for window in measured),
                "energy_j": sum(window.energy_j or 0.0 for window in measured),
                "payloads_computed": sum(window.payloads_computed for window in measured),
            },
            "windows": [window.to_dict() for window in windows[-last:]],
        }


def open_energy_monitor(meter_names: Sequence[str], window_s: float = 5.0) -> EnergyMonitor:
    """Return a monitor on the first available meter of ``meter_names``, or one saying why none is."""
    try:
        from vqbench.meters.registry import create_meter
    except ImportError as error:
        return EnergyMonitor(None, f"vqbench.meters.registry cannot be imported ({error}); no server-side energy")
    reasons: list[str] = []
    for name in meter_names:
        try:
            meter = create_meter(name)
        except VqbenchError as error:
            reasons.append(f"{name}: {error}")
            continue
        availability = meter.probe()
        if availability.available:
            return EnergyMonitor(meter, availability.reason, window_s=window_s)
        reasons.append(f"{name}: {availability.reason}")
    reason = "; ".join(reasons) if reasons else "no energy meter was requested"
    return EnergyMonitor(None, f"no energy meter available ({reason})")


# ---------------------------------------------------------------------------------------------
# Galleries.


@dataclass
class _Gallery:
    embedding_dim: int
    labels: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


class GalleryStore:
    """Named in-memory galleries of labelled unit embeddings, bounded in count and size.

    Every pipeline served today embeds into the teacher's space, so a gallery enrolled through
    one pipeline can be searched through another. Only the embedding size is checked.
    """

    def __init__(self, max_galleries: int = 16, max_entries: int = 10_000) -> None:
        self.max_galleries = max_galleries
        self.max_entries = max_entries
        self._galleries: dict[str, _Gallery] = {}
        self._lock = threading.Lock()

    def enrol(self, name: str, label: str, embedding: np.ndarray) -> int:
        """Add one labelled embedding; return the gallery's new size."""
        with self._lock:
            gallery = self._galleries.get(name)
            if gallery is None:
                if len(self._galleries) >= self.max_galleries:
                    raise ServiceProblem(
                        409, "gallery_limit", f"{len(self._galleries)} galleries exist, the maximum",
                        "delete a gallery with DELETE /v1/gallery/{name} first",
                    )
                gallery = self._galleries[name] = _Gallery(embedding_dim=len(embedding))
            _check_dim(gallery, name, embedding)
            if len(gallery.labels) >= self.max_entries:
                raise ServiceProblem(
                    409, "gallery_full", f"gallery {name!r} holds {len(gallery.labels)} entries, the maximum",
                    f"delete the gallery with DELETE /v1/gallery/{name} or use another gallery name",
                )
            gallery.labels.append(label)
            gallery.embeddings.append(_unit(embedding))
            return len(gallery.labels)

    def identify(self, name: str, embedding: np.ndarray, top_k: int = 5) -> dict[str, Any]:
        """Return the best label and the ``top_k`` labels by their best cosine similarity."""
        with self._lock:
            gallery = self._galleries.get(name)
            if gallery is None or not gallery.labels:
                raise ServiceProblem(404, "gallery_not_found", f"gallery {name!r} does not exist or is empty",
                                     f"enrol identities with POST /v1/gallery/{name}/enrol first")
            _check_dim(gallery, name, embedding)
            labels = list(gallery.labels)
            matrix = np.stack(gallery.embeddings)
        similarities = matrix @ _unit(embedding)
        best_per_label: dict[str, float] = {}
        for label, similarity in zip(labels, similarities.tolist()):
            best_per_label[label] = max(similarity, best_per_label.get(label, -math.inf))
        ranked = sorted(best_per_label.items(), key=lambda item: item[1], reverse=True)[:top_k]
        return {
            "label": ranked[0][0],
            "cosine_similarity": ranked[0][1],
            "top": [{"label": label, "cosine_similarity": score} for label, score in ranked],
            "gallery_entries": len(labels),
        }

    def describe(self, name: str) -> dict[str, Any]:
        with self._lock:
            gallery = self._galleries.get(name)
            if gallery is None:
                raise ServiceProblem(404, "gallery_not_found", f"gallery {name!r} does not exist",
                                     f"enrol identities with POST /v1/gallery/{name}/enrol first")
            return {"name": name, "entries": len(gallery.labels), "labels": len(set(gallery.labels)),
                    "embedding_dim": gallery.embedding_dim, "max_entries": self.max_entries}

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._galleries.pop(name, None) is not None


def _check_dim(gallery: _Gallery, name: str, embedding: np.ndarray) -> None:
    if len(embedding) != gallery.embedding_dim:
        raise ServiceProblem(
            422, "embedding_size_mismatch",
            f"gallery {name!r} holds {gallery.embedding_dim}-d embeddings, this pipeline gives {len(embedding)}-d",
            "use a pipeline that embeds into the same space, or another gallery name",
        )


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine similarity of two vectors (0.0 when either is all zeros)."""
    return float(np.dot(_unit(a.astype(np.float64)), _unit(b.astype(np.float64))))


# ---------------------------------------------------------------------------------------------
# The app.


@dataclass(frozen=True)
class _ComputeResult:
    embeddings: np.ndarray
    compute_ms: float
    queue_ms: float


class _ServiceState:
    """Everything the routes share: pipelines, token, limits, worker, metrics, galleries."""

    def __init__(
        self,
        pipelines: list[Pipeline],
        token: str | None,
        max_request_bytes: int,
        max_pending_requests: int,
        galleries: GalleryStore,
        energy: EnergyMonitor,
        warm_up_errors: dict[str, str | None],
    ) -> None:
        self.pipelines = _index_pipelines(pipelines)
        self.token = token.encode() if token is not None else None
        self.max_request_bytes = max_request_bytes
        self.max_pending_requests = max_pending_requests
        self.galleries = galleries
        self.energy = energy
        self.warm_up_errors = warm_up_errors
        self.metrics = ServiceMetrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqbench-cloud")
        self.pending = 0

    def pipeline(self, kind: str, variant: str) -> Pipeline:
        pipeline = self.pipelines.get((kind, variant))
        if pipeline is None:
            served = ", ".join(f"{k}/{v}" for k, v in sorted(self.pipelines)) or "none"
            raise ServiceProblem(404, "pipeline_not_found", f"pipeline variant {kind}/{variant} is not served",
                                 f"use one of: {served} (GET /v1/pipelines lists them)")
        return pipeline


def _index_pipelines(pipelines: list[Pipeline]) -> dict[tuple[str, str], Pipeline]:
    index: dict[tuple[str, str], Pipeline] = {}
    for pipeline in pipelines:
        key = (pipeline.kind, pipeline.variant)
        if key in index:
            raise ScenarioError(f"pipeline variant {pipeline.kind}/{pipeline.variant} is given twice; serve it once")
        index[key] = pipeline
    return index


def create_app(
    pipelines: list[Pipeline],
    token: str | None,
    max_request_bytes: int = 1_000_000,
    *,
    energy: EnergyMonitor | None = None,
    galleries: GalleryStore | None = None,
    max_pending_requests: int = 64,
    warm_up_errors: dict[str, str | None] | None = None,
) -> FastAPI:
    """Build the service for ``pipelines``; ``token`` None serves without authentication.

    ``energy`` supplies server-side energy windows (started and stopped with the app's
    lifespan); ``warm_up_errors`` maps ``kind/variant`` to its warm-up error, for ``/health``.
    """
    if max_request_bytes < 1:
        raise ScenarioError(f"max_request_bytes must be at least 1, got {max_request_bytes}")
    state = _ServiceState(
        pipelines, token, max_request_bytes, max_pending_requests,
        galleries or GalleryStore(), energy or EnergyMonitor(None, "no energy meter was configured"),
        warm_up_errors or {},
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.energy.start(lambda: state.metrics.computations)
        logger.info("serving %d pipeline variants", len(state.pipelines))
        try:
            yield
        finally:
            state.energy.stop()
            state.executor.shutdown(wait=True)
            logger.info("service stopped")

    app = FastAPI(title="vqbench cloud half", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = state
    app.add_middleware(_RequestContextMiddleware, metrics=state.metrics, max_request_bytes=max_request_bytes)
    _add_exception_handlers(app)
    app.include_router(_public_router(state))
    app.include_router(_protected_router(state), dependencies=[Depends(_token_dependency(state))])
    return app


def _add_exception_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, problem: ServiceProblem) -> JSONResponse:
        return problem.response()

    async def on_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return ServiceProblem(422, "invalid_request", f"invalid value at {where}: {first.get('msg')}",
                              "see the endpoint table in the module documentation of vqbench.network.service").response()

    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        fix = "GET /v1/pipelines lists the variants served" if error.status_code == 404 else "check the method and path"
        return ServiceProblem(error.status_code, "http_error", str(error.detail), fix, dict(error.headers or {})).response()

    app.add_exception_handler(ServiceProblem, on_problem)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]


class _RequestContextMiddleware:
    """Assign the request id, reject bodies declared too large, and count every response."""

    def __init__(self, app: Any, metrics: ServiceMetrics, max_request_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        presented = headers.get(REQUEST_ID_HEADER, "")
        request_id = presented if _REQUEST_ID_PATTERN.match(presented) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = [500]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            problem = self._declared_length_problem(headers)
            if problem is not None:
                await problem.response()(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            self.metrics.record_request(getattr(route, "path", "unmatched"), status[0])

    def _declared_length_problem(self, headers: Headers) -> ServiceProblem | None:
        declared = headers.get("content-length")
        if declared is None:
            return None
        if not declared.isdigit():
            return ServiceProblem(400, "invalid_content_length", f"Content-Length {declared!r} is not a number",
                                  "send a decimal Content-Length or use chunked transfer encoding")
        if int(declared) > self.max_request_bytes:
            return _too_large(int(declared), self.max_request_bytes)
        return None


def _too_large(size_bytes: int, limit_bytes: int) -> ServiceProblem:
    return ServiceProblem(413, "payload_too_large", f"request body of {size_bytes} bytes exceeds {limit_bytes} bytes",
                          "send one payload per request, or restart the service with a larger max_request_bytes")


def _token_dependency(state: _ServiceState) -> Callable[[Request], None]:
    def require_token(request: Request) -> None:
        if state.token is None:
            return
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes time independent of where the tokens differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), state.token):
            raise ServiceProblem(401, "unauthorized", "bearer token missing or invalid",
                                 "send 'Authorization: Bearer <token>' with the token from the service's token file",
                                 headers={"WWW-Authenticate": "Bearer"})

    return require_token


# ---------------------------------------------------------------------------------------------
# Routes.


def _public_router(state: _ServiceState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return _health(state)

    return router


def _protected_router(state: _ServiceState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/pipelines")
    async def list_pipelines() -> dict[str, Any]:
        return {"pipelines": [_describe_pipeline(p) for p in state.pipelines.values()],
                "match_content_type": PAIR_CONTENT_TYPE, "max_request_bytes": state.max_request_bytes}

    @router.post("/v1/embed/{kind}/{variant}")
    async def embed(kind: str, variant: str, request: Request) -> JSONResponse:
        pipeline = state.pipeline(kind, variant)
        payload = await _read_payload(state, pipeline, request)
        result = await _compute(state, pipeline, [payload], request)
        embedding = result.embeddings[0]
        body = {"pipeline": kind, "variant": variant, "embedding": embedding.tolist(),
                "embedding_dim": len(embedding), "compute_ms": result.compute_ms, "queue_ms": result.queue_ms}
        return JSONResponse(body, headers=_timing_headers(result))

    @router.post("/v1/match/{kind}/{variant}")
    async def match(kind: str, variant: str, request: Request) -> JSONResponse:
        pipeline = state.pipeline(kind, variant)
        payloads = await _read_pair(state, pipeline, request)
        result = await _compute(state, pipeline, payloads, request)
        first, second = result.embeddings
        body = {"pipeline": kind, "variant": variant, "cosine_similarity": cosine_similarity(first, second),
                "euclidean_distance": float(np.linalg.norm(first.astype(np.float64) - second.astype(np.float64))),
                "compute_ms": result.compute_ms, "queue_ms": result.queue_ms}
        return JSONResponse(body, headers=_timing_headers(result))

    @router.post("/v1/gallery/{name}/enrol")
    async def enrol(name: str, pipeline: str, variant: str, label: str, request: Request) -> dict[str, Any]:
        _check_gallery_name(name)
        if not 1 <= len(label) <= _MAX_LABEL_CHARS:
            raise ServiceProblem(422, "invalid_label", f"label must be 1 to {_MAX_LABEL_CHARS} characters, got {len(label)}",
                                 "shorten the label")
        served = state.pipeline(pipeline, variant)
        payload = await _read_payload(state, served, request)
        result = await _compute(state, served, [payload], request)
        size = state.galleries.enrol(name, label, result.embeddings[0])
        return {"gallery": name, "label": label, "gallery_entries": size, "compute_ms": result.compute_ms}

    @router.post("/v1/gallery/{name}/identify")
    async def identify(name: str, pipeline: str, variant: str, request: Request) -> dict[str, Any]:
        _check_gallery_name(name)
        served = state.pipeline(pipeline, variant)
        payload = await _read_payload(state, served, request)
        result = await _compute(state, served, [payload], request)
        found = state.galleries.identify(name, result.embeddings[0])
        return {"gallery": name, **found, "compute_ms": result.compute_ms}

    @router.get("/v1/gallery/{name}")
    async def describe_gallery(name: str) -> dict[str, Any]:
        _check_gallery_name(name)
        return state.galleries.describe(name)

    @router.delete("/v1/gallery/{name}")
    async def delete_gallery(name: str) -> dict[str, Any]:
        _check_gallery_name(name)
        if not state.galleries.delete(name):
            raise ServiceProblem(404, "gallery_not_found", f"gallery {name!r} does not exist", "check the gallery name")
        return {"gallery": name, "deleted": True}

    @router.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return {**state.metrics.snapshot(), "pending_requests": state.pending, "energy": state.energy.snapshot()}

    return router


def _health(state: _ServiceState) -> dict[str, Any]:
    import sys

    components = {id(c): c for p in state.pipelines.values() if isinstance(c := getattr(p, "components", None), Components)}
    models = [_describe_components(c) for c in components.values()]
    failed = {label: error for label, error in state.warm_up_errors.items() if error}
    return {
        "status": "degraded" if failed else "ok",
        "warm_up_errors": failed,
        "models": models,
        "pipelines": [f"{kind}/{variant}" for kind, variant in state.pipelines],
        "versions": {
            "vqbench": __version__,
            "python": platform.python_version(),
            "dlib": getattr(sys.modules.get("dlib"), "__version__", None),
            "numpy": np.__version__,
        },
        "uptime_s": time.time() - state.metrics.started_unix_s,
    }


def _describe_components(components: Components) -> dict[str, Any]:
    # Components loads its models on first use (functools.cached_property); loaded ones are in vars().
    loaded = vars(components)
    teacher = loaded.get("teacher")
    return {
        "aligner_loaded": "aligner" in loaded,
        "teacher_loaded": teacher is not None,
        "teacher": getattr(teacher, "name", None),
        "teacher_runtime": getattr(teacher, "runtime", None),
        "teacher_fingerprint": getattr(teacher, "fingerprint", None),
    }


def _describe_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    kind = payload_kind_of(pipeline)
    return {"pipeline": pipeline.kind, "variant": pipeline.variant, "payload_kind": kind.name,
            "content_types": list(kind.content_types(pipeline)), "max_image_pixels": kind.max_image_pixels}


def _check_gallery_name(name: str) -> None:
    if not _NAME_PATTERN.match(name):
        raise ServiceProblem(422, "invalid_gallery_name", f"gallery name {name!r} is invalid",
                             "use 1 to 64 characters of letters, digits, '_', '.' and '-', starting with a letter or digit")


def _timing_headers(result: _ComputeResult) -> dict[str, str]:
    return {"Server-Timing": f"queue;dur={result.queue_ms:.3f}, compute;dur={result.compute_ms:.3f}"}


# ---------------------------------------------------------------------------------------------
# Reading and validating payloads.


def _check_content_type(pipeline: Pipeline, declared: str) -> PayloadKind:
    kind = payload_kind_of(pipeline)
    accepted = kind.content_types(pipeline)
    if declared not in accepted:
        raise ServiceProblem(415, "unsupported_media_type",
                             f"{pipeline.kind}/{pipeline.variant} does not accept Content-Type {declared or '(none)'}",
                             f"send the payload as one of: {', '.join(accepted)}")
    return kind


def _validate_payload(kind: PayloadKind, payload: bytes, content_type: str) -> None:
    if not payload:
        raise ServiceProblem(422, "payload_invalid", "the payload is empty", "send the bytes produced by the edge half")
    if kind.max_image_pixels is not None:
        try:
            check_image_header(payload, content_type, kind.max_image_pixels)
        except PayloadError as error:
            raise _payload_problem(error) from error


def _payload_problem(error: VqbenchError) -> ServiceProblem:
    return ServiceProblem(422, "payload_invalid", str(error),
                          "send the unmodified bytes produced by the edge half of this pipeline variant")


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """Read the body, stopping with 413 as soon as it passes ``limit_bytes``."""
    chunks: list[bytes] = []
    size_bytes = 0
    async for chunk in request.stream():
        size_bytes += len(chunk)
        if size_bytes > limit_bytes:
            raise _too_large(size_bytes, limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_payload(state: _ServiceState, pipeline: Pipeline, request: Request) -> bytes:
    declared = media_type(request.headers.get("content-type"))
    kind = _check_content_type(pipeline, declared)
    payload = await _read_body(request, state.max_request_bytes)
    _validate_payload(kind, payload, declared)
    return payload


async def _read_pair(state: _ServiceState, pipeline: Pipeline, request: Request) -> list[bytes]:
    if media_type(request.headers.get("content-type")) != PAIR_CONTENT_TYPE:
        raise ServiceProblem(415, "unsupported_media_type", "a match request must be a payload pair",
                             f"send Content-Type {PAIR_CONTENT_TYPE} with the framing in the service documentation")
    inner_type = media_type(request.headers.get(PAYLOAD_TYPE_HEADER))
    kind = _check_content_type(pipeline, inner_type)
    body = await _read_body(request, state.max_request_bytes)
    try:
        payloads = split_pair(body)
    except PayloadError as error:
        raise _payload_problem(error) from error
    for payload in payloads:
        _validate_payload(kind, payload, inner_type)
    return payloads


def frame_pair(first: bytes, second: bytes) -> bytes:
    """Frame two payloads for ``/v1/match``: each preceded by its uint32 big-endian length."""
    return _PAIR_LENGTH.pack(len(first)) + first + _PAIR_LENGTH.pack(len(second)) + second


def split_pair(body: bytes) -> list[bytes]:
    """Split a framed payload pair, raising PayloadError when a length does not fit the body."""
    payloads: list[bytes] = []
    offset = 0
    for which in ("first", "second"):
        if len(body) - offset < _PAIR_LENGTH.size:
            raise PayloadError(f"pair body of {len(body)} bytes ends before the length of the {which} payload")
        (length,) = _PAIR_LENGTH.unpack_from(body, offset)
        offset += _PAIR_LENGTH.size
        if length > len(body) - offset:
            raise PayloadError(f"the {which} payload declares {length} bytes but only {len(body) - offset} follow")
        payloads.append(body[offset : offset + length])
        offset += length
    if offset != len(body):
        raise PayloadError(f"pair body has {len(body) - offset} bytes after the second payload")
    return payloads


# ---------------------------------------------------------------------------------------------
# Running the cloud half.


async def _compute(state: _ServiceState, pipeline: Pipeline, payloads: list[bytes], request: Request) -> _ComputeResult:
    """Run ``pipeline.cloud(payloads)`` on the worker thread and map its errors to responses."""
    if state.pending >= state.max_pending_requests:
        raise ServiceProblem(503, "busy", f"{state.pending} requests are already waiting for the model worker",
                             "retry after a short wait, or send fewer concurrent requests", headers={"Retry-After": "1"})
    label = f"{pipeline.kind}/{pipeline.variant}"
    request_id = request.scope.get("state", {}).get("request_id")
    state.pending += 1
    try:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(state.executor, _timed_cloud, pipeline, payloads, time.perf_counter_ns())
    except (PayloadError, CorruptImageError) as error:
        logger.info("request %s to %s: payload rejected: %s", request_id, label, error)
        raise _payload_problem(error) from error
    except Exception:
        logger.exception("request %s to %s failed in cloud()", request_id, label)
        raise ServiceProblem(500, "internal_error", f"{label} failed while computing (request id {request_id})",
                             "report this with the request id; the service log holds the traceback") from None
    finally:
        state.pending -= 1
    state.metrics.record_compute(label, result.compute_ms, result.queue_ms, len(payloads))
    return result


def _timed_cloud(pipeline: Pipeline, payloads: list[bytes], submitted_ns: int) -> _ComputeResult:
    started_ns = time.perf_counter_ns()
    embeddings = np.asarray(pipeline.cloud(payloads), dtype=np.float32)
    finished_ns = time.perf_counter_ns()
    if embeddings.ndim != 2 or len(embeddings) != len(payloads) or not np.isfinite(embeddings).all():
        raise RunError(f"{pipeline.kind}/{pipeline.variant} returned embeddings of shape {embeddings.shape} "
                       f"(finite: {bool(np.isfinite(embeddings).all())}) for {len(payloads)} payloads")
    return _ComputeResult(embeddings, (finished_ns - started_ns) / 1e6, (started_ns - submitted_ns) / 1e6)


# ---------------------------------------------------------------------------------------------
# Building the served pipelines and running uvicorn.


def build_served_pipelines(scenario: "Scenario | None") -> list[Pipeline]:
    """Build the scenario's pipeline variants, or the defaults when ``scenario`` is None.

    The defaults are ``DEFAULT_PIPELINE_CONFIGS`` plus each ``DEFAULT_VQ_PIPELINE_CONFIGS``
    entry that this build can construct (its kind is in the scenario schema, its models exist).
    """
    from pydantic import TypeAdapter, ValidationError

    from vqbench.pipelines.registry import build_pipelines
    from vqbench.scenario import AlignmentConfig, PipelineConfig, TeacherConfig

    if scenario is not None:
        components = Components(scenario.alignment, scenario.teacher)
        return build_pipelines(list(scenario.pipelines), components)

    components = Components(AlignmentConfig(), TeacherConfig())
    adapter = TypeAdapter(PipelineConfig)
    pipelines = build_pipelines([adapter.validate_python(raw) for raw in DEFAULT_PIPELINE_CONFIGS], components)
    for raw in DEFAULT_VQ_PIPELINE_CONFIGS:
        try:
            config = adapter.validate_python(raw)
            pipelines.extend(build_pipelines([config], components))
        except ValidationError:
            logger.info("pipeline kind %s is not in this build's scenario schema; not served", raw["kind"])
        except VqbenchError as error:
            logger.warning("default pipeline %s is not served: %s", raw["kind"], error)
    return pipelines


def warm_up(pipelines: list[Pipeline]) -> dict[str, str | None]:
    """Load every pipeline's models by running one synthetic payload through both halves.

    Returns ``kind/variant`` -> None on success or the error message; a VqbenchError is logged
    and kept, any other exception propagates because it is a bug.
    """
    from PIL import Image

    gray_chip = np.full((150, 150, 3), 128, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.full((250, 250, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    gray_image = buffer.getvalue()
    errors: dict[str, str | None] = {}
    for pipeline in pipelines:
        label = f"{pipeline.kind}/{pipeline.variant}"
        try:
            payload = pipeline.edge_from_chip(gray_chip) if pipeline.edge_aligns else pipeline.edge(gray_image).payload
            pipeline.cloud([payload])
            errors[label] = None
        except VqbenchError as error:
            logger.warning("warm-up of %s failed: %s", label, error)
            errors[label] = str(error)
    return errors


def is_loopback_host(host: str) -> bool:
    """Return True when ``host`` names only this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise RunError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --port or host") from error
    sock.listen(2048)
    return sock


def serve(
    host: str,
    port: int,
    scenario_path: Path | None,
    token_file: Path | None,
    *,
    max_request_bytes: int = 1_000_000,
    graceful_shutdown_s: float = 30.0,
    energy_window_s: float = 5.0,
) -> None:
    """Load the models, then serve until SIGINT or SIGTERM.

    On shutdown uvicorn stops accepting connections and lets requests in flight finish for up
    to ``graceful_shutdown_s`` before it closes the app (stopping the energy thread and the
    model worker).
    """
    import uvicorn

    from vqbench.network.client import read_token_file
    from vqbench.scenario import MetersConfig, load_scenario

    token = read_token_file(token_file) if token_file is not None else None
    if token is None and not is_loopback_host(host):
        logger.warning("serving on %s without a token: anyone who can reach it can use it; pass --token-file", host)
    scenario = load_scenario(scenario_path) if scenario_path is not None else None
    pipelines = build_served_pipelines(scenario)
    logger.info("loading models for %s", ", ".join(f"{p.kind}/{p.variant}" for p in pipelines))
    warm_up_errors = warm_up(pipelines)
    meter_names = scenario.meters.host if scenario is not None else MetersConfig().host
    energy = open_energy_monitor(meter_names, window_s=energy_window_s)
    if not energy.available:
        logger.warning("server-side energy is unavailable: %s", energy.reason)
    app = create_app(pipelines, token, max_request_bytes, energy=energy, warm_up_errors=warm_up_errors)

    sock = _listen_socket(host, port)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=int(math.ceil(graceful_shutdown_s)),
        timeout_keep_alive=5, limit_concurrency=1024,
    )
    logger.info("listening on http://%s:%d", host, sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])


def serve_command(host: str, port: int, scenario: Path | None, token_file: Path | None) -> None:
    """Entry point for ``vqbench serve``: run the service in the foreground."""
    serve(host, port, scenario, token_file)
