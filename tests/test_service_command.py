"""``vqbench serve`` as a command: the ``--max-request-bytes`` and ``--body-timeout-s``
options, and the console lines it prints once it listens and once it has stopped."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from test_service import CodesPipeline
from vqbench.cli import app
from vqbench.network.service import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_REQUEST_BYTES,
    announcing_server,
    create_app,
    listen_socket,
    service_url,
)

runner = CliRunner()


@pytest.fixture()
def captured_serve(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace the service entry point, recording the arguments the command passes (keywords last, as a dict)."""
    calls: list[tuple] = []
    monkeypatch.setattr("vqbench.network.service.serve_command", lambda *args, **kwargs: calls.append((*args, kwargs)))
    return calls


# ---------------------------------------------------------------------------------------------
# --max-request-bytes.


def test_serve_help_lists_max_request_bytes() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--max-request-bytes" in result.output


def test_serve_default_body_limit_is_service_default(captured_serve: list[tuple]) -> None:
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert captured_serve[0][4] == DEFAULT_MAX_REQUEST_BYTES


def test_serve_passes_max_request_bytes(captured_serve: list[tuple]) -> None:
    result = runner.invoke(app, ["serve", "--max-request-bytes", "25000000"])
    assert result.exit_code == 0, result.output
    assert captured_serve[0][4] == 25_000_000


@pytest.mark.parametrize("value", ["0", "-5", str(2**30 + 1)])
def test_serve_rejects_limit_out_of_range(value: str) -> None:
    # The check comes before any model is loaded, so the real entry point returns at once.
    result = runner.invoke(app, ["serve", "--max-request-bytes", value])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"--max-request-bytes must be from 1 to {2**30} (1 GiB), got {value}" in message
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# --body-timeout-s.


def test_serve_default_body_timeout_is_service_default(captured_serve: list[tuple]) -> None:
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert captured_serve[0][-1] == {"body_timeout_s": DEFAULT_BODY_TIMEOUT_S}


def test_serve_passes_body_timeout(captured_serve: list[tuple]) -> None:
    result = runner.invoke(app, ["serve", "--body-timeout-s", "2.5"])
    assert result.exit_code == 0, result.output
    assert captured_serve[0][-1] == {"body_timeout_s": 2.5}


@pytest.mark.parametrize("value", ["0", "-1", "1e-9", "0.09", "nan", "inf", "1e300"])
def test_serve_rejects_bad_body_timeout(value: str) -> None:
    # Checked before any model is loaded, like --max-request-bytes.
    result = runner.invoke(app, ["serve", "--body-timeout-s", value])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "--body-timeout-s must be from 0.1 to 3600 seconds" in message
    assert f"got {float(value)}" in message
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# Console lines.


def test_service_url_brackets_ipv6() -> None:
    assert service_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert service_url("::1", 8080) == "http://[::1]:8080"


def test_server_announces_listening_and_stop() -> None:
    lines: list[str] = []
    service = create_app([CodesPipeline()], None)
    sock = listen_socket("127.0.0.1", 0)
    url = service_url("127.0.0.1", sock.getsockname()[1])
    server = announcing_server(uvicorn.Config(service, log_config=None, access_log=False), service, url, lines.append)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "uvicorn did not start within 10 s"
        assert lines == [f"vqbench serve: listening on {url} with 1 pipeline variant "
                         "(GET /v1/pipelines lists them); press Ctrl-C to stop"]
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert lines[1:] == [f"vqbench serve: stopped listening on {url} after 1 request"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_prints_ready_and_stopped_lines(tmp_path: Path) -> None:
    # A whole `vqbench serve` process without -v, stopped with SIGTERM as a service manager would.
    # edge-embed loads only its small ONNX embedder, so the process is ready in seconds.
    scenario = tmp_path / "embed.yaml"
    scenario.write_text("name: embed-only\npipelines: [{kind: edge-embed, model: edge-embed-s, dtypes: [fp16]}]\n"
                        "meters: {host: [rapl]}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", "from vqbench.cli import app; app()", "serve", "--scenario", str(scenario),
               "--port", str(port), "--max-request-bytes", "5000"]

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("listening on" in line for line in stderr_lines) and time.monotonic() < deadline:
            assert process.poll() is None, "".join(stderr_lines)
            time.sleep(0.1)
        assert any(f"vqbench serve: listening on {url} with 1 pipeline variant" in line for line in stderr_lines), stderr_lines

        with urllib.request.urlopen(f"{url}/v1/pipelines", timeout=10) as response:
            assert json.load(response)["max_request_bytes"] == 5000
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    reader.join(timeout=10)

    assert any(f"vqbench serve: stopped listening on {url} after 1 request" in line for line in stderr_lines), stderr_lines
    assert not any("Traceback" in line for line in stderr_lines), stderr_lines


def test_port_in_use_is_usage_error() -> None:
    from vqbench.errors import ScenarioError

    busy = listen_socket("127.0.0.1", 0)
    try:
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ScenarioError, match=f"cannot listen on 127.0.0.1:{port}") as caught:
            listen_socket("127.0.0.1", port)
    finally:
        busy.close()
    assert caught.value.exit_code == 2


def test_busy_port_fails_before_models_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqbench.errors import ScenarioError
    from vqbench.network import service

    def no_models(*args: object) -> None:
        raise AssertionError("models were loaded for a port that cannot be bound")

    monkeypatch.setattr(service, "build_served_pipelines", no_models)
    busy = listen_socket("127.0.0.1", 0)
    try:
        busy.listen()
        with pytest.raises(ScenarioError, match="cannot listen on"):
            service.serve_command("127.0.0.1", busy.getsockname()[1], None, None)
    finally:
        busy.close()


def test_shutdown_announces_requests_in_flight() -> None:
    # A stalled body keeps uvicorn's shutdown waiting, so the service announces what it waits for.
    lines: list[str] = []
    app = create_app([CodesPipeline()], None, body_timeout_s=1.0)
    sock = listen_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
    server = announcing_server(config, app, service_url("127.0.0.1", sock.getsockname()[1]), lines.append)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    with socket.create_connection(sock.getsockname(), timeout=5) as stalled:
        stalled.sendall(b"POST /v1/embed/test-codes/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/octet-stream\r\nContent-Length: 131\r\n\r\nTC\x01")
        time.sleep(0.2)
        server.should_exit = True
        thread.join(timeout=10)
        assert stalled.recv(65536).startswith(b"HTTP/1.1 408 ")
    sock.close()
    assert not thread.is_alive()
    assert "vqbench serve: stopping; waiting up to 5 s for 1 request in flight" in lines
    assert lines[-1].endswith("after 1 request")
