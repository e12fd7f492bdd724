"""The cloud service, its HTTP client and the load test.

Most tests run the app in process (starlette's TestClient) with a fake aligner and teacher,
built once per module. A few run uvicorn on a loopback port: to check wire-byte counting
against a TCP proxy that counts what really passes, graceful shutdown, client errors and the
load test. One test runs the real dlib models.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import warnings

import numpy as np
import pytest
import uvicorn
from PIL import Image

with warnings.catch_warnings():
    # starlette 1.x warns at import that its TestClient will move from httpx to httpx2.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from vqbench.data.align import FILE_IMAGE_FIX, AlignedChip, decode_image
from vqbench.errors import PayloadError, RunError, ScenarioError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.network.client import (
    HttpCloud,
    HttpPayloadRejected,
    HttpTransportError,
    measured_transfer_columns,
    sniff_image_type,
)
from vqbench.network.loadtest import (
    LoadTestReport,
    build_payloads,
    check_report_path,
    loadtest_command,
    run_loadtest,
    sample_image_files,
    write_report_json,
)
from vqbench.network.service import (
    PAIR_CONTENT_TYPE,
    EnergyMonitor,
    GalleryStore,
    create_app,
    frame_pair,
    listen_socket,
    split_pair,
)
from vqbench.network.token_file import read_token_file
from vqbench.pipelines.base import Components, EdgeOutput, HalfFootprint, Pipeline
from vqbench.pipelines.cloud import CloudCodecPipeline, CloudRawPipeline
from vqbench.scenario import AlignmentConfig, TeacherConfig, TransportConfig

TOKEN = "test-token-8c1f"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "lfw-sample" / "lfw-deepfunneled"


# ---------------------------------------------------------------------------------------------
# Fakes.


class FakeTeacher:
    """Maps a chip to the normalised means of 128 pixel groups: fast and deterministic."""

    name = "fake-teacher"
    runtime = "fake"
    fingerprint = "fake"
    model_bytes = 0

    def embed(self, chips: np.ndarray) -> np.ndarray:
        flat = np.asarray(chips, dtype=np.float32).reshape(len(chips), -1)
        groups = flat[:, : 128 * (flat.shape[1] // 128)].reshape(len(chips), 128, -1).mean(axis=2) + 1.0
        return (groups / np.linalg.norm(groups, axis=1, keepdims=True)).astype(np.float32)


class FakeAligner:
    """Decodes the image and resizes it to the chip size. Only a uniform image counts as having no face."""

    fingerprint = "fake"
    model_bytes = 0

    def align_bytes(self, data: bytes, source: str = "<bytes>", fix: str = FILE_IMAGE_FIX) -> AlignedChip:
        pixels = decode_image(data, source, fix)
        image = Image.fromarray(pixels).resize((150, 150))
        return AlignedChip(chip=np.asarray(image, dtype=np.uint8), detected=bool(pixels.std() > 1.0))


class FakeComponents(Components):
    def __init__(self) -> None:
        super().__init__(AlignmentConfig(), TeacherConfig())
        # Components loads models through cached_property, so setting the instance attributes replaces loading.
        self.aligner = FakeAligner()  # type: ignore[misc]
        self.teacher = FakeTeacher()  # type: ignore[misc]


class CodesPipeline(Pipeline):
    """An opaque payload kind: b'TC' + version byte + 128 int8 values. Wrong header -> PayloadError."""

    kind = "test-codes"
    variant = "v1"

    def edge(self, image_bytes: bytes) -> EdgeOutput:
        return EdgeOutput(self.edge_from_chip(decode_image(image_bytes)))

    def edge_from_chip(self, chip: np.ndarray) -> bytes:
        values = np.resize(np.asarray(chip, dtype=np.int16).ravel() % 100, 128).astype(np.int8)
        return b"TC\x01" + values.tobytes()

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        rows = []
        for payload in payloads:
            if payload[:3] != b"TC\x01" or len(payload) != 131:
                raise PayloadError(f"test-codes payload header {payload[:3]!r} or length {len(payload)} is invalid")
            rows.append(np.frombuffer(payload[3:], dtype=np.int8).astype(np.float32) + 1.0)
        return np.stack(rows)

    @property
    def cloud_fingerprint(self) -> str:
        return "codes"

    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        return HalfFootprint(), HalfFootprint()


class BrokenPipeline(CodesPipeline):
    """A cloud half with a bug: every call raises a plain exception."""

    kind = "test-broken"

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        raise RuntimeError("bug in the cloud half")


class SlowPipeline(CodesPipeline):
    """A cloud half that takes ``delay_s`` per call."""

    kind = "test-slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().cloud(payloads)


class FakeMeter(EnergyMeter):
    """A constant 2 W device."""

    name = "fake"
    method = "measured-fake"
    power_w = 2.0

    def probe(self) -> Availability:
        return Availability(True, "fake meter")

    def begin(self) -> float:
        return time.perf_counter()

    def end(self, token: float) -> EnergyReading:
        duration_s = time.perf_counter() - token
        return EnergyReading(energy_j=self.power_w * duration_s, duration_s=duration_s, method=self.method)


# ---------------------------------------------------------------------------------------------
# Fixtures.


def _image_bytes(size_px: int, image_format: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size_px, size_px, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def _gray_image_bytes(size_px: int, image_format: str) -> bytes:
    """A uniform mid-grey image: no face for dlib's detector or for FakeAligner."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size_px, size_px, 3), 128, dtype=np.uint8)).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Pipeline]:
    components = FakeComponents()
    return {
        "raw": CloudRawPipeline(components),
        "codec": CloudCodecPipeline(components, "jpeg", 50),
        "codec-png": CloudCodecPipeline(components, "png", 60, size_px=64),
        "codes": CodesPipeline(),
        "broken": BrokenPipeline(),
    }


@pytest.fixture(scope="module")
def client(pipelines: dict[str, Pipeline]) -> Iterator[TestClient]:
    app = create_app(list(pipelines.values()), TOKEN, max_request_bytes=200_000, galleries=GalleryStore(max_galleries=2, max_entries=3))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    return _image_bytes(250, "JPEG", seed=1)


