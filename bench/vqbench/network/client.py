"""The edge's HTTP client for ``vqbench serve``, counting the bytes each request puts on the wire.

How bytes are counted: the client talks HTTP/1.1 through ``httpcore`` (the engine under
``httpx``) with a network backend whose streams count every byte passed to ``socket.send``
and returned by ``socket.recv``. That is the request line, headers and body exactly as sent,
and the status line, headers and body exactly as received, including connection setup traffic
at the HTTP layer. A connection carries one request at a time, so the bytes a connection moved
between the end of its previous response and the end of this one belong to this request.

The counts are at the application layer: TCP and IP headers, ACKs and retransmissions are not
included. NOTE: over ``https://`` the counts are of the plaintext HTTP bytes, without the TLS
handshake and record overhead.

``transfer_ms`` is the client's whole request time minus the ``compute_ms`` and ``queue_ms``
that the service reports, so it contains the network time, HTTP parsing on both sides and the
service's validation of the payload. Both ends disable Nagle's algorithm (``TCP_NODELAY``):
with it, the second of two writes waits for the peer's delayed ACK, which adds about 40 ms per
request on a kept-alive connection that is not network time.

``measured_transfer_columns`` summarises these figures over one list of requests. A link
model (``vqbench.network.links``) gives another, modeled, transfer time for the same bytes,
so a results column must state which of the two it contains.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpcore
import numpy as np

from vqbench import __version__
from vqbench.errors import PayloadError, RunError, ScenarioError
from vqbench.metrics.latency import percentile_ms
from vqbench.network.token_file import read_token_file
from vqbench.scenario import url_problem

if TYPE_CHECKING:
    from vqbench.scenario import TransportConfig

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


class HttpTransportError(RunError):
    """A request to the cloud service failed: no connection, a timeout, or an error status.

    ``kind`` is a short category for counting (``connect``, ``timeout``, ``protocol``,
    ``http_401``, ...) and ``status`` the HTTP status of the response, when one arrived.
    """

    def __init__(self, message: str, kind: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url
        self.status = status


class HttpPayloadRejected(HttpTransportError, PayloadError):
    """The service rejected the payload itself (413, 415 or 422)."""


@dataclass(frozen=True)
class TransferStats:
    """Bytes on the wire and times of one request.

    ``wire_bytes_up`` and ``wire_bytes_down`` count HTTP/1.1 bytes as sent and received,
    headers included. ``transfer_ms`` is ``total_ms - compute_ms - queue_ms``.
    ``face_detected`` is the service's report: None where the edge aligned the face, or where
    the service predates the field.
    """

    wire_bytes_up: int
    wire_bytes_down: int
    total_ms: float
    compute_ms: float
    queue_ms: float
    transfer_ms: float
    status: int
    request_id: str
    face_detected: bool | None = None


def measured_transfer_columns(
    transfer_ms: list[float], wire_bytes_up: list[int], wire_bytes_down: list[int], payload_bytes: list[int]
) -> dict[str, float | None]:
    """Summarise the measured HTTP transfers of one variant, each list holding one value per request.

    Every figure averages the same requests, so ``wire_bytes_up_mean`` minus
    ``wire_payload_bytes_up_mean`` equals ``wire_overhead_bytes_up_mean``. The transfer
    percentiles are measured, never modeled, hence the ``_measured`` suffix. When no request
    went over HTTP (the three measured lists are empty), every value is None whatever
    ``payload_bytes`` holds. Otherwise the four lists must have one length, or ValueError is raised.
    """
    if not transfer_ms and not wire_bytes_up and not wire_bytes_down:
        names = ("transfer_latency_ms_p50_measured", "transfer_latency_ms_p95_measured", "wire_bytes_up_mean",
                 "wire_bytes_down_mean", "wire_payload_bytes_up_mean", "wire_overhead_bytes_up_mean")
        return dict.fromkeys(names, None)
    lengths = {len(transfer_ms), len(wire_bytes_up), len(wire_bytes_down), len(payload_bytes)}
    if len(lengths) != 1:
        raise ValueError(
            f"measured transfer lists differ in length (transfer_ms {len(transfer_ms)}, wire_bytes_up "
            f"{len(wire_bytes_up)}, wire_bytes_down {len(wire_bytes_down)}, payload_bytes {len(payload_bytes)}); "
            "pass one value per request to each"
        )
    up = np.asarray(wire_bytes_up, dtype=np.float64)
    payload = np.asarray(payload_bytes, dtype=np.float64)
    return {
        "transfer_latency_ms_p50_measured": percentile_ms(transfer_ms, 50),
        "transfer_latency_ms_p95_measured": percentile_ms(transfer_ms, 95),
        "wire_bytes_up_mean": float(up.mean()),
        "wire_bytes_down_mean": float(np.mean(wire_bytes_down)),
        "wire_payload_bytes_up_mean": float(payload.mean()),
        "wire_overhead_bytes_up_mean": float((up - payload).mean()),
    }


@dataclass(frozen=True)
class _Exchange:
    status: int
    headers: dict[str, str]
    body: bytes
    wire_bytes_up: int
    wire_bytes_down: int
    total_ms: float


class _CountingStream(httpcore.NetworkStream):
    """A network stream that counts the bytes written to and read from it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self.bytes_sent = 0
        self.bytes_received = 0
        # Bytes already attributed to earlier requests on this connection.
        self.attributed_sent = 0
        self.attributed_received = 0

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._stream.read(max_bytes, timeout)
        self.bytes_received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)
        self.bytes_sent += len(buffer)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        return _CountingStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)

    def take_unattributed(self) -> tuple[int, int]:
        """Return the bytes sent and received since the last call, and mark them attributed."""
        sent = self.bytes_sent - self.attributed_sent
        received = self.bytes_received - self.attributed_received
        self.attributed_sent = self.bytes_sent
        self.attributed_received = self.bytes_received
        return sent, received


