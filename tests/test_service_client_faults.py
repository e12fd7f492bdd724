"""Faults on the client's side that the service must report as such: non-finite edge
embeddings (422, not 500), a client that disconnects mid-body (one warning, no traceback),
bodies over the size limit (413 naming ``--max-request-bytes``, after the token check), bodies
that stall (408 naming ``--body-timeout-s``) and truncated images."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    # starlette 1.x warns at import that its TestClient will move from httpx to httpx2.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from test_service import TOKEN, CodesPipeline, FakeComponents, raw_exchange, running_server
from vqbench.network.http_limits import header_timeout_protocol
from vqbench.network.service import (
    DEFAULT_MAX_REQUEST_BYTES,
    PAIR_CONTENT_TYPE,
    PAYLOAD_KINDS,
    create_app,
    frame_pair,
)
from vqbench.pipelines.cloud import CloudRawPipeline
from vqbench.pipelines.edge_vq import EdgeEmbedPipeline

OCTET = {"content-type": "application/octet-stream"}
FP16_EMBED = "/v1/embed/edge-embed/edge-embed-s-fp16"


def _fp16_payload(values: np.ndarray) -> bytes:
    """An edge-embed fp16 payload: format byte 1, then 128 little-endian float16 values."""
    return bytes([1]) + np.asarray(values, dtype="<f2").tobytes()


def _int8_payload(values: np.ndarray) -> bytes:
    """An edge-embed int8 payload: format byte 2, then 128 int8 values."""
    return bytes([2]) + np.asarray(values, dtype=np.int8).tobytes()


def _with_one(value: float) -> np.ndarray:
    """127 ones and one ``value``, so that a single bad component must be found."""
    return np.r_[np.ones(127), value]


@pytest.fixture()
def embed_client() -> Iterator[TestClient]:
    components = FakeComponents()
    pipelines = [EdgeEmbedPipeline(components, "edge-embed-s", dtype=dtype) for dtype in ("fp16", "int8")]
    with TestClient(create_app(pipelines, None)) as test_client:
        yield test_client


# ---------------------------------------------------------------------------------------------
# Non-finite edge embeddings.


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "minus-inf"])
def test_non_finite_embedding_is_422_on_embed(embed_client: TestClient, value: float, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        response = embed_client.post(FP16_EMBED, content=_fp16_payload(_with_one(value)), headers=OCTET)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "payload_invalid"
    assert "embedding contains NaN or infinite values" in body["detail"]
    assert "1 of 128 components" in body["detail"]
    assert body["fix"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_embedding_is_422_on_match(embed_client: TestClient, value: float) -> None:
    headers = {"content-type": PAIR_CONTENT_TYPE, "x-payload-type": "application/octet-stream"}
    good = _fp16_payload(np.ones(128))
    bad = _fp16_payload(_with_one(value))
    for pair in (frame_pair(bad, good), frame_pair(good, bad)):
        response = embed_client.post("/v1/match/edge-embed/edge-embed-s-fp16", content=pair, headers=headers)
        assert response.status_code == 422, response.text
        assert "embedding contains NaN or infinite values" in response.json()["detail"]


def test_non_finite_embedding_not_enrolled(embed_client: TestClient) -> None:
    query = "pipeline=edge-embed&variant=edge-embed-s-fp16"
    response = embed_client.post(f"/v1/gallery/staff/enrol?{query}&label=bad", content=_fp16_payload(_with_one(np.nan)),
                                 headers=OCTET)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "payload_invalid"
    assert "embedding contains NaN or infinite values" in response.json()["detail"]
    assert embed_client.get("/v1/gallery/staff").status_code == 404

    identified = embed_client.post(f"/v1/gallery/staff/identify?{query}", content=_fp16_payload(_with_one(np.inf)),
                                   headers=OCTET)
    assert identified.status_code == 422, identified.text


def test_finite_embeddings_still_accepted(embed_client: TestClient) -> None:
    # The largest fp16 value, zeros and int8 extremes are finite and must pass.
    for path, payload in [
        (FP16_EMBED, _fp16_payload(np.full(128, 65504.0))),
        (FP16_EMBED, _fp16_payload(np.zeros(128))),
        ("/v1/embed/edge-embed/edge-embed-s-int8", _int8_payload(np.r_[np.full(64, -127), np.full(64, 127)])),
    ]:
        response = embed_client.post(path, content=payload, headers=OCTET)
        assert response.status_code == 200, response.text
        assert len(response.json()["embedding"]) == 128


def test_embedding_kind_listed(embed_client: TestClient) -> None:
    entries = embed_client.get("/v1/pipelines").json()["pipelines"]
    assert {entry["payload_kind"] for entry in entries} == {"embedding"}
    assert all(entry["content_types"] == ["application/octet-stream"] for entry in entries)


# ---------------------------------------------------------------------------------------------
# A client that disconnects before its body has arrived.


def _asgi_exchange(app, path: str, headers: list[tuple[bytes, bytes]], messages: list[dict]) -> list[dict]:
    """Send ``messages`` to the ASGI app as one POST request and return what it sent back."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    pending = list(messages)
    sent: list[dict] = []

    async def receive() -> dict:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_disconnect_mid_body_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app([CodesPipeline()], None)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"131"), (b"x-request-id", b"edge-7")]
    messages = [{"type": "http.request", "body": b"TC\x01" + b"\x00" * 47, "more_body": True}, {"type": "http.disconnect"}]
    with caplog.at_level(logging.INFO):
        sent = _asgi_exchange(app, "/v1/embed/test-codes/v1", headers, messages)
    assert sent == []
    warnings_logged = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    message = warnings_logged[0].getMessage()
    assert "edge-7" in message
    assert "disconnected" in message
    assert "50 of 131 bytes" in message
    assert warnings_logged[0].exc_info is None
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    statuses = app.state.service.metrics.snapshot()["statuses"]
    assert statuses["/v1/embed/{kind}/{variant}"] == {"499": 1}


