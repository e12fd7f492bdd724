"""The cloud half as an HTTP service: ``vqbench serve``.

Each request carries one payload exactly as an edge half produced it, and the service routes
it to the ``cloud()`` method of the pipeline variant named in the path. The payload is the
request body itself: no form encoding, no base64, nothing unpickled.

Endpoints (JSON responses; every error body is ``{"error", "detail", "fix"}``):

=========================================  ==================================================
``GET /health``                            models loaded, warm-up result, versions (no token)
``GET /v1/pipelines``                      variants served, content types they accept, alignment settings
``POST /v1/embed/{pipeline}/{variant}``    body: one payload -> ``{embedding, face_detected, compute_ms}``
``POST /v1/match/{pipeline}/{variant}``    body: a payload pair (framing below) -> cosine
``POST /v1/gallery/{name}/enrol``          ``?pipeline=&variant=&label=``, body: one payload;
                                           one variant enrols all entries of a gallery
``POST /v1/gallery/{name}/identify``       ``?pipeline=&variant=``, body: one payload
``GET|DELETE /v1/gallery/{name}``          gallery size and enrolling variant, or remove it
``GET /metrics``                           request counts, statuses, compute time, energy
=========================================  ==================================================

Content types. ``PAYLOAD_KINDS`` maps each pipeline kind to the media types its payload may
be sent as, so serving a new kind of payload takes one entry there. A pipeline kind without
an entry accepts ``application/octet-stream``. Current entries:

- ``cloud-raw``: the camera's image file, ``image/jpeg``, ``image/png`` or ``image/webp``.
- ``cloud-codec``: the codec's own type, ``image/jpeg``, ``image/webp`` or ``image/png``.
- ``edge-vq-recon`` and ``edge-vq-student``: ``application/vnd.vqbench.vq-codes`` (or
  ``application/octet-stream``), the versioned header and bit-packed indices.
- ``edge-embed``: ``application/octet-stream``, the format byte and the embedding. An
  embedding with a NaN or an infinite component is rejected with 422 ``payload_invalid``.

For image payloads the service reads the image header before decoding: the format must match
the declared content type and the pixel count must stay under the kind's limit, so a small
file that claims a huge image is rejected before any memory is allocated for it.

For ``cloud-codec`` the header must also show the variant's chip size (``size_px`` square),
because its edge half resizes every chip to that size.

Face detection. When dlib's detector finds no face, the aligner embeds a fixed fallback box
instead, so an image without a face still gets an embedding. Every response that embeds
reports ``aligned_on`` (``"cloud"`` or ``"edge"``) and ``face_detected`` (a list of two for
``/v1/match``):

- ``aligned_on: "cloud"`` (``cloud-raw``): the service ran the detector, and ``face_detected``
  is true or false. Enrolment of a payload with ``face_detected: false`` is rejected with 422
  ``no_face_detected``. Embed, match and identify return their result with the flag.
- ``aligned_on: "edge"`` (codec chips, VQ codes, edge embeddings): the edge detected and
  aligned the face and the payload carries no detection result, so ``face_detected`` is null
  and enrolment is accepted. The service cannot tell a face chip from a chip that the edge cut
  from its fallback box.

Match framing (``Content-Type: application/vnd.vqbench.pair``, the payloads' own type in the
``X-Payload-Type`` header)::

    uint32 big-endian length of A | A bytes | uint32 big-endian length of B | B bytes

Checks, in order: bearer token (401), pipeline and variant (404), content type (415), body
size (413, from ``Content-Length`` before the body is read, then while reading it; the limit
is ``vqbench serve --max-request-bytes``), a body that stalls (408, when no part of it arrives
for ``vqbench serve --body-timeout-s``), payload validation and decoding (422). A response
sent before the body was read to its end (401, 404, 415, 413, 408) closes the connection,
since the unread rest of the body would be taken for the next request. The 401, 408 and 413
rejections are logged as warnings, at most one a minute per status like the disconnects below.
Under ``vqbench serve``, request headers that do not finish within 30 s get 408
``header_timeout`` from the HTTP protocol, and a new connection that sends nothing for 30 s is
closed (``http_limits`` says when the 30 s start). Neither reaches the app, so neither has
an endpoint or a status in ``/metrics``. ``connections_timed_out`` counts them there as
``partial_headers`` and ``silent``. A ``PayloadError`` or ``CorruptImageError`` raised by a pipeline's ``cloud()`` becomes a 422; any other exception
becomes a 500 whose traceback is logged with the request id. Every response carries
``X-Request-ID``: the client's value when it is 1 to 64 characters of ``[A-Za-z0-9._:-]``,
otherwise one the service generates. A client that closes the connection before its whole
body has arrived gets no response: the service logs a warning with the request id and
counts the request with status 499 in ``/metrics``. Warnings about such clients come at most
once a minute; the others go to the DEBUG log, and the next warning gives their number.
Under ``vqbench serve`` a malformed chunked body looks the same to the app: uvicorn answers
it with its own 400 and closes the connection, and the app only learns that the body
stopped, so it too counts as 499.

``/v1/pipelines`` lists, per variant, the ``alignment`` settings of its cloud half (the
scenario's ``alignment`` section, null for a pipeline without the shared models). A load
test compares them with its own before it computes the embeddings it expects.

A ``Content-Length`` that is not a decimal number, or two that differ, never reaches the app
under ``vqbench serve``: uvicorn's HTTP/1.1 parser (h11) rejects the request and uvicorn
responds with its own plain-text 400 ``Invalid HTTP request received.`` and closes the
connection (uvicorn 0.55, ``protocols/http/h11_impl.py``). The app's JSON 400
``invalid_content_length`` is returned only where the server passes such a header on, as the
in-process test client does.

Concurrency: requests are parsed and validated on the event loop, and ``cloud()`` runs on
one worker thread. The pipelines share one aligner and one teacher, and dlib does not document
its detector and networks as safe to call from several threads at once. Requests wait for the
worker in arrival order. Beyond ``max_pending_requests`` waiting, the service returns 503 with
``Retry-After``. ``compute_ms`` is the time inside ``cloud()`` and ``queue_ms`` the wait for
the worker. NOTE: one worker uses at most the cores that one ``cloud()`` call uses, so the
throughput measured is that of a single model instance.

Modules beside this one hold the parts that do not depend on the app: ``payload_kinds``
(``PAYLOAD_KINDS``, the image header check, pair framing), ``galleries``, ``service_metrics``
(request statistics and energy windows), ``served_pipelines`` (the default variants and the
warm-up) and ``service_errors`` (``ServiceProblem``). This module re-exports their public names.
Two more are not re-exported: ``face_detection`` records the detector's result for the
responses, and ``http_limits`` contains the header deadline and the rate-limited warnings.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import platform
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vqbench import __version__
from vqbench.data.align import CorruptImageError
from vqbench.errors import PayloadError, RunError, ScenarioError, VqbenchError
from vqbench.network.face_detection import aligned_on, run_cloud
from vqbench.network.galleries import GalleryStore, cosine_similarity
from vqbench.network.http_limits import RateLimitedWarnings, header_timeout_protocol, loggable_path
from vqbench.network.payload_kinds import (
    OPAQUE_TYPE,
    PAIR_CONTENT_TYPE,
    PAYLOAD_KINDS,
    PAYLOAD_TYPE_HEADER,
    RAW_IMAGE_TYPES,
    VQ_CODES_TYPE,
    PayloadKind,
    check_image_header,
    frame_pair,
    media_type,
    payload_kind_of,
    split_pair,
)
from vqbench.network.served_pipelines import (
    DEFAULT_PIPELINE_CONFIGS,
    DEFAULT_VQ_PIPELINE_CONFIGS,
    build_served_pipelines,
    warm_up,
)
from vqbench.network.service_errors import ServiceProblem
from vqbench.network.service_metrics import EnergyMonitor, EnergyWindow, ServiceMetrics, open_energy_monitor
from vqbench.pipelines.base import Components, Pipeline
from vqbench.text import plural

if TYPE_CHECKING:
    import uvicorn

# Public names, including those re-exported from the modules listed in the docstring.
__all__ = [
    "DEFAULT_PIPELINE_CONFIGS",
    "DEFAULT_VQ_PIPELINE_CONFIGS",
    "OPAQUE_TYPE",
    "PAIR_CONTENT_TYPE",
    "PAYLOAD_KINDS",
    "PAYLOAD_TYPE_HEADER",
    "RAW_IMAGE_TYPES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "REQUEST_ID_HEADER",
    "VQ_CODES_TYPE",
    "EnergyMonitor",
    "EnergyWindow",
    "GalleryStore",
    "PayloadKind",
    "ServiceMetrics",
    "ServiceProblem",
    "build_served_pipelines",
    "check_image_header",
    "cosine_similarity",
    "create_app",
    "frame_pair",
    "is_loopback_host",
    "media_type",
    "open_energy_monitor",
    "payload_kind_of",
    "announcing_server",
    "serve",
    "serve_command",
    "service_url",
    "split_pair",
    "warm_up",
]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# ASCII digits only: str.isdigit() also accepts characters such as '²' that int() rejects.
_CONTENT_LENGTH_PATTERN = re.compile(r"^[0-9]+$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_LABEL_CHARS = 128

#: Default largest request body, in bytes (``vqbench serve --max-request-bytes``). cloud-raw
#: accepts camera images of up to 4096 x 4096 pixels (16 MP). Estimate: a camera JPEG takes
#: about 0.2 to 0.5 bytes per pixel, so 3 to 8 MB at 16 MP, and 16 MiB admits it with room.
#: NOTE: a lossless PNG of a 16 MP photo is usually larger than 16 MiB and needs a larger limit.
#: Bodies are held in memory while they are read, so with uvicorn's limit_concurrency of 1024
#: in ``serve`` up to 1024 x 16 MiB = 16 GiB could be held at once. Lower the limit on a
#: smaller host that untrusted clients can reach.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: Maximum accepted ``--max-request-bytes``: 1 GiB, 64 times the default. A larger limit would
#: let a few clients exhaust the host's memory with bodies no face image needs.
MAX_REQUEST_BYTES_LIMIT = 1024 * 1024 * 1024

#: Default longest wait, in seconds, for the next part of a request body
#: (``vqbench serve --body-timeout-s``). A client that stops sending mid-body would otherwise
#: hold its connection and its partial body for as long as it likes. The wait is per read,
#: not for the whole body, so a slow link that keeps sending is not cut off.
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Largest accepted ``--body-timeout-s``: one hour, far above any upload of a face, so that a
#: typo such as 1e300 cannot turn the limit off.
MAX_BODY_TIMEOUT_S = 3600.0
#: Minimum accepted ``--body-timeout-s``: 0.1 s. Below it a healthy client one long-distance
#: round trip away (an estimate: 0.1 to 0.3 s) could get 408 between two TCP segments of one body.
MIN_BODY_TIMEOUT_S = 0.1

#: Status counted in ``/metrics`` for a request whose client disconnected before its body
#: arrived. No response is sent; 499 is nginx's code for a request the client closed.
CLIENT_CLOSED_REQUEST_STATUS = 499


# ---------------------------------------------------------------------------------------------
# The app.


@dataclass(frozen=True)
class _ComputeResult:
    embeddings: np.ndarray
    # Per payload: whether the service's detector found a face, None where the edge aligned.
    face_detected: list[bool | None]
    compute_ms: float
    queue_ms: float


class _ServiceState:
    """Everything the routes share: pipelines, token, limits, worker, metrics, galleries."""

    def __init__(
        self,
        pipelines: list[Pipeline],
        token: str | None,
        max_request_bytes: int,
        body_timeout_s: float,
        max_pending_requests: int,
        galleries: GalleryStore,
        energy: EnergyMonitor,
        warm_up_errors: dict[str, str | None],
    ) -> None:
        self.pipelines = _index_pipelines(pipelines)
        self.token = token.encode() if token is not None else None
        self.max_request_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
        self.max_pending_requests = max_pending_requests
        self.galleries = galleries
        self.energy = energy
        self.warm_up_errors = warm_up_errors
        self.metrics = ServiceMetrics()
        self.disconnect_log = RateLimitedWarnings("disconnect", logger)
        self.rejection_logs = {status: RateLimitedWarnings(f"{status} rejection", logger) for status in _LOGGED_REJECTIONS}
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
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    *,
    energy: EnergyMonitor | None = None,
    galleries: GalleryStore | None = None,
    max_pending_requests: int = 64,
    warm_up_errors: dict[str, str | None] | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> FastAPI:
    """Build the service for ``pipelines``; ``token`` None serves without authentication.

    ``energy`` supplies server-side energy windows (started and stopped with the app's
    lifespan); ``warm_up_errors`` maps ``kind/variant`` to its warm-up error, for ``/health``.
    """
    _check_max_request_bytes(max_request_bytes)
    _check_body_timeout(body_timeout_s)
    state = _ServiceState(
        pipelines, token, max_request_bytes, body_timeout_s, max_pending_requests,
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
    app.add_middleware(_RequestContextMiddleware, metrics=state.metrics, disconnect_log=state.disconnect_log)
    _add_exception_handlers(app)
    app.include_router(_public_router(state))
    app.include_router(_protected_router(state), dependencies=[Depends(_token_dependency(state))])
    return app


def _add_exception_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, problem: ServiceProblem) -> JSONResponse:
        if problem.status in _LOGGED_REJECTIONS:
            path = loggable_path(request.scope.get("path", ""))
            request.app.state.service.rejection_logs[problem.status].record(
                f"request {_request_id(request)}: {request.method} {path} rejected with "
                f"{problem.status} {problem.error}: {problem.detail}")
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
    """Assign the request id, count every response under its route, and log client disconnects.

    A response that starts before the request's body was read to its end closes the
    connection: the unread rest of the body would otherwise be parsed as the next request, and
    uvicorn would hold the connection until its keep-alive timeout.
    """

    def __init__(self, app: Any, metrics: ServiceMetrics, disconnect_log: RateLimitedWarnings) -> None:
        self.app = app
        self.metrics = metrics
        self.disconnect_log = disconnect_log

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        presented = headers.get(REQUEST_ID_HEADER, "")
        request_id = presented if _REQUEST_ID_PATTERN.match(presented) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = [500]
        received_bytes = [0]
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        body_read = [not has_body]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers.append(REQUEST_ID_HEADER, request_id)
                if not body_read[0] and "connection" not in response_headers:
                    response_headers.append("Connection", "close")
            await send(message)

        async def receive_counted() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received_bytes[0] += len(message.get("body", b""))
                body_read[0] = body_read[0] or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_counted, send_with_id)
        except ClientDisconnect:
            # starlette raises this while the body is read. The connection is gone, so no
            # response can be sent, and a dropped edge link is not a fault of the service.
            status[0] = CLIENT_CLOSED_REQUEST_STATUS
            # uvicorn drops body bytes that arrive together with the disconnect, so the count is
            # of bytes the app read, which can be fewer than the client sent.
            self.disconnect_log.record(
                f"request {request_id}: client disconnected before its body was read ({received_bytes[0]} of "
                f"{headers.get('content-length', 'an undeclared number of')} bytes read) from {scope.get('method')} "
                f"{loggable_path(scope.get('path', ''))}; no response sent")
        finally:
            route = scope.get("route")
            self.metrics.record_request(getattr(route, "path", "unmatched"), status[0])


def _check_max_request_bytes(max_request_bytes: int) -> None:
    if not 1 <= max_request_bytes <= MAX_REQUEST_BYTES_LIMIT:
        raise ScenarioError(f"--max-request-bytes must be from 1 to {MAX_REQUEST_BYTES_LIMIT} (1 GiB), got "
                            f"{max_request_bytes}; give the largest request body to accept, in bytes "
                            f"(default {DEFAULT_MAX_REQUEST_BYTES})")


def _check_body_timeout(body_timeout_s: float) -> None:
    if not (math.isfinite(body_timeout_s) and MIN_BODY_TIMEOUT_S <= body_timeout_s <= MAX_BODY_TIMEOUT_S):
        raise ScenarioError(f"--body-timeout-s must be from {MIN_BODY_TIMEOUT_S:g} to {MAX_BODY_TIMEOUT_S:g} seconds, "
                            f"got {body_timeout_s}; give the maximum wait for the next part of a request body "
                            f"(default {DEFAULT_BODY_TIMEOUT_S:g})")


#: Rejections logged as warnings (rate-limited): a wrong token, a body that stalls and a body
#: over the limit point at a misconfigured client or at abuse. Other rejections are only counted
#: in ``/metrics``, and a payload that a pipeline rejects is logged at INFO where that happens.
_LOGGED_REJECTIONS = frozenset({401, 408, 413})


def _too_large(size_bytes: int, limit_bytes: int) -> ServiceProblem:
    return ServiceProblem(413, "payload_too_large",
                          f"request body of {size_bytes} bytes exceeds the service's limit of {limit_bytes} bytes",
                          "send one payload per request (a pair for /v1/match), or restart the service with a larger "
                          f"`vqbench serve --max-request-bytes` (now {limit_bytes})")


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
                "embedding_dim": len(embedding), **_detection_fields(pipeline, result.face_detected[0]),
                "compute_ms": result.compute_ms, "queue_ms": result.queue_ms}
        return JSONResponse(body, headers=_timing_headers(result))

    @router.post("/v1/match/{kind}/{variant}")
    async def match(kind: str, variant: str, request: Request) -> JSONResponse:
        pipeline = state.pipeline(kind, variant)
        payloads = await _read_pair(state, pipeline, request)
        result = await _compute(state, pipeline, payloads, request)
        first, second = result.embeddings
        body = {"pipeline": kind, "variant": variant, "cosine_similarity": cosine_similarity(first, second),
                "euclidean_distance": float(np.linalg.norm(first.astype(np.float64) - second.astype(np.float64))),
                **_detection_fields(pipeline, result.face_detected),
                "compute_ms": result.compute_ms, "queue_ms": result.queue_ms}
        return JSONResponse(body, headers=_timing_headers(result))

    @router.post("/v1/gallery/{name}/enrol")
    async def enrol(name: str, pipeline: str, variant: str, label: str, request: Request) -> dict[str, Any]:
        _check_gallery_name(name)
        if not 1 <= len(label) <= _MAX_LABEL_CHARS:
            raise ServiceProblem(422, "invalid_label", f"label must be 1 to {_MAX_LABEL_CHARS} characters, got {len(label)}",
                                 "shorten the label")
        if not label.isprintable():
            # Control and direction-override characters would change how logs and listings read.
            raise ServiceProblem(422, "invalid_label", f"label {label!r} contains control or formatting characters",
                                 "use printable characters only")
        served = state.pipeline(pipeline, variant)
        payload = await _read_payload(state, served, request)
        result = await _compute(state, served, [payload], request)
        face_detected = result.face_detected[0]
        if face_detected is False:
            logger.info("request %s: no face detected; not enrolled in gallery %r", _request_id(request), name)
            raise ServiceProblem(422, "no_face_detected",
                                 f"no face was detected in the payload, so it was not enrolled in gallery {name!r}",
                                 "send an image in which one frontal face is clearly visible")
        size = state.galleries.enrol(name, label, result.embeddings[0], f"{served.kind}/{served.variant}")
        return {"gallery": name, "label": label, "gallery_entries": size,
                **_detection_fields(served, face_detected), "compute_ms": result.compute_ms}

    @router.post("/v1/gallery/{name}/identify")
    async def identify(name: str, pipeline: str, variant: str, request: Request) -> dict[str, Any]:
        _check_gallery_name(name)
        served = state.pipeline(pipeline, variant)
        payload = await _read_payload(state, served, request)
        result = await _compute(state, served, [payload], request)
        found = state.galleries.identify(name, result.embeddings[0])
        return {"gallery": name, **found, **_detection_fields(served, result.face_detected[0]),
                "compute_ms": result.compute_ms}

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
    components = getattr(pipeline, "components", None)
    alignment = components.alignment_config.model_dump() if isinstance(components, Components) else None
    return {"pipeline": pipeline.kind, "variant": pipeline.variant, "payload_kind": kind.name,
            "content_types": list(kind.content_types(pipeline)), "max_image_pixels": kind.max_image_pixels,
            "chip_side_px": kind.chip_side_px(pipeline), "aligned_on": aligned_on(pipeline), "alignment": alignment}


def _detection_fields(pipeline: Pipeline, face_detected: bool | None | list[bool | None]) -> dict[str, Any]:
    """Return the response fields ``aligned_on`` and ``face_detected``."""
    return {"aligned_on": aligned_on(pipeline), "face_detected": face_detected}


def _check_gallery_name(name: str) -> None:
    if not _NAME_PATTERN.match(name):
        raise ServiceProblem(422, "invalid_gallery_name", f"gallery name {name!r} is invalid",
                             "use 1 to 64 characters of letters, digits, '_', '.' and '-', starting with a letter or digit")


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


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


def _validate_payload(pipeline: Pipeline, kind: PayloadKind, payload: bytes, content_type: str) -> None:
    if not payload:
        raise ServiceProblem(422, "payload_invalid", "the payload is empty", "send the bytes produced by the edge half")
    if kind.check_payload is not None:
        try:
            kind.check_payload(pipeline, payload)
        except PayloadError as error:
            raise _payload_problem(error) from error
    if kind.max_image_pixels is None:
        return
    try:
        width_px, height_px = check_image_header(payload, content_type, kind.max_image_pixels)
    except PayloadError as error:
        raise _payload_problem(error) from error
    side_px = kind.chip_side_px(pipeline)
    if side_px is not None and (width_px, height_px) != (side_px, side_px):
        raise ServiceProblem(422, "payload_invalid",
                             f"chip is {width_px}x{height_px} pixels but {pipeline.kind}/{pipeline.variant} "
                             f"sends {side_px}x{side_px} chips",
                             "send the unmodified bytes produced by the edge half of this pipeline variant")


def _payload_problem(error: VqbenchError) -> ServiceProblem:
    return ServiceProblem(422, "payload_invalid", str(error),
                          "send the unmodified bytes produced by the edge half of this pipeline variant")


async def _read_body(request: Request, limit_bytes: int, timeout_s: float) -> bytes:
    """Read the body after checking its declared length.

    Stops with 413 as soon as the body passes ``limit_bytes``, and with 408 when no part of it
    arrives for ``timeout_s``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        # Only in process can such a header reach the app; uvicorn's parser rejects it first.
        if not _CONTENT_LENGTH_PATTERN.match(declared):
            raise ServiceProblem(400, "invalid_content_length", f"Content-Length {declared!r} is not a number",
                                 "send a decimal Content-Length or use chunked transfer encoding")
        if int(declared) > limit_bytes:
            raise _too_large(int(declared), limit_bytes)
    chunks: list[bytes] = []
    size_bytes = 0
    stream = request.stream()
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            expected = f" of {declared}" if declared is not None else ""
            raise ServiceProblem(
                408, "body_timeout",
                f"no part of the request body arrived for {timeout_s:g} s ({size_bytes}{expected} bytes received)",
                "send the whole body without pausing, or restart the service with a larger "
                f"`vqbench serve --body-timeout-s` (now {timeout_s:g})",
            ) from None
        size_bytes += len(chunk)
        if size_bytes > limit_bytes:
            raise _too_large(size_bytes, limit_bytes)
        chunks.append(chunk)