def _payload(pipelines: dict[str, Pipeline], name: str, camera_jpeg: bytes) -> tuple[Pipeline, bytes, str]:
    pipeline = pipelines[name]
    payload = pipeline.edge(camera_jpeg).payload
    content_type = {"raw": "image/jpeg", "codec": "image/jpeg", "codec-png": "image/png"}.get(name, "application/octet-stream")
    return pipeline, payload, content_type


def _embed(client: TestClient, pipeline: Pipeline, payload: bytes, content_type: str, **headers: str):
    return client.post(
        f"/v1/embed/{pipeline.kind}/{pipeline.variant}", content=payload, headers={**AUTH, "content-type": content_type, **headers}
    )


def _assert_problem(response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["detail"]
    assert body["fix"]


def _assert_still_serving(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    assert client.get("/health").status_code == 200
    pipeline, payload, content_type = _payload(pipelines, "codec", camera_jpeg)
    assert _embed(client, pipeline, payload, content_type).status_code == 200


# ---------------------------------------------------------------------------------------------
# Discovery.


def test_health_open_without_token(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["models"][0]["teacher"] == "fake-teacher"
    assert body["versions"]["vqbench"]
    assert "cloud-raw/original" in body["pipelines"]


def test_pipelines_list_content_types(client: TestClient) -> None:
    body = client.get("/v1/pipelines", headers=AUTH).json()
    by_name = {f"{entry['pipeline']}/{entry['variant']}": entry for entry in body["pipelines"]}
    assert by_name["cloud-raw/original"]["content_types"] == ["image/jpeg", "image/png", "image/webp"]
    assert by_name["cloud-codec/jpeg-q50"]["content_types"] == ["image/jpeg"]
    assert by_name["cloud-codec/png-q60-64px"]["content_types"] == ["image/png"]
    assert by_name["test-codes/v1"]["content_types"] == ["application/octet-stream"]
    assert by_name["test-codes/v1"]["payload_kind"] == "opaque"
    assert body["match_content_type"] == PAIR_CONTENT_TYPE


def test_pipelines_list_alignment_and_chip_size(client: TestClient) -> None:
    body = client.get("/v1/pipelines", headers=AUTH).json()
    by_name = {f"{entry['pipeline']}/{entry['variant']}": entry for entry in body["pipelines"]}
    assert by_name["cloud-raw/original"]["aligned_on"] == "cloud"
    assert by_name["cloud-codec/jpeg-q50"]["aligned_on"] == "edge"
    assert by_name["test-codes/v1"]["aligned_on"] == "edge"
    assert by_name["cloud-raw/original"]["chip_side_px"] is None
    assert by_name["cloud-codec/jpeg-q50"]["chip_side_px"] == 150
    assert by_name["cloud-codec/png-q60-64px"]["chip_side_px"] == 64


# ---------------------------------------------------------------------------------------------
# Embedding every payload kind.


@pytest.mark.parametrize("name", ["raw", "codec", "codec-png", "codes"])
def test_embed_matches_in_process(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes, name: str) -> None:
    pipeline, payload, content_type = _payload(pipelines, name, camera_jpeg)
    response = _embed(client, pipeline, payload, content_type)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = pipeline.cloud([payload])[0]
    assert len(body["embedding"]) == len(expected)
    np.testing.assert_array_equal(np.asarray(body["embedding"], dtype=np.float32), expected)
    assert body["compute_ms"] > 0
    assert "compute;dur=" in response.headers["server-timing"]


def test_embed_raw_accepts_png_camera_file(client: TestClient, pipelines: dict[str, Pipeline]) -> None:
    png = _image_bytes(120, "PNG", seed=2)
    response = _embed(client, pipelines["raw"], png, "image/png")
    assert response.status_code == 200, response.text


def test_request_id_echoed_or_generated(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    pipeline, payload, content_type = _payload(pipelines, "codes", camera_jpeg)
    echoed = _embed(client, pipeline, payload, content_type, **{"x-request-id": "client-7.42"})
    assert echoed.headers["x-request-id"] == "client-7.42"
    replaced = _embed(client, pipeline, payload, content_type, **{"x-request-id": "bad id with spaces"})
    assert replaced.headers["x-request-id"] != "bad id with spaces"
    assert len(replaced.headers["x-request-id"]) == 32


# ---------------------------------------------------------------------------------------------
# Face detection.


@pytest.fixture()
def face_client(pipelines: dict[str, Pipeline]) -> Iterator[TestClient]:
    """A service of its own, so that galleries and metrics start empty."""
    app = create_app([pipelines["raw"], pipelines["codec"], pipelines["codes"]], None)
    with TestClient(app) as test_client:
        yield test_client


def test_embed_reports_no_face_for_gray_image(face_client: TestClient, pipelines: dict[str, Pipeline]) -> None:
    response = _embed(face_client, pipelines["raw"], _gray_image_bytes(250, "JPEG"), "image/jpeg")
    assert response.status_code == 200, response.text
    assert response.json()["face_detected"] is False
    assert response.json()["aligned_on"] == "cloud"
    metrics = face_client.get("/metrics").json()
    assert metrics["compute"]["cloud-raw/original"]["faces_not_detected"] == 1


def test_embed_reports_face_for_camera_image(face_client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    response = _embed(face_client, pipelines["raw"], camera_jpeg, "image/jpeg")
    assert response.status_code == 200, response.text
    assert response.json()["face_detected"] is True
    assert response.json()["aligned_on"] == "cloud"


@pytest.mark.parametrize("name", ["codec", "codes"])
def test_embed_edge_aligned_face_unknown(face_client: TestClient, pipelines: dict[str, Pipeline], name: str) -> None:
    # The edge aligned a face-less image here, but its payload carries no detection result.
    pipeline, payload, content_type = _payload(pipelines, name, _gray_image_bytes(250, "JPEG"))
    response = _embed(face_client, pipeline, payload, content_type)
    assert response.status_code == 200, response.text
    assert response.json()["face_detected"] is None
    assert response.json()["aligned_on"] == "edge"


def test_enrol_rejects_image_without_face(face_client: TestClient) -> None:
    headers = {"content-type": "image/jpeg"}
    response = face_client.post("/v1/gallery/staff/enrol?pipeline=cloud-raw&variant=original&label=nobody",
                                content=_gray_image_bytes(250, "JPEG"), headers=headers)
    _assert_problem(response, 422, "no_face_detected")
    assert "no face was detected" in response.json()["detail"]
    assert "staff" in response.json()["detail"]
    _assert_problem(face_client.get("/v1/gallery/staff"), 404, "gallery_not_found")


def test_unknown_image_format_named_plainly(face_client: TestClient) -> None:
    garbage = face_client.post("/v1/embed/cloud-raw/original", content=b"\x10" + bytes(300),
                               headers={"content-type": "image/jpeg"})
    _assert_problem(garbage, 422, "payload_invalid")
    assert "not in a known image format" in garbage.json()["detail"]
    assert "BytesIO" not in garbage.text


@pytest.mark.parametrize("label", ["%00", "a%0Ab", "%E2%80%AEevil"])
def test_enrol_rejects_control_characters_in_label(face_client: TestClient, camera_jpeg: bytes, label: str) -> None:
    response = face_client.post(f"/v1/gallery/staff/enrol?pipeline=cloud-raw&variant=original&label={label}",
                                content=camera_jpeg, headers={"content-type": "image/jpeg"})
    _assert_problem(response, 422, "invalid_label")
    assert "control or formatting characters" in response.json()["detail"]


def test_enrol_accepts_detected_face(face_client: TestClient, camera_jpeg: bytes) -> None:
    response = face_client.post("/v1/gallery/staff/enrol?pipeline=cloud-raw&variant=original&label=someone",
                                content=camera_jpeg, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert response.json()["face_detected"] is True
    assert response.json()["gallery_entries"] == 1


def test_identify_and_match_flag_no_face(face_client: TestClient, camera_jpeg: bytes) -> None:
    headers = {"content-type": "image/jpeg"}
    gray = _gray_image_bytes(250, "JPEG")
    enrolled = face_client.post("/v1/gallery/staff/enrol?pipeline=cloud-raw&variant=original&label=someone",
                                content=camera_jpeg, headers=headers)
    assert enrolled.status_code == 200, enrolled.text

    identified = face_client.post("/v1/gallery/staff/identify?pipeline=cloud-raw&variant=original", content=gray, headers=headers)
    assert identified.status_code == 200, identified.text
    assert identified.json()["face_detected"] is False

    pair_headers = {"content-type": PAIR_CONTENT_TYPE, "x-payload-type": "image/jpeg"}
    matched = face_client.post("/v1/match/cloud-raw/original", content=frame_pair(gray, camera_jpeg), headers=pair_headers)
    assert matched.status_code == 200, matched.text
    assert matched.json()["face_detected"] == [False, True]


# ---------------------------------------------------------------------------------------------
# Authentication.


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"],
    ids=["missing", "wrong", "wrong-scheme", "empty", "longer"],
)
def test_bad_token_rejected(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes, authorization: str | None) -> None:
    pipeline, payload, content_type = _payload(pipelines, "codec", camera_jpeg)
    headers = {"content-type": content_type} | ({"authorization": authorization} if authorization else {})
    response = client.post(f"/v1/embed/{pipeline.kind}/{pipeline.variant}", content=payload, headers=headers)
    _assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics", headers=headers).status_code == 401
    assert client.get("/v1/pipelines", headers=headers).status_code == 401


def test_right_token_accepted(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    pipeline, payload, content_type = _payload(pipelines, "codec", camera_jpeg)
    assert _embed(client, pipeline, payload, content_type).status_code == 200
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_no_token_configured_serves_everyone(pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    with TestClient(create_app([pipelines["codes"]], None)) as open_client:
        pipeline, payload, _ = _payload(pipelines, "codes", camera_jpeg)
        response = open_client.post("/v1/embed/test-codes/v1", content=payload, headers={"content-type": "application/octet-stream"})
        assert response.status_code == 200


# ---------------------------------------------------------------------------------------------
# Malformed input: each case gets its 4xx and the service keeps serving.


def _bomb_png() -> bytes:
    """A valid PNG whose header claims 30000 x 30000 pixels."""
    data = bytearray(_image_bytes(4, "PNG"))
    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


MALFORMED_CASES = {
    # name: (pipeline, payload builder, content type, status, error)
    "truncated-raw": ("raw", lambda jpeg: jpeg[: len(jpeg) // 2], "image/jpeg", 422, "payload_invalid"),
    "truncated-codec": ("codec", lambda chip: chip[:40], "image/jpeg", 422, "payload_invalid"),
    "garbage-codec": ("codec", lambda chip: b"\x00" * 300, "image/jpeg", 422, "payload_invalid"),
    "empty": ("codec", lambda chip: b"", "image/jpeg", 422, "payload_invalid"),
    "png-declared-jpeg": ("raw", lambda jpeg: _image_bytes(32, "PNG"), "image/jpeg", 422, "payload_invalid"),
    "bomb-header": ("raw", lambda jpeg: _bomb_png(), "image/png", 422, "payload_invalid"),
    "wrong-content-type": ("codec", lambda chip: chip, "image/png", 415, "unsupported_media_type"),
    "no-content-type": ("codec", lambda chip: chip, "", 415, "unsupported_media_type"),
    "text-content-type": ("raw", lambda jpeg: jpeg, "text/plain", 415, "unsupported_media_type"),
    "codes-bad-header": ("codes", lambda codes: b"XX" + codes[2:], "application/octet-stream", 422, "payload_invalid"),
    "codes-short": ("codes", lambda codes: codes[:-1], "application/octet-stream", 422, "payload_invalid"),
    "oversized": ("codec", lambda chip: b"\xff" * 300_000, "image/jpeg", 413, "payload_too_large"),
    "one-pixel-codec": ("codec", lambda chip: _image_bytes(1, "JPEG"), "image/jpeg", 422, "payload_invalid"),
    "wrong-size-codec": ("codec-png", lambda chip: _image_bytes(150, "PNG"), "image/png", 422, "payload_invalid"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CASES))
def test_malformed_payload_rejected(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes, case: str) -> None:
    name, build, content_type, status, error = MALFORMED_CASES[case]
    pipeline, payload, _ = _payload(pipelines, name, camera_jpeg)
    response = _embed(client, pipeline, build(payload), content_type)
    _assert_problem(response, status, error)
    _assert_still_serving(client, pipelines, camera_jpeg)


def test_codec_chip_size_error_names_sizes(client: TestClient, pipelines: dict[str, Pipeline]) -> None:
    response = _embed(client, pipelines["codec"], _image_bytes(1, "JPEG"), "image/jpeg")
    _assert_problem(response, 422, "payload_invalid")
    assert "1x1" in response.json()["detail"]
    assert "150x150" in response.json()["detail"]


def _asgi_post(app, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, dict]:
    """Send one request straight to the ASGI app, with header bytes exactly as given."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize("declared", [b"abc", b"-5", b"\xb2"], ids=["letters", "negative", "superscript-two"])
def test_bad_content_length_in_process_is_json(pipelines: dict[str, Pipeline], camera_jpeg: bytes, declared: bytes) -> None:
    # Only in process does the header reach the app. Under uvicorn, h11 rejects it first (see the socket test).
    # b"\xb2" is '²' in latin-1, for which str.isdigit() is true but int() fails.
    app = create_app([pipelines["codes"]], None)
    payload = pipelines["codes"].edge(camera_jpeg).payload
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", declared)]
    status, body = _asgi_post(app, "/v1/embed/test-codes/v1", headers, payload)
    assert status == 400
    assert body["error"] == "invalid_content_length"
    assert repr(declared.decode("latin-1")) in body["detail"]


def test_oversized_chunked_body_rejected(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b"\xff" * 10_000

    response = client.post("/v1/embed/cloud-codec/jpeg-q50", content=chunks(), headers={**AUTH, "content-type": "image/jpeg"})
    assert "content-length" not in {key.lower() for key in response.request.headers}
    _assert_problem(response, 413, "payload_too_large")
    _assert_still_serving(client, pipelines, camera_jpeg)


@pytest.mark.parametrize("path", ["/v1/embed/cloud-nothing/original", "/v1/embed/cloud-codec/jpeg-q99", "/v1/match/nope/x"])
def test_unknown_pipeline_is_404(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes, path: str) -> None:
    response = client.post(path, content=b"x", headers={**AUTH, "content-type": "image/jpeg"})
    _assert_problem(response, 404, "pipeline_not_found")
    assert "cloud-codec/jpeg-q50" in response.json()["fix"]
    _assert_still_serving(client, pipelines, camera_jpeg)


def test_unknown_route_is_404_json(client: TestClient) -> None:
    _assert_problem(client.get("/v2/anything", headers=AUTH), 404, "http_error")


def test_bug_in_cloud_is_500_logged(
    client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, payload, _ = _payload(pipelines, "broken", camera_jpeg)
    with caplog.at_level(logging.ERROR, logger="vqbench.network.service"):
        response = _embed(client, pipeline, payload, "application/octet-stream", **{"x-request-id": "bug-1"})
    _assert_problem(response, 500, "internal_error")
    assert "bug in the cloud half" not in response.text
    assert any("bug-1" in record.getMessage() and record.exc_info for record in caplog.records)
    _assert_still_serving(client, pipelines, camera_jpeg)


def test_busy_service_returns_503(pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    with TestClient(create_app([pipelines["codes"]], None, max_pending_requests=0)) as busy_client:
        _, payload, _ = _payload(pipelines, "codes", camera_jpeg)
        response = busy_client.post("/v1/embed/test-codes/v1", content=payload, headers={"content-type": "application/octet-stream"})
    _assert_problem(response, 503, "busy")
    assert response.headers["retry-after"] == "1"


# ---------------------------------------------------------------------------------------------
# Match and galleries.


def test_pair_framing_round_trip() -> None:
    assert split_pair(frame_pair(b"abc", b"")) == [b"abc", b""]
    assert split_pair(frame_pair(b"", b"\x00" * 5)) == [b"", b"\x00" * 5]
    for bad in [b"", b"\x00\x00\x00", frame_pair(b"a", b"b") + b"!", frame_pair(b"a", b"b")[:-1], b"\x00\x00\x00\x09abc"]:
        with pytest.raises(PayloadError):
            split_pair(bad)


def test_match_scores_pairs(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    pipeline, first, _ = _payload(pipelines, "codec", camera_jpeg)
    second = pipeline.edge(_image_bytes(250, "JPEG", seed=9)).payload
    headers = {**AUTH, "content-type": PAIR_CONTENT_TYPE, "x-payload-type": "image/jpeg"}
    same = client.post("/v1/match/cloud-codec/jpeg-q50", content=frame_pair(first, first), headers=headers).json()
    assert same["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    other = client.post("/v1/match/cloud-codec/jpeg-q50", content=frame_pair(first, second), headers=headers).json()
    a, b = pipeline.cloud([first, second])
    expected = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert other["cosine_similarity"] == pytest.approx(expected, abs=1e-6)
    assert other["cosine_similarity"] < 0.9999


def test_match_rejects_bad_framing(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    _, chip, _ = _payload(pipelines, "codec", camera_jpeg)
    headers = {**AUTH, "content-type": PAIR_CONTENT_TYPE, "x-payload-type": "image/jpeg"}
    _assert_problem(client.post("/v1/match/cloud-codec/jpeg-q50", content=frame_pair(chip, chip)[:-3], headers=headers), 422, "payload_invalid")
    wrong_inner = {**headers, "x-payload-type": "image/png"}
    _assert_problem(client.post("/v1/match/cloud-codec/jpeg-q50", content=frame_pair(chip, chip), headers=wrong_inner), 415, "unsupported_media_type")
    not_pair = {**AUTH, "content-type": "image/jpeg"}
    _assert_problem(client.post("/v1/match/cloud-codec/jpeg-q50", content=chip, headers=not_pair), 415, "unsupported_media_type")


def test_gallery_enrol_identify_bounded(client: TestClient, pipelines: dict[str, Pipeline]) -> None:
    codec = pipelines["codec"]
    people = {f"person-{seed}": _image_bytes(250, "JPEG", seed=seed) for seed in (11, 12, 13)}
    headers = {**AUTH, "content-type": "image/jpeg"}
    for label, image in people.items():
        response = client.post(f"/v1/gallery/staff/enrol?pipeline=cloud-codec&variant=jpeg-q50&label={label}",
                               content=codec.edge(image).payload, headers=headers)
        assert response.status_code == 200, response.text
    assert response.json()["gallery_entries"] == 3

    # A raw camera file of person-12 is found through the raw pipeline: both embed into one space.
    found = client.post("/v1/gallery/staff/identify?pipeline=cloud-raw&variant=original", content=people["person-12"], headers=headers)
    assert found.status_code == 200, found.text
    assert found.json()["label"] == "person-12"
    assert found.json()["cosine_similarity"] > 0.99

    assert found.json()["enrolled_with"] == "cloud-codec/jpeg-q50"
    # Entries of one gallery come from one variant, so the raw pipeline cannot enrol into it.
    other = client.post("/v1/gallery/staff/enrol?pipeline=cloud-raw&variant=original&label=person-11",
                        content=people["person-11"], headers=headers)
    _assert_problem(other, 409, "gallery_variant_mismatch")
    assert "enrolled through cloud-codec/jpeg-q50, not cloud-raw/original" in other.text

    full = client.post("/v1/gallery/staff/enrol?pipeline=cloud-codec&variant=jpeg-q50&label=extra",
                       content=codec.edge(people["person-11"]).payload, headers=headers)
    _assert_problem(full, 409, "gallery_full")
    _assert_problem(client.post("/v1/gallery/empty/identify?pipeline=cloud-raw&variant=original", content=people["person-11"], headers=headers),
                    404, "gallery_not_found")
    _assert_problem(client.post("/v1/gallery/bad%20name/enrol?pipeline=cloud-raw&variant=original&label=x", content=b"x", headers=headers),
                    422, "invalid_gallery_name")
    assert client.get("/v1/gallery/staff", headers=AUTH).json()["entries"] == 3
    assert client.delete("/v1/gallery/staff", headers=AUTH).json()["deleted"] is True
    assert client.get("/v1/gallery/staff", headers=AUTH).status_code == 404


def test_gallery_rejects_other_embedding_size(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    headers = {**AUTH, "content-type": "application/octet-stream"}
    codes = pipelines["codes"].edge(camera_jpeg).payload
    assert client.post("/v1/gallery/mixed/enrol?pipeline=test-codes&variant=v1&label=a", content=codes, headers=headers).status_code == 200
    store = GalleryStore()
    store.enrol("g", "a", np.ones(4, dtype=np.float32), "test-codes/v1")
    with pytest.raises(Exception, match="4-d embeddings"):
        store.enrol("g", "b", np.ones(5, dtype=np.float32), "test-codes/v1")
    client.delete("/v1/gallery/mixed", headers=AUTH)


# ---------------------------------------------------------------------------------------------
# Metrics and energy windows.


def test_metrics_count_requests_and_errors(client: TestClient, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    before = client.get("/metrics", headers=AUTH).json()
    pipeline, payload, content_type = _payload(pipelines, "codec", camera_jpeg)
    for _ in range(3):
        _embed(client, pipeline, payload, content_type)
    _embed(client, pipeline, payload, "image/png")
    after = client.get("/metrics", headers=AUTH).json()

    route = "/v1/embed/{kind}/{variant}"
    assert after["requests"][route] - before["requests"].get(route, 0) == 4
    assert after["statuses"][route]["415"] - before["statuses"].get(route, {}).get("415", 0) == 1
    assert after["errors"][route]["415"] >= 1
    timing = after["compute"]["cloud-codec/jpeg-q50"]
    assert timing["samples"] >= 3
    assert 0 < timing["compute_p50_ms"] <= timing["compute_p95_ms"] <= timing["compute_p99_ms"]
    assert after["energy"] == {"available": False, "reason": "no energy meter was configured"}


def test_energy_windows_with_meter(pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    energy = EnergyMonitor(FakeMeter(), "fake meter", window_s=0.05)
    app = create_app([pipelines["codes"]], None, energy=energy)
    _, payload, _ = _payload(pipelines, "codes", camera_jpeg)
    with TestClient(app) as energy_client:
        for _ in range(4):
            energy_client.post("/v1/embed/test-codes/v1", content=payload, headers={"content-type": "application/octet-stream"})
        time.sleep(0.3)
        snapshot = energy_client.get("/metrics").json()["energy"]
    assert snapshot["available"] is True
    assert snapshot["method"] == "measured-fake"
    assert snapshot["totals"]["windows"] >= 2
    assert snapshot["totals"]["payloads_computed"] <= 4
    for window in snapshot["windows"]:
        assert window["mean_power_w"] == pytest.approx(2.0, rel=1e-6)
    assert snapshot["totals"]["energy_j"] == pytest.approx(2.0 * snapshot["totals"]["duration_s"], rel=1e-6)


def test_energy_monitor_without_meter_says_why() -> None:
    snapshot = EnergyMonitor(None, "no RAPL counters").snapshot()
    assert snapshot == {"available": False, "reason": "no RAPL counters"}


# ---------------------------------------------------------------------------------------------
# Client helpers.


def test_read_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  abc123  \nsecond line\n")
    path.chmod(0o600)
    assert read_token_file(path) == "abc123"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ScenarioError, match="empty"):
        read_token_file(tmp_path / "empty")
    with pytest.raises(ScenarioError, match="not found"):
        read_token_file(tmp_path / "missing")
    (tmp_path / "binary").write_bytes(b"\xff\xfe token\n")
    with pytest.raises(ScenarioError, match="not UTF-8 text"):
        read_token_file(tmp_path / "binary")


@pytest.mark.parametrize("content, shown", [("abc\x00def", "'\\x00' at character 4"), ("caf\u00e9", "'\u00e9' at character 4"),
                                            ("two words", "' ' at character 4")], ids=["nul", "accent", "space"])
def test_token_file_rejects_unsendable_characters(tmp_path: Path, content: str, shown: str) -> None:
    path = tmp_path / "token"
    path.write_text(content + "\n", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ScenarioError, match="printable ASCII") as caught:
        read_token_file(path)
    assert shown in str(caught.value)


def test_token_file_rejects_overlong_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a" * 1025 + "\n")
    with pytest.raises(ScenarioError, match="has 1025 characters, more than the 1024 that fit in a request header"):
        read_token_file(path)
    path.write_text("a" * 1024 + "\n")
    assert read_token_file(path) == "a" * 1024


def test_token_file_ignores_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbfsecret\r\n")
    path.chmod(0o600)
    assert read_token_file(path) == "secret"


def test_token_file_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="is a folder; pass the file that contains the token"):
        read_token_file(tmp_path)


def test_token_file_readable_by_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    path.write_text("abc123\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_token_file(path) == "abc123"
    # Logged under the token file's own module, not the client's, since the service reads it too.
    assert [(record.name, record.getMessage()) for record in caplog.records] == [
        ("vqbench.network.token_file", f"token file {path} can be read by other users; run chmod 600 on it")]


def _small_report() -> LoadTestReport:
    return LoadTestReport(
        url="http://127.0.0.1:1", clients=1, duration_s=1.0, requests=2, correct=2, throughput_rps=2.0,
        latency_p50_ms=3.0, latency_p95_ms=4.0, latency_p99_ms=4.0, latency_mean_ms=3.5,
        errors_by_kind={}, wrong_embeddings=0, wrong_request_ids=0,
    )


def test_loadtest_summary_without_requests() -> None:
    import dataclasses

    empty = dataclasses.replace(_small_report(), requests=0, correct=0, throughput_rps=0.0)
    lines = empty.summary_lines()
    assert lines[0].startswith("http://127.0.0.1:1: 1 client for 1.0 s, 0 requests,")
    assert "no request finished within the test's duration" in lines[3]
    assert not empty.all_correct
    assert not any("no request finished" in line for line in _small_report().summary_lines())


def test_report_path_check_rejects_unwritable(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="/proc/x.json") as caught:
        check_report_path(Path("/proc/x.json"))
    assert caught.value.exit_code == 2
    with pytest.raises(ScenarioError, match="is a folder"):
        check_report_path(tmp_path)
    with pytest.raises(ScenarioError, match="is not a folder"):
        check_report_path(Path("/dev/null/x.json"))
    with pytest.raises(ScenarioError, match="not a regular file"):
        check_report_path(Path("/dev/null"))


def test_report_path_check_accepts_new_file(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "load.json"
    check_report_path(path)
    assert path.parent.is_dir()
    assert list(path.parent.iterdir()) == []


def test_loadtest_checks_json_path_before_connecting() -> None:
    # The URL has nothing listening: the path error must come first.
    with pytest.raises(ScenarioError, match="/proc/x.json"):
        loadtest_command("http://127.0.0.1:9", 1, 1.0, None, None, 1, json_path=Path("/proc/x.json"))


def test_write_report_json(tmp_path: Path) -> None:
    path = tmp_path / "load.json"
    write_report_json(_small_report(), path)
    assert json.loads(path.read_text())["throughput_rps"] == 2.0
    with pytest.raises(RunError, match="/proc/x.json.*printed above"):
        write_report_json(_small_report(), Path("/proc/x.json"))


def test_sniff_image_type() -> None:
    assert sniff_image_type(_image_bytes(8, "JPEG")) == "image/jpeg"
    assert sniff_image_type(_image_bytes(8, "PNG")) == "image/png"
    assert sniff_image_type(_image_bytes(8, "WEBP")) == "image/webp"
    assert sniff_image_type(b"TC\x01") is None


# ---------------------------------------------------------------------------------------------
# Over a real loopback socket.


@contextmanager
def running_server(app, **options: object) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve ``app`` on a free loopback port; ``options`` go to ``uvicorn.Config``."""
    sock = listen_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start within 10 s"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_listen_socket_disables_nagle_for_accepted_connections() -> None:
    # asyncio sets TCP_NODELAY on an accepted connection only when the socket's proto is TCP.
    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        assert accepted.proto == socket.IPPROTO_TCP
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        accepted.close()
        client.close()
    finally:
        sock.close()


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes it forwards in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(downstream, upstream, "bytes_up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, "bytes_down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counter: str) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            # Count before forwarding, so the count is complete once the other side has the bytes.
            with self._lock:
                setattr(self, counter, getattr(self, counter) + len(data))
            sink.sendall(data)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def served(pipelines: dict[str, Pipeline]) -> Iterator[str]:
    app = create_app([pipelines["raw"], pipelines["codec"], pipelines["codes"], SlowPipeline(0.4)], TOKEN)
    with running_server(app) as (url, _server):
        yield url


def test_wire_bytes_match_proxy_count(served: str, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    proxy = CountingProxy(int(served.rsplit(":", 1)[1]))
    url = f"http://127.0.0.1:{proxy.port}"
    requests = [("cloud-raw", "original", camera_jpeg), ("cloud-codec", "jpeg-q50", pipelines["codec"].edge(camera_jpeg).payload),
                ("cloud-raw", "original", camera_jpeg)]
    stats = []
    with HttpCloud(url, token=TOKEN, max_connections=1) as cloud:
        cloud.content_type_for("cloud-raw", "original", camera_jpeg)
        up_before, down_before = proxy.bytes_up, proxy.bytes_down
        for kind, variant, payload in requests:
            stats.append(cloud.embed(kind, variant, payload)[1])
            assert sum(s.wire_bytes_up for s in stats) == proxy.bytes_up - up_before
            assert sum(s.wire_bytes_down for s in stats) == proxy.bytes_down - down_before
    proxy.close()
    for (_, _, payload), stat in zip(requests, stats):
        # Request line and headers add a few hundred bytes; the JSON of 128 floats about 2.5 kB.
        assert len(payload) + 100 < stat.wire_bytes_up < len(payload) + 600
        assert 2000 < stat.wire_bytes_down < 4500
        assert stat.status == 200
        assert stat.transfer_ms == pytest.approx(stat.total_ms - stat.compute_ms - stat.queue_ms)


def test_client_embed_over_loopback(served: str, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    with HttpCloud(served, token=TOKEN) as cloud:
        for name in ("raw", "codec", "codes"):
            pipeline = pipelines[name]
            payload = pipeline.edge(camera_jpeg).payload
            embedding, stats = cloud.embed(pipeline.kind, pipeline.variant, payload, request_id=f"loop-{name}")
            np.testing.assert_array_equal(embedding, pipeline.cloud([payload])[0])
            assert stats.request_id == f"loop-{name}"
            assert stats.compute_ms > 0


def test_client_errors_name_url_and_fix(served: str, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    with HttpCloud(f"http://127.0.0.1:{closed_port}", timeout_s=2) as refused:
        with pytest.raises(HttpTransportError, match=f"127.0.0.1:{closed_port}.*vqbench serve") as caught:
            refused.embed("cloud-raw", "original", camera_jpeg, content_type="image/jpeg")
    assert caught.value.kind == "connect"

    with HttpCloud(served, token="wrong") as wrong_token:
        with pytest.raises(HttpTransportError, match="rejected the bearer token.*vqbench serve --token-file") as caught:
            wrong_token.embed("cloud-raw", "original", camera_jpeg, content_type="image/jpeg")
    assert caught.value.status == 401

    with HttpCloud(served, token=TOKEN) as cloud:
        with pytest.raises(HttpPayloadRejected, match="HTTP 422") as caught:
            cloud.embed("cloud-raw", "original", camera_jpeg[:300])
        assert isinstance(caught.value, PayloadError)
        with pytest.raises(HttpTransportError, match="does not serve cloud-raw/missing"):
            cloud.embed("cloud-raw", "missing", camera_jpeg)

    slow_payload = pipelines["codes"].edge(camera_jpeg).payload
    with HttpCloud(served, token=TOKEN, timeout_s=0.1) as impatient:
        with pytest.raises(HttpTransportError, match="timed out after 0.1 s") as caught:
            impatient.embed("test-slow", "v1", slow_payload, content_type="application/octet-stream")
    assert caught.value.kind == "timeout"


def test_loadtest_payloads_alternate_variants() -> None:
    from vqbench.network.loadtest import LoadPayload, _alternate_variants

    empty = np.zeros(2, dtype=np.float32)
    items = [LoadPayload("a", "1", bytes([i]), empty) for i in range(3)] + [LoadPayload("b", "1", b"x", empty)]
    ordered = [(item.pipeline, item.payload) for item in _alternate_variants(items)]
    assert ordered == [("a", b"\x00"), ("b", b"x"), ("a", b"\x01"), ("a", b"\x02")]


def test_loadtest_without_token_names_option(served: str, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    payload = pipelines["codes"].edge(camera_jpeg).payload
    expected = pipelines["codes"].cloud([payload])[0]
    with pytest.raises(ScenarioError, match="no bearer token was sent; point --token-file at") as caught:
        run_loadtest(served, clients=1, duration_s=0.2, payloads=[("test-codes", "v1", payload, expected)], token=None)
    assert "before any load was sent" in str(caught.value)
    assert caught.value.exit_code == 2
    assert caught.value.__cause__.status == 401
    assert "transport.token_file" not in str(caught.value)


def test_scenario_client_401_names_setting(served: str, tmp_path: Path) -> None:
    with HttpCloud.from_config(TransportConfig(mode="http", url=served), tmp_path) as cloud:
        with pytest.raises(HttpTransportError, match="point transport.token_file at") as caught:
            cloud.pipelines()
    assert "--token-file at" not in str(caught.value)


def raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send raw request bytes to 127.0.0.1:``port``, keep the sending side open, and return the
    response's head and body once the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


def test_bad_content_length_over_socket_is_uvicorn_400(served: str) -> None:
    # h11 rejects the header before the app runs, so the body is uvicorn's text, not the service's JSON.
    port = int(served.rsplit(":", 1)[1])
    request = (b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Length: abc\r\n\r\nabc")
    head, body = raw_exchange(port, request)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: text/plain" in head.lower()
    assert body == b"Invalid HTTP request received."
    with HttpCloud(served, token=TOKEN) as cloud:
        assert cloud.health()["status"] == "ok"


def test_measured_transfer_columns_share_requests(served: str, pipelines: dict[str, Pipeline]) -> None:
    images = [_image_bytes(size_px, "JPEG", seed=size_px) for size_px in (60, 120, 250)]
    with HttpCloud(served, token=TOKEN) as cloud:
        stats = [cloud.embed("cloud-raw", "original", image, content_type="image/jpeg")[1] for image in images]
    columns = measured_transfer_columns(
        [s.transfer_ms for s in stats], [s.wire_bytes_up for s in stats], [s.wire_bytes_down for s in stats],
        [len(image) for image in images],
    )
    assert columns["wire_payload_bytes_up_mean"] == pytest.approx(np.mean([len(image) for image in images]))
    assert columns["wire_bytes_up_mean"] - columns["wire_payload_bytes_up_mean"] == pytest.approx(columns["wire_overhead_bytes_up_mean"])
    # Request line and headers: a few hundred bytes.
    assert 100 < columns["wire_overhead_bytes_up_mean"] < 600
    assert columns["transfer_latency_ms_p50_measured"] == pytest.approx(float(np.median([s.transfer_ms for s in stats])))
    assert all(s.face_detected is True for s in stats)


def test_measured_transfer_columns_edge_cases() -> None:
    local = measured_transfer_columns([], [], [], [100, 120])
    assert set(local.values()) == {None}
    assert "transfer_latency_ms_p50_measured" in local
    with pytest.raises(ValueError, match="differ in length"):
        measured_transfer_columns([1.0, 2.0], [300, 310], [2000, 2000], [100])


def test_graceful_shutdown_finishes_in_flight(pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    payload = pipelines["codes"].edge(camera_jpeg).payload
    outcome: dict[str, object] = {}
    with running_server(create_app([SlowPipeline(0.5)], None)) as (url, server):
        def call() -> None:
            with HttpCloud(url) as cloud:
                outcome["embedding"], outcome["stats"] = cloud.embed("test-slow", "v1", payload, content_type="application/octet-stream")

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.2)
        server.should_exit = True
        caller.join(timeout=10)
    assert outcome["stats"].status == 200  # type: ignore[union-attr]
    np.testing.assert_array_equal(outcome["embedding"], CodesPipeline().cloud([payload])[0])


def test_loadtest_checks_every_response(served: str, pipelines: dict[str, Pipeline], camera_jpeg: bytes) -> None:
    images = [_image_bytes(250, "JPEG", seed=seed) for seed in range(3)]
    payloads = []
    for name in ("codec", "codes"):
        pipeline = pipelines[name]
        for image in images:
            payload = pipeline.edge(image).payload
            payloads.append((pipeline.kind, pipeline.variant, payload, pipeline.cloud([payload])[0]))
    report = run_loadtest(served, clients=3, duration_s=0.5, payloads=payloads, token=TOKEN, max_requests=60)
    assert report.all_correct, report.summary_lines()
    assert 0 < report.requests <= 60
    assert report.throughput_rps > 0
    assert report.latency_p50_ms <= report.latency_p95_ms <= report.latency_p99_ms
    assert set(report.per_variant) == {"cloud-codec/jpeg-q50", "test-codes/v1"}

    # Swap the expected embeddings of two requests: the check must notice.
    swapped = [payloads[0][:3] + (payloads[1][3],), payloads[1][:3] + (payloads[0][3],)]
    report = run_loadtest(served, clients=2, duration_s=0.3, payloads=swapped, token=TOKEN, max_requests=10)
    assert report.correct == 0
    assert report.wrong_embeddings == report.requests > 0


def test_loadtest_backs_off_when_service_stops(camera_jpeg: bytes) -> None:
    pipeline = CodesPipeline()
    payload = pipeline.edge(camera_jpeg).payload
    payloads = [(pipeline.kind, pipeline.variant, payload, pipeline.cloud([payload])[0])]
    with running_server(create_app([pipeline], None)) as (url, server):
        stopper = threading.Timer(0.4, lambda: setattr(server, "should_exit", True))
        stopper.start()
        report = run_loadtest(url, clients=2, duration_s=2.5, payloads=payloads, token=None)
        stopper.join()
    unreachable = report.errors_by_kind.get("connect", 0) + report.errors_by_kind.get("protocol", 0)
    assert report.correct > 0
    assert unreachable > 0
    # About 2 s without a service: with waits of 0.05, 0.1, 0.2, 0.4, 0.8 and 1 s, each client
    # tries about 6 times. Without them it would try thousands of times.
    assert unreachable <= 2 * 10, report.errors_by_kind


@pytest.mark.parametrize(
    ("clients", "duration_s", "message"),
    [(0, 1.0, "--clients must be 1 to 64, got 0"), (65, 1.0, "--clients must be 1 to 64, got 65"),
     (1, float("nan"), "--duration-s must be a number of seconds above 0 and at most 3600, got nan"),
     (1, 0.0, "--duration-s must be"), (1, 3601.0, "--duration-s must be")],
)
def test_loadtest_settings_checked_first(clients: int, duration_s: float, message: str) -> None:
    # Nothing listens at the URL: the settings must be refused before any connection.
    with pytest.raises(ScenarioError, match=re.escape(message)) as caught:
        loadtest_command("http://127.0.0.1:9", clients, duration_s, None, None, 1)
    assert caught.value.exit_code == 2


def test_loadtest_help_states_the_limits() -> None:
    import typer

    from vqbench.cli import app
    from vqbench.network.loadtest import MAX_CLIENTS, MAX_DURATION_S

    options = {param.name: param for param in typer.main.get_command(app).commands["loadtest"].params}
    assert f"1 to {MAX_CLIENTS}" in options["clients"].help
    assert f"at most {MAX_DURATION_S:g}" in options["duration_s"].help


def test_loadtest_warns_when_images_exceed_sample(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("vqbench.network.loadtest.sample_image_files", lambda n_images: [Path("a.jpg"), Path("b.jpg")])
    monkeypatch.setattr("vqbench.network.loadtest.build_payloads", lambda pipelines, files: [])
    pipeline = CodesPipeline()
    monkeypatch.setattr("vqbench.network.service.build_served_pipelines", lambda *args: [pipeline])
    with running_server(create_app([pipeline], None)) as (url, _server):
        with caplog.at_level(logging.WARNING), pytest.raises(ScenarioError, match="at least one payload"):
            loadtest_command(url, 1, 1.0, None, None, 500)
    assert any("--images 500 is more than the 2 images of the LFW sample; using all of them" in record.getMessage()
               for record in caplog.records)


# ---------------------------------------------------------------------------------------------
# The real dlib models.


def test_real_models_over_loopback() -> None:
    components = Components(AlignmentConfig(), TeacherConfig(runtime="dlib"))
    real = [CloudRawPipeline(components), CloudCodecPipeline(components, "jpeg", 50)]
    image_files = sample_image_files(2, SAMPLE_DIR)
    payloads = build_payloads(real, image_files)
    with running_server(create_app(real, TOKEN)) as (url, _server):
        with HttpCloud(url, token=TOKEN) as cloud:
            assert cloud.health()["models"][0]["teacher_loaded"] is True
            for kind, variant, payload, expected in payloads:
                embedding, stats = cloud.embed(kind, variant, payload)
                np.testing.assert_allclose(embedding, expected, rtol=0, atol=1e-6)
                assert stats.wire_bytes_up > len(payload)
                assert stats.face_detected is (True if kind == "cloud-raw" else None)
            # dlib's detector finds no face in a uniform image; the aligner's fallback box is embedded.
            _, gray_stats = cloud.embed("cloud-raw", "original", _gray_image_bytes(250, "JPEG"))
            assert gray_stats.face_detected is False


def test_oversized_body_over_socket_gets_413(pipelines: dict[str, Pipeline]) -> None:
    with running_server(create_app([pipelines["raw"]], TOKEN, max_request_bytes=1_000_000)) as (url, _server):
        with HttpCloud(url, token=TOKEN) as cloud:
            with pytest.raises(HttpPayloadRejected, match="HTTP 413.*--max-request-bytes") as caught:
                cloud.embed("cloud-raw", "original", b"\xff\xd8\xff" + b"\x00" * 3_000_000, content_type="image/jpeg")
            assert caught.value.status == 413
            assert cloud.health()["status"] == "ok"