def test_disconnect_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app([CodesPipeline()], None)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"131")]

    def disconnect(request_id: str) -> None:
        messages = [{"type": "http.request", "body": b"TC\x01", "more_body": True}, {"type": "http.disconnect"}]
        _asgi_exchange(app, "/v1/embed/test-codes/v1", [*headers, (b"x-request-id", request_id.encode())], messages)

    now_s = [1000.0]
    app.state.service.disconnect_log.clock_s = lambda: now_s[0]
    with caplog.at_level(logging.DEBUG, logger="vqbench.network.service"):
        for number in range(3):
            disconnect(f"burst-{number}")
            now_s[0] += 1.0
        # The next disconnect comes after the quiet interval of 60 s.
        now_s[0] = 1061.0
        disconnect("later-1")
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warned) == 2
    assert "burst-0" in warned[0]
    assert "later-1" in warned[1]
    assert "2 other disconnects in the last 61 s went to the DEBUG log" in warned[1]
    debugged = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert any("burst-1" in line for line in debugged) and any("burst-2" in line for line in debugged)
    statuses = app.state.service.metrics.snapshot()["statuses"]
    assert statuses["/v1/embed/{kind}/{variant}"] == {"499": 4}


def test_disconnect_over_socket_has_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # A flaky edge link: a declared Content-Length, part of the body, then the client closes.
    with running_server(create_app([CodesPipeline()], None)) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        with caplog.at_level(logging.INFO):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                connection.sendall(b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Content-Type: application/octet-stream\r\nContent-Length: 131\r\n"
                                   b"X-Request-ID: flaky-link-1\r\n\r\n" + b"TC\x01" + b"\x00" * 47)
                connection.shutdown(socket.SHUT_WR)
                assert connection.recv(65536) == b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any("flaky-link-1" in r.getMessage() for r in caplog.records):
                time.sleep(0.02)
    mentions = [record for record in caplog.records if "flaky-link-1" in record.getMessage()]
    assert len(mentions) == 1
    assert mentions[0].levelno == logging.WARNING
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not [record for record in caplog.records if "Exception in ASGI application" in record.getMessage()]