async def _read_payload(state: _ServiceState, pipeline: Pipeline, request: Request) -> bytes:
    declared = media_type(request.headers.get("content-type"))
    kind = _check_content_type(pipeline, declared)
    payload = await _read_body(request, state.max_request_bytes, state.body_timeout_s)
    _validate_payload(pipeline, kind, payload, declared)
    return payload


async def _read_pair(state: _ServiceState, pipeline: Pipeline, request: Request) -> list[bytes]:
    if media_type(request.headers.get("content-type")) != PAIR_CONTENT_TYPE:
        raise ServiceProblem(415, "unsupported_media_type", "a match request must be a payload pair",
                             f"send Content-Type {PAIR_CONTENT_TYPE} with the framing in the service documentation")
    inner_type = media_type(request.headers.get(PAYLOAD_TYPE_HEADER))
    if not inner_type:
        raise ServiceProblem(415, "unsupported_media_type", f"a match request needs the {PAYLOAD_TYPE_HEADER} header",
                             f"send the payloads' own Content-Type in {PAYLOAD_TYPE_HEADER}, such as "
                             f"{payload_kind_of(pipeline).content_types(pipeline)[0]}")
    kind = _check_content_type(pipeline, inner_type)
    body = await _read_body(request, state.max_request_bytes, state.body_timeout_s)
    try:
        payloads = split_pair(body)
    except PayloadError as error:
        raise _payload_problem(error) from error
    for payload in payloads:
        _validate_payload(pipeline, kind, payload, inner_type)
    return payloads