class _CountingBackend(httpcore.SyncBackend):
    """The standard socket backend, with every stream wrapped in a byte counter."""

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        # Headers and body leave in separate writes. Without TCP_NODELAY, Nagle's algorithm delays
        # the body until the server's delayed ACK (about 40 ms on Linux), which is not network time.
        options = list(socket_options or []) + [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        stream = super().connect_tcp(host, port, timeout, local_address, options)
        return _CountingStream(stream)


def sniff_image_type(payload: bytes) -> str | None:
    """Return the media type of a JPEG, PNG or WebP file from its signature, or None."""
    for signature, media_type in _IMAGE_SIGNATURES:
        if payload.startswith(signature):
            return media_type
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "image/webp"
    return None


class HttpCloud:
    """Client of one ``vqbench serve`` instance: posts payloads and returns embeddings.

    Thread-safe: each request takes its own connection from a keep-alive pool of up to
    ``max_connections``. ``token_option`` names the command-line option or scenario setting
    that supplies the token (``--token-file``, ``transport.token_file``), so that the error for
    a 401 response names the one to set. ``url_option`` likewise names the option or setting
    that gave the URL (``--url``, ``transport.url``). A URL that cannot be parsed raises
    ScenarioError.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        max_connections: int = 4,
        token_option: str | None = None,
        url_option: str | None = None,
    ) -> None:
        self.url_option = url_option or "the service URL"
        problem = url_problem(url)
        if problem:
            raise ScenarioError(f"{self.url_option} {url!r} is invalid ({problem}); use http://HOST:PORT")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self.token_option = token_option
        self._pool = httpcore.ConnectionPool(
            max_connections=max_connections, network_backend=_CountingBackend(), keepalive_expiry=4.0
        )
        self._content_types: dict[tuple[str, str], list[str]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: "TransportConfig", base_dir: Path) -> "HttpCloud":
        """Build the client for a scenario's ``transport`` section (``mode: http``)."""
        from vqbench.scenario import expand_path

        if not config.url:
            raise ScenarioError("transport.mode is http but transport.url is missing; set it to the service's base URL")
        token = read_token_file(expand_path(config.token_file, base_dir)) if config.token_file else None
        return cls(config.url, token=token, timeout_s=config.timeout_s, token_option="transport.token_file",
                   url_option="transport.url")

    def __enter__(self) -> "HttpCloud":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    # -- public calls ------------------------------------------------------------------------

    def embed(
        self,
        pipeline: str,
        variant: str,
        payload: bytes,
        content_type: str | None = None,
        request_id: str | None = None,
    ) -> tuple[np.ndarray, TransferStats]:
        """Post one payload to ``/v1/embed`` and return its embedding and transfer figures.

        ``content_type`` defaults to the one the service lists for the variant (for images,
        the listed type that matches the payload's signature).
        """
        content_type = content_type or self.content_type_for(pipeline, variant, payload)
        path = f"/v1/embed/{quote(pipeline, safe='')}/{quote(variant, safe='')}"
        exchange = self._request("POST", path, payload, {"content-type": content_type}, request_id)
        body = self._json(exchange, path)
        embedding = np.asarray(body["embedding"], dtype=np.float32)
        compute_ms = float(body.get("compute_ms", 0.0))
        queue_ms = float(body.get("queue_ms", 0.0))
        face_detected = body.get("face_detected")
        stats = TransferStats(
            wire_bytes_up=exchange.wire_bytes_up,
            wire_bytes_down=exchange.wire_bytes_down,
            total_ms=exchange.total_ms,
            compute_ms=compute_ms,
            queue_ms=queue_ms,
            transfer_ms=exchange.total_ms - compute_ms - queue_ms,
            status=exchange.status,
            request_id=exchange.headers.get(REQUEST_ID_HEADER, ""),
            face_detected=face_detected if isinstance(face_detected, bool) else None,
        )
        return embedding, stats

    def health(self) -> dict[str, Any]:
        """Return the service's ``/health`` document."""
        return self._json(self._request("GET", "/health", b"", {}, None), "/health")

    def pipelines(self) -> list[dict[str, Any]]:
        """Return the variants the service serves, with their accepted content types.

        Raises HttpTransportError (kind ``protocol``) when the document does not have the shape
        that `vqbench serve` gives it, which means the URL points at another server.
        """
        path = "/v1/pipelines"
        document = self._json(self._request("GET", path, b"", {}, None), path)
        problem = _pipelines_problem(document)
        if problem:
            raise HttpTransportError(
                f"{self.url}{path} returned a document that `vqbench serve` does not write ({problem}); check that "
                f"{self.url_option} points at `vqbench serve` of this vqbench version",
                kind="protocol", url=self.url + path,
            )
        return list(document["pipelines"])

    def metrics(self) -> dict[str, Any]:
        """Return the service's ``/metrics`` document."""
        return self._json(self._request("GET", "/metrics", b"", {}, None), "/metrics")

    def content_type_for(self, pipeline: str, variant: str, payload: bytes) -> str:
        """Return the content type to send ``payload`` as, from the service's pipeline list."""
        with self._lock:
            if self._content_types is None:
                self._content_types = {(p["pipeline"], p["variant"]): p["content_types"] for p in self.pipelines()}
            accepted = self._content_types.get((pipeline, variant))
        if not accepted:
            served = ", ".join(f"{k}/{v}" for k, v in sorted(self._content_types or {})) or "none"
            raise HttpTransportError(
                f"the service at {self.url} does not serve {pipeline}/{variant} (it serves: {served}); "
                "start it with a scenario that lists this pipeline",
                kind="http_404", url=self.url, status=404,
            )
        sniffed = sniff_image_type(payload)
        return sniffed if sniffed in accepted else accepted[0]

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes, headers: dict[str, str], request_id: str | None) -> _Exchange:
        url = self.url + path
        all_headers = {"user-agent": f"vqbench/{__version__}", REQUEST_ID_HEADER: request_id or uuid.uuid4().hex, **headers}
        if method != "GET":
            # An explicit length keeps the body in one write instead of chunked framing.
            all_headers["content-length"] = str(len(body))
        if self._token is not None:
            all_headers["authorization"] = f"Bearer {self._token}"
        timeout = {"connect": self.timeout_s, "read": self.timeout_s, "write": self.timeout_s, "pool": self.timeout_s}
        started_ns = time.perf_counter_ns()
        try:
            with self._pool.stream(method, url, headers=list(all_headers.items()), content=body,
                                   extensions={"timeout": timeout}) as response:
                content = response.read()
                # Count before leaving the block: closing the response hands the connection back.
                stream = response.extensions.get("network_stream")
                sent, received = stream.take_unattributed() if isinstance(stream, _CountingStream) else (0, 0)
        except httpcore.TimeoutException as error:
            raise HttpTransportError(
                f"{method} {url} timed out after {self.timeout_s:g} s ({type(error).__name__}); "
                "raise transport.timeout_s or reduce the load on the service",
                kind="timeout", url=url,
            ) from error
        except httpcore.ConnectError as error:
            raise HttpTransportError(
                f"cannot connect to {url}: {error}; start the service with `vqbench serve` or fix {self.url_option}",
                kind="connect", url=url,
            ) from error
        except (httpcore.NetworkError, httpcore.ProtocolError) as error:
            raise HttpTransportError(
                f"{method} {url} failed: {type(error).__name__}: {error}; check that the URL points at `vqbench serve`",
                kind="protocol", url=url,
            ) from error
        total_ms = (time.perf_counter_ns() - started_ns) / 1e6
        response_headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in response.headers}
        exchange = _Exchange(response.status, response_headers, content, sent, received, total_ms)
        if response.status >= 400:
            raise _status_error(exchange, method, url, self._unauthorized_fix())
        return exchange

    def _unauthorized_fix(self) -> str:
        """Return the fix for a 401 response, naming the option or setting that supplies the token."""
        problem = "no bearer token was sent" if self._token is None else "the service rejected the bearer token"
        if self.token_option is None:
            return f"{problem}; pass the token from the file that `vqbench serve --token-file` reads"
        return f"{problem}; point {self.token_option} at the token file that `vqbench serve --token-file` reads"

    def _json(self, exchange: _Exchange, path: str) -> dict[str, Any]:
        try:
            return json.loads(exchange.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HttpTransportError(
                f"{self.url}{path} returned a body that is not JSON ({error}); check that the URL points at `vqbench serve`",
                kind="protocol", url=self.url + path, status=exchange.status,
            ) from error


def _pipelines_problem(document: Any) -> str:
    """Return what is wrong with a /v1/pipelines document, or "" when it has the service's shape."""
    entries = document.get("pipelines") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return "no list under 'pipelines'"
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return f"entry {position} is not an object"
        for key in ("pipeline", "variant"):
            if not isinstance(entry.get(key), str):
                return f"entry {position} has no text '{key}'"
        types = entry.get("content_types")
        if not isinstance(types, list) or not types or not all(isinstance(kind, str) for kind in types):
            return f"entry {position} has no list of 'content_types'"
    return ""


def _one_line(body: bytes, limit: int = 160) -> str:
    """Return a response body as one line of at most ``limit`` characters, for an error message."""
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_error(exchange: _Exchange, method: str, url: str, unauthorized_fix: str) -> HttpTransportError:
    """Turn an error response into an exception that carries the service's detail and fix.

    For 401 the service's fix cannot know how this client was given its token, so
    ``unauthorized_fix`` replaces it.
    """
    try:
        problem = json.loads(exchange.body)
        detail, fix = problem.get("detail", ""), problem.get("fix", "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        detail, fix = _one_line(exchange.body), "check that the URL points at `vqbench serve`"
    status = exchange.status
    if status == 401:
        fix = unauthorized_fix
    message = f"{method} {url} returned HTTP {status}: {detail}" + (f"; {fix}" if fix else "")
    error_class = HttpPayloadRejected if status in (413, 415, 422) else HttpTransportError
    return error_class(message, kind=f"http_{status}", url=url, status=status)