# ---------------------------------------------------------------------------------------------
# Body size limit.


def test_413_names_serve_option_and_limit() -> None:
    with TestClient(create_app([CodesPipeline()], None, max_request_bytes=1_000)) as small_client:
        response = small_client.post("/v1/embed/test-codes/v1", content=b"\x00" * 2_000, headers=OCTET)
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "payload_too_large"
    assert "2000 bytes" in body["detail"]
    assert "1000 bytes" in body["detail"]
    assert "vqbench serve --max-request-bytes" in body["fix"]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_token_checked_before_body_size(chunked: bool) -> None:
    # A client without the token learns nothing about the service's limits.
    body = b"\x00" * 2_000
    content = iter([body]) if chunked else body
    with TestClient(create_app([CodesPipeline()], TOKEN, max_request_bytes=1_000)) as protected:
        response = protected.post("/v1/embed/test-codes/v1", content=content, headers=OCTET)
        assert response.status_code == 401, response.text
        authorised = protected.post("/v1/embed/test-codes/v1", content=body,
                                    headers={**OCTET, "authorization": f"Bearer {TOKEN}"})
        assert authorised.status_code == 413, authorised.text
        assert authorised.headers["connection"] == "close"


def test_match_without_payload_type_names_header() -> None:
    with TestClient(create_app([CodesPipeline()], None)) as plain_client:
        response = plain_client.post("/v1/match/test-codes/v1", content=b"\x00" * 20,
                                     headers={"content-type": PAIR_CONTENT_TYPE})
    assert response.status_code == 415, response.text
    assert "needs the x-payload-type header" in response.json()["detail"]
    assert "application/octet-stream" in response.json()["fix"]


def test_unknown_pipeline_checked_before_body_size() -> None:
    with TestClient(create_app([CodesPipeline()], None, max_request_bytes=1_000)) as small_client:
        response = small_client.post("/v1/embed/test-codes/v9", content=b"\x00" * 2_000, headers=OCTET)
    assert response.status_code == 404, response.text


def test_413_counted_under_its_route() -> None:
    with TestClient(create_app([CodesPipeline()], None, max_request_bytes=1_000)) as small_client:
        small_client.post("/v1/embed/test-codes/v1", content=b"\x00" * 2_000, headers=OCTET)
        small_client.post("/v1/embed/test-codes/v1", content=iter([b"\x00" * 2_000]), headers=OCTET)
        statuses = small_client.get("/metrics").json()["statuses"]
    assert statuses["/v1/embed/{kind}/{variant}"] == {"413": 2}
    assert "unmatched" not in statuses


def test_default_body_limit_fits_pixel_limit() -> None:
    # Estimate: a camera JPEG takes about 0.2 to 0.5 bytes per pixel. A JPEG at cloud-raw's
    # pixel limit and at the top of that range must still fit under the default body limit.
    max_pixels = PAYLOAD_KINDS["cloud-raw"].max_image_pixels
    assert max_pixels is not None
    assert DEFAULT_MAX_REQUEST_BYTES >= 0.5 * max_pixels


def test_default_limit_accepts_3mb_camera_jpeg() -> None:
    # A 2000 x 2000 JPEG of about 3 MB is well under the pixel limit, so the body limit must admit it too.
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    jpeg = buffer.getvalue()
    assert len(jpeg) > 2_000_000
    with TestClient(create_app([CloudRawPipeline(FakeComponents())], None)) as default_client:
        pipelines = default_client.get("/v1/pipelines").json()
        response = default_client.post("/v1/embed/cloud-raw/original", content=jpeg, headers={"content-type": "image/jpeg"})
    assert pipelines["max_request_bytes"] == DEFAULT_MAX_REQUEST_BYTES
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------
# Servers that are not `vqbench serve`, and URLs that address nothing