# ---------------------------------------------------------------------------------------------
# Running the cloud half.


async def _compute(state: _ServiceState, pipeline: Pipeline, payloads: list[bytes], request: Request) -> _ComputeResult:
    """Run ``pipeline.cloud(payloads)`` on the worker thread and map its errors to responses."""
    if state.pending >= state.max_pending_requests:
        raise ServiceProblem(503, "busy", f"{state.pending} requests are already waiting for the model worker",
                             "retry after a short wait, or send fewer concurrent requests", headers={"Retry-After": "1"})
    label = f"{pipeline.kind}/{pipeline.variant}"
    request_id = _request_id(request)
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
    faces_not_detected = sum(1 for detected in result.face_detected if detected is False)
    state.metrics.record_compute(label, result.compute_ms, result.queue_ms, len(payloads), faces_not_detected)
    return result


def _timed_cloud(pipeline: Pipeline, payloads: list[bytes], submitted_ns: int) -> _ComputeResult:
    started_ns = time.perf_counter_ns()
    embeddings, face_detected = run_cloud(pipeline, payloads)
    embeddings = embeddings.astype(np.float32, copy=False)
    finished_ns = time.perf_counter_ns()
    if embeddings.ndim != 2 or len(embeddings) != len(payloads) or not np.isfinite(embeddings).all():
        raise RunError(f"{pipeline.kind}/{pipeline.variant} returned embeddings of shape {embeddings.shape} "
                       f"(finite: {bool(np.isfinite(embeddings).all())}) for {len(payloads)} payloads")
    return _ComputeResult(embeddings, face_detected, (finished_ns - started_ns) / 1e6, (started_ns - submitted_ns) / 1e6)