def _impostor_app(pipelines_document: object):
    """Return a FastAPI app whose /health matches the service's and whose /v1/pipelines returns ``pipelines_document``."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    app.get("/v1/pipelines")(lambda: pipelines_document)
    page = "<html>\n<head><title>Not found</title></head>\n<body>\n" + "<p>nothing here</p>\n" * 20 + "</body></html>"
    app.get("/missing")(lambda: HTMLResponse(page, status_code=404))
    return app


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"pipelines": "oops"}, "no list under 'pipelines'"),
        ({"pipelines": [{"pipeline": "cloud-raw", "variant": "original"}]}, "entry 0 has no list of 'content_types'"),
        ({"pipelines": [["cloud-raw"]]}, "entry 0 is not an object"),
    ],
)
def test_foreign_pipelines_document_rejected(document, problem):
    from vqbench.network.client import HttpCloud, HttpTransportError

    with running_server(_impostor_app(document)) as (url, _server), HttpCloud(url, url_option="--url") as cloud:
        with pytest.raises(HttpTransportError, match="does not write") as caught:
            cloud.pipelines()
    assert problem in str(caught.value)
    assert "check that --url points at `vqbench serve`" in str(caught.value)
    assert caught.value.kind == "protocol"


def test_html_error_page_shortened_to_one_line():
    from vqbench.network.client import HttpCloud, HttpTransportError

    with running_server(_impostor_app({})) as (url, _server), HttpCloud(url) as cloud:
        with pytest.raises(HttpTransportError) as caught:
            cloud._request("GET", "/missing", b"", {}, None)
    message = str(caught.value)
    assert "\n" not in message
    assert "HTTP 404: <html> <head><title>Not found</title></head>" in message
    assert "..." in message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://localhost:99999", "Port out of range"), ("http://localhost:abc", "Port could not be cast"),
     ("http://[::1", "Invalid IPv6 URL"), ("http://", "it has no host")],
)
def test_unusable_url_is_scenario_error(url, problem):
    from vqbench.errors import ScenarioError
    from vqbench.network.client import HttpCloud

    with pytest.raises(ScenarioError, match="--url .* is invalid") as caught:
        HttpCloud(url, url_option="--url")
    assert problem in str(caught.value)
    assert caught.value.exit_code == 2


# ---------------------------------------------------------------------------------------------
# A body that stalls.


def _stalling_exchange(app, headers: list[tuple[bytes, bytes]], first_part: bytes) -> list[dict]:
    """POST ``first_part`` as the start of a body whose rest never arrives, and return what the app sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/embed/test-codes/v1", "raw_path": b"/v1/embed/test-codes/v1", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    parts = [{"type": "http.request", "body": first_part, "more_body": True}]
    sent: list[dict] = []

    async def receive() -> dict:
        if parts:
            return parts.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    return sent


def test_stalled_body_gets_408() -> None:
    app = create_app([CodesPipeline()], None, body_timeout_s=0.2)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"131")]
    started_s = time.monotonic()
    sent = _stalling_exchange(app, headers, b"TC\x01" + b"\x00" * 47)
    assert time.monotonic() - started_s < 5
    start = next(message for message in sent if message["type"] == "http.response.start")
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    problem = json.loads(body)
    assert problem["error"] == "body_timeout"
    assert "for 0.2 s (50 of 131 bytes received)" in problem["detail"]
    assert "vqbench serve --body-timeout-s" in problem["fix"]
    statuses = app.state.service.metrics.snapshot()["statuses"]
    assert statuses["/v1/embed/{kind}/{variant}"] == {"408": 1}


def test_stalled_body_over_socket_is_closed() -> None:
    with running_server(create_app([CodesPipeline()], None, body_timeout_s=0.3)) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        # The client keeps its side open, so the service must respond and close the connection itself.
        head, body = raw_exchange(port, b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        b"Content-Type: application/octet-stream\r\nContent-Length: 131\r\n\r\n"
                                        + b"TC\x01" + b"\x00" * 47)
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"] == "body_timeout"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("path, headers, status", [
    ("/v1/embed/test-codes/v1", OCTET, 401),
    ("/v1/embed/test-codes/v9", {**OCTET, "authorization": f"Bearer {TOKEN}"}, 404),
    ("/v1/embed/test-codes/v1", {"content-type": "text/plain", "authorization": f"Bearer {TOKEN}"}, 415),
], ids=["token", "pipeline", "content-type"])
def test_early_rejection_closes_connection(path: str, headers: dict[str, str], status: int) -> None:
    with TestClient(create_app([CodesPipeline()], TOKEN)) as protected:
        rejected = protected.post(path, content=b"\x00" * 200, headers=headers)
        bodiless = protected.get("/v1/pipelines")
    assert rejected.status_code == status, rejected.text
    assert rejected.headers["connection"] == "close"
    # A request without a body leaves nothing unread, so its connection stays open.
    assert bodiless.status_code == 401
    assert "connection" not in bodiless.headers


def test_early_rejection_closes_socket() -> None:
    with running_server(create_app([CodesPipeline()], TOKEN)) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        # 2 s is well below uvicorn's 5 s keep-alive timeout, which closed the connection before.
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.sendall(b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: application/octet-stream\r\nContent-Length: 131\r\n\r\n"
                               + b"TC\x01" + b"\x00" * 128)
            response = b""
            while chunk := connection.recv(65536):
                response += chunk
    assert response.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in response.lower()