# ---------------------------------------------------------------------------------------------
# Running uvicorn.


def is_loopback_host(host: str) -> bool:
    """Return True when ``host`` names only this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_socket(host: str, port: int) -> socket.socket:
    """Open a TCP socket listening on ``host:port`` whose accepted connections send without Nagle's delay."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0, because asyncio sets TCP_NODELAY only on sockets whose proto is TCP.
    # Without it a response's headers and body leave in two segments and the second waits for
    # the client's delayed ACK, adding about 40 ms to every request on a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        # Nothing has been served yet, so this is a mistake in the options (exit 2), not a failed run.
        raise ScenarioError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --port or host") from error
    sock.listen(2048)
    return sock


def serve(
    host: str,
    port: int,
    scenario_path: Path | None,
    token_file: Path | None,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    graceful_shutdown_s: float = 30.0,
    energy_window_s: float = 5.0,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Load the models, then serve until SIGINT or SIGTERM.

    On shutdown uvicorn stops accepting connections and lets requests in flight finish for up
    to ``graceful_shutdown_s`` before it closes the app (stopping the energy thread and the
    model worker). ``announce`` receives one line once the service accepts connections and
    one once it has stopped; without it the lines are logged at INFO.
    """
    import uvicorn

    from vqbench.network.token_file import read_token_file
    from vqbench.scenario import MetersConfig, load_scenario

    _check_max_request_bytes(max_request_bytes)
    _check_body_timeout(body_timeout_s)
    announce = announce or _log_announcement
    token = read_token_file(token_file) if token_file is not None else None
    scenario = load_scenario(scenario_path) if scenario_path is not None else None
    # Bound before the models load, so a busy port or a wrong host fails at once.
    sock = listen_socket(host, port)
    try:
        if token is None and not is_loopback_host(host):
            logger.warning("serving on %s without a token: anyone who can reach it can use it; pass --token-file", host)
        pipelines = build_served_pipelines(scenario)
        logger.info("loading models for %s", ", ".join(f"{p.kind}/{p.variant}" for p in pipelines))
        warm_up_errors = warm_up(pipelines)
        meter_names = scenario.meters.host if scenario is not None else MetersConfig().host
        energy = open_energy_monitor(meter_names, window_s=energy_window_s)
        if not energy.available:
            logger.warning("server-side energy is unavailable: %s", energy.reason)
        app = create_app(pipelines, token, max_request_bytes, energy=energy, warm_up_errors=warm_up_errors,
                         body_timeout_s=body_timeout_s)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, timeout_graceful_shutdown=int(math.ceil(graceful_shutdown_s)),
            timeout_keep_alive=5, limit_concurrency=1024,
            http=header_timeout_protocol(on_timeout=app.state.service.metrics.record_connection_timeout),
        )
        announcing_server(config, app, service_url(host, sock.getsockname()[1]), announce).run(sockets=[sock])
    finally:
        sock.close()


def service_url(host: str, port: int) -> str:
    """Return the base URL of a service listening on ``host:port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announcing_server(config: "uvicorn.Config", app: FastAPI, url: str, announce: Callable[[str], None]) -> "uvicorn.Server":
    """Return a uvicorn server for ``app`` that announces when it accepts connections and when it has stopped.

    The stop line is written during uvicorn's shutdown, before uvicorn re-raises a captured
    SIGINT or SIGTERM, so it appears on either signal.
    """
    import uvicorn

    state: _ServiceState = app.state.service

    class AnnouncingServer(uvicorn.Server):
        # uvicorn 0.55 has no callback for "ready" or "stopped"; Server.serve calls these two steps.
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                announce(f"vqbench serve: listening on {url} with {plural(len(state.pipelines), 'pipeline variant')} "
                         "(GET /v1/pipelines lists them); press Ctrl-C to stop")

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            in_flight = len(self.server_state.tasks)
            if in_flight:
                # A request whose body stalls keeps the shutdown waiting until it times out.
                announce(f"vqbench serve: stopping; waiting up to {self.config.timeout_graceful_shutdown} s for "
                         f"{plural(in_flight, 'request')} in flight")
            try:
                await super().shutdown(sockets=sockets)
            finally:
                requests = sum(state.metrics.snapshot()["requests"].values())
                announce(f"vqbench serve: stopped listening on {url} after {plural(requests, 'request')}")

    return AnnouncingServer(config)


def _log_announcement(line: str) -> None:
    logger.info("%s", line)


def serve_command(
    host: str,
    port: int,
    scenario: Path | None,
    token_file: Path | None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    announce: Callable[[str], None] | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> None:
    """Entry point for ``vqbench serve``: run the service in the foreground."""
    serve(host, port, scenario, token_file, max_request_bytes=max_request_bytes, body_timeout_s=body_timeout_s,
          announce=announce)