def test_rejection_warnings_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app([CodesPipeline()], TOKEN, max_request_bytes=1_000)
    now_s = [500.0]
    for log in app.state.service.rejection_logs.values():
        log.clock_s = lambda: now_s[0]
    authorised = {**OCTET, "authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as protected, caplog.at_level(logging.DEBUG, logger="vqbench.network.service"):
        for number in range(3):
            protected.post("/v1/embed/test-codes/v1", content=b"\x00" * 20,
                           headers={**OCTET, "x-request-id": f"no-token-{number}"})
        protected.post("/v1/embed/test-codes/v1", content=b"\x00" * 2_000, headers={**authorised, "x-request-id": "big-1"})
        now_s[0] += 61.0
        protected.post("/v1/embed/test-codes/v1", content=b"\x00" * 20, headers={**OCTET, "x-request-id": "no-token-3"})
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warned) == 3, warned
    assert "request no-token-0: POST /v1/embed/test-codes/v1 rejected with 401 unauthorized" in warned[0]
    # A flood of one rejection does not hide another kind.
    assert "request big-1: POST /v1/embed/test-codes/v1 rejected with 413 payload_too_large" in warned[1]
    assert "2 other 401 rejections in the last 61 s went to the DEBUG log" in warned[2]
    assert TOKEN not in " ".join(record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------------------------
# A truncated image sent to cloud-raw.


def test_truncated_jpeg_to_cloud_raw_names_payload_fix() -> None:
    rng = np.random.default_rng(5)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=80)
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    with TestClient(create_app([CloudRawPipeline(FakeComponents())], None)) as raw_client:
        response = raw_client.post("/v1/embed/cloud-raw/original", content=truncated, headers={"content-type": "image/jpeg"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "cloud-raw payload" in detail
    assert "send a complete image file" in detail
    assert "replace or remove the file" not in detail


# ---------------------------------------------------------------------------------------------
# Request headers that stall (uvicorn's protocol with a header deadline).


def _read_until_closed(connection: socket.socket) -> bytes:
    response = b""
    while chunk := connection.recv(65536):
        response += chunk
    return response


def test_stalled_headers_get_408_and_close(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app([CodesPipeline()], None)
    metrics = app.state.service.metrics
    protocol = header_timeout_protocol(0.3, on_timeout=metrics.record_connection_timeout)
    with running_server(app, http=protocol) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        with caplog.at_level(logging.WARNING, logger="vqbench.network.http_limits"):
            # The socket timeout of 3 s fails the test if the service keeps waiting for the headers.
            with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
                stalled = b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
                connection.sendall(stalled)
                response = _read_until_closed(connection)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head.lower()
        problem = json.loads(body)
        assert problem["error"] == "header_timeout"
        assert f"within 0.3 s of the connection's opening ({len(stalled)} bytes received)" in problem["detail"]
        assert any("connection closed with 408" in record.getMessage() for record in caplog.records)
        assert metrics.snapshot()["connections_timed_out"] == {"partial_headers": 1, "silent": 0}
        # Other clients are served as before.
        with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _read_until_closed(connection).startswith(b"HTTP/1.1 200 ")


def _read_response(connection: socket.socket) -> bytes:
    """Read one response with a Content-Length from a kept-alive connection."""
    response = b""
    while b"\r\n\r\n" not in response:
        response += connection.recv(65536)
    head, _, body = response.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")))
    while len(body) < length:
        body += connection.recv(65536)
    return head


@contextmanager
def _kept_alive_connection(header_timeout_s: float) -> Iterator[socket.socket]:
    """Yield a connection to a service with a header deadline, after one complete request and response on it."""
    protocol = header_timeout_protocol(header_timeout_s)
    with running_server(create_app([CodesPipeline()], None), http=protocol) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _read_response(connection).startswith(b"HTTP/1.1 200 ")
            yield connection


def test_header_deadline_spares_bodies() -> None:
    # The deadline covers headers only: a kept-alive connection between requests, and a body that
    # keeps arriving, are left to the keep-alive and body timeouts.
    with _kept_alive_connection(0.3) as connection:
        time.sleep(0.6)
        connection.sendall(b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\nTC")
        time.sleep(0.6)
        connection.sendall(b"\x01\x00")
        # The four bytes reach the app, which rejects them as a payload.
        assert _read_response(connection).startswith(b"HTTP/1.1 422 ")


def test_silent_connection_closed_at_deadline() -> None:
    # A connection that sends nothing would otherwise keep a limit_concurrency slot for good.
    kinds: list[str] = []
    with running_server(create_app([CodesPipeline()], None), http=header_timeout_protocol(0.3, on_timeout=kinds.append)) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
            assert _read_until_closed(connection) == b""
    assert kinds == ["silent"]


def test_metrics_start_with_no_timed_out_connections() -> None:
    with TestClient(create_app([CodesPipeline()], None)) as client:
        assert client.get("/metrics").json()["connections_timed_out"] == {"partial_headers": 0, "silent": 0}


def test_pipelined_partial_headers_get_408() -> None:
    # The second request's first bytes arrive with the first request, then its headers stall.
    # uvicorn's keep-alive timer (set here to 2 s) would otherwise close the connection silently.
    protocol = header_timeout_protocol(0.3)
    with running_server(create_app([CodesPipeline()], None), http=protocol, timeout_keep_alive=2) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nHo")
            response = _read_until_closed(connection)
    assert response.startswith(b"HTTP/1.1 200 ")
    second = response[response.index(b"HTTP/1.1 408 "):]
    assert b'"error": "header_timeout"' in second
    assert b"within 0.3 s of the previous response" in second


def test_later_request_deadline_from_first_byte() -> None:
    with _kept_alive_connection(0.3) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHo")
        response = _read_until_closed(connection)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert b"within 0.3 s of its first byte" in response


def test_logged_path_escapes_newline(caplog: pytest.LogCaptureFixture) -> None:
    with running_server(create_app([CodesPipeline()], TOKEN)) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        with caplog.at_level(logging.WARNING, logger="vqbench.network.service"):
            with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
                connection.sendall(b"POST /v1/embed/test-codes/v1%0AWARNING%20forged HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                assert _read_until_closed(connection).startswith(b"HTTP/1.1 401 ")
    (warning,) = [record.getMessage() for record in caplog.records if "rejected with 401" in record.getMessage()]
    assert "\n" not in warning
    assert "POST /v1/embed/test-codes/v1\\nWARNING forged rejected with 401" in warning
