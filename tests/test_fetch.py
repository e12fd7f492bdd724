"""Tests for the LFW download: a real local HTTP server with Range support serves a small
archive of real LFW images, and fetch_lfw must install, resume, verify and reject."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vqbench.data import fetch
from vqbench.data.fetch import (
    ARCHIVE_NAME,
    default_data_dir,
    fetch_lfw,
    lfw_present,
    load_manifest,
    verify_lfw,
)
from vqbench.errors import DataError

SHARED_LFW = Path("/work/shared/data/lfw")
PEOPLE = {
    "Aaron_Peirsol": 4,
    "Abdullah_Gul": 3,
    "AJ_Cook": 1,
    "Zico": 3,
}
PAIRS_TEXT = "1 1\nAaron_Peirsol\t1\t2\nAJ_Cook\t1\tZico\t3\n"
PEOPLE_TEXT = "4\n" + "".join(f"{name}\t{count}\n" for name, count in PEOPLE.items())
README_TEXT = "Small LFW subset for tests.\n"

needs_lfw = pytest.mark.skipif(
    not (SHARED_LFW / "lfw-deepfunneled").is_dir(), reason="needs the LFW copy in /work/shared"
)


# ---------------------------------------------------------------------------------------------
# A local HTTP server with optional Range support


@dataclass
class FakeSite:
    """Files served over HTTP on 127.0.0.1, and the requests the server received."""

    root: Path
    base_url: str = ""
    supports_ranges: bool = True
    status_overrides: dict[str, int] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)
    #: Files whose body stops after half its bytes until ``release`` is set.
    stalled: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def requested_names(self) -> list[str]:
        return [name for name, _ in self.requests]

    def archive_bytes(self) -> bytes:
        return (self.root / ARCHIVE_NAME).read_bytes()


def _handler_for(site: FakeSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
            name = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            site.requests.append((name, range_header))
            if name in site.status_overrides:
                self._send_empty(site.status_overrides[name])
                return
            path = site.root / name
            if not path.is_file():
                self._send_empty(404)
                return
            body = path.read_bytes()
            if site.supports_ranges and range_header:
                self._send_range(body, range_header)
            elif name in site.stalled:
                self._send_stalled(body)
            else:
                content_type = site.content_types.get(name)
                self._send(200, body, {"Content-Type": content_type} if content_type else {})

        def _send_stalled(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            site.release.wait(timeout=30)

        def _send_range(self, body: bytes, range_header: str) -> None:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            self._send(206, body[start:], {"Content-Range": content_range})

        def _send_empty(self, status: int) -> None:
            self._send(status, b"", {})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    root = tmp_path / "site"
    root.mkdir()
    site = FakeSite(root=root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(site))
    site.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield site
    site.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# A small archive of real LFW images and its manifest


def _image_members() -> dict[str, bytes]:
    members = {}
    for name, count in PEOPLE.items():
        for number in range(1, count + 1):
            relative = f"lfw-deepfunneled/{name}/{name}_{number:04d}.jpg"
            members[relative] = (SHARED_LFW / relative).read_bytes()
    return members


def _write_archive(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(path, "w:gz") as tar:
        directory = tarfile.TarInfo("lfw-deepfunneled")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


def _write_manifest(path: Path, files: dict[str, bytes]) -> Path:
    lines = [f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())]
    path.write_text("".join(lines))
    return path


@pytest.fixture
def lfw_files() -> dict[str, bytes]:
    if not (SHARED_LFW / "lfw-deepfunneled").is_dir():
        pytest.skip("needs the LFW copy in /work/shared")
    files = _image_members()
    files["pairs.txt"] = PAIRS_TEXT.encode()
    files["people.txt"] = PEOPLE_TEXT.encode()
    files["README.txt"] = README_TEXT.encode()
    return files


@pytest.fixture
def served(site: FakeSite, lfw_files: dict[str, bytes], tmp_path: Path) -> tuple[FakeSite, Path]:
    """Serve the small archive and protocol files; return the site and a matching manifest."""
    images = {name: data for name, data in lfw_files.items() if name.startswith("lfw-")}
    _write_archive(site.root / ARCHIVE_NAME, images)
    for name in ("pairs.txt", "people.txt", "README.txt"):
        (site.root / name).write_bytes(lfw_files[name])
    manifest = _write_manifest(tmp_path / "manifest.sha256", lfw_files)
    return site, manifest


def _assert_installed(dest: Path, files: dict[str, bytes]) -> None:
    root = dest / "lfw"
    for name, data in files.items():
        assert (root / name).read_bytes() == data, name
    assert not (dest / ".lfw-download").exists()
    assert not list(dest.glob(".lfw-unpack-*"))


# ---------------------------------------------------------------------------------------------
# Installing


def test_fetch_installs_layout(served, lfw_files, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"

    root = fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert root == dest / "lfw"
    _assert_installed(dest, lfw_files)
    assert (root / "lfw-deepfunneled/Zico/Zico_0003.jpg").is_file()
    assert lfw_present(root, manifest=manifest)
    assert verify_lfw(root, manifest=manifest) == len(lfw_files)


def test_fetch_accepts_archive_url(served, lfw_files, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"

    fetch_lfw(dest, url=site.base_url + ARCHIVE_NAME, progress=False, manifest=manifest)

    _assert_installed(dest, lfw_files)


def test_fetch_with_progress_bar(served, lfw_files, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"

    fetch_lfw(dest, url=site.base_url, progress=True, manifest=manifest)

    _assert_installed(dest, lfw_files)


def test_fetch_reuses_verified_install(served, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"
    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)
    requests_before = len(site.requests)

    root = fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert root == dest / "lfw"
    assert len(site.requests) == requests_before


def test_fetch_skips_missing_optional_files(served, tmp_path, caplog):
    site, manifest = served
    caplog.set_level(logging.WARNING, logger="vqbench.data.fetch")

    root = fetch_lfw(tmp_path / "data", url=site.base_url, progress=False, manifest=manifest)

    assert not (root / "lfw-names.txt").exists()
    assert "lfw-names.txt is not on the server" in caplog.text


# ---------------------------------------------------------------------------------------------
# Resuming


def _write_part(dest: Path, data: bytes) -> Path:
    part = dest / ".lfw-download" / (ARCHIVE_NAME + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    return part


def test_fetch_resumes_partial_download(served, lfw_files, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"
    archive = site.archive_bytes()
    half = len(archive) // 2
    _write_part(dest, archive[:half])

    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert (ARCHIVE_NAME, f"bytes={half}-") in site.requests
    _assert_installed(dest, lfw_files)


def test_fetch_completes_full_part(served, lfw_files, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"
    archive = site.archive_bytes()
    _write_part(dest, archive)

    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert (ARCHIVE_NAME, f"bytes={len(archive)}-") in site.requests
    _assert_installed(dest, lfw_files)


def test_fetch_restarts_without_range_support(served, lfw_files, tmp_path, caplog):
    site, manifest = served
    site.supports_ranges = False
    dest = tmp_path / "data"
    archive = site.archive_bytes()
    # A part with wrong bytes shows that the restart really starts again from byte 0.
    _write_part(dest, b"\0" * (len(archive) // 2))
    caplog.set_level(logging.INFO, logger="vqbench.data.fetch")

    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "ignores Range requests" in caplog.text
    _assert_installed(dest, lfw_files)


@pytest.mark.parametrize("supports_ranges", [True, False])
def test_fetch_discards_oversized_part(served, lfw_files, tmp_path, caplog, supports_ranges):
    site, manifest = served
    site.supports_ranges = supports_ranges
    dest = tmp_path / "data"
    _write_part(dest, b"\0" * (len(site.archive_bytes()) + 10))
    caplog.set_level(logging.WARNING, logger="vqbench.data.fetch")

    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "discarding partial download" in caplog.text
    _assert_installed(dest, lfw_files)


# ---------------------------------------------------------------------------------------------
# Rejecting


def test_fetch_rejects_checksum_mismatch(served, lfw_files, tmp_path):
    site, _ = served
    altered = dict(lfw_files)
    altered["lfw-deepfunneled/Zico/Zico_0002.jpg"] = b"not the real image"
    manifest = _write_manifest(tmp_path / "altered.sha256", altered)
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="Zico_0002.jpg") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "run the fetch again" in str(caught.value)
    assert not (dest / "lfw").exists()
    assert not (dest / ".lfw-download" / ARCHIVE_NAME).exists()
    assert not list(dest.glob(".lfw-unpack-*"))


def test_fetch_rejects_protocol_file_mismatch(served, lfw_files, tmp_path):
    site, manifest = served
    (site.root / "pairs.txt").write_text("10 300\n")
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="'pairs.txt'"):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert not (dest / "lfw").exists()
    assert not (dest / ".lfw-download" / "pairs.txt").exists()


def _unsafe_member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = 4
    else:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_unsafe_member("../evil.txt"), "unsafe member path '../evil.txt'"),
        (_unsafe_member("lfw-deepfunneled/../../evil.txt"), "unsafe member path"),
        (_unsafe_member("/tmp/evil.txt"), "unsafe member path '/tmp/evil.txt'"),
        (_unsafe_member("lfw-deepfunneled/link", tarfile.SYMTYPE), "link or special file"),
        (_unsafe_member("lfw-deepfunneled/hard", tarfile.LNKTYPE), "link or special file"),
    ],
)
def test_fetch_rejects_unsafe_member(served, lfw_files, tmp_path, member, message):
    site, manifest = served
    images = {name: data for name, data in lfw_files.items() if name.startswith("lfw-")}
    _write_archive(site.root / ARCHIVE_NAME, images, extra=[member])
    dest = tmp_path / "data"

    with pytest.raises(DataError, match=message):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert not (dest / "lfw").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert not list(dest.glob(".lfw-unpack-*"))


def test_fetch_rejects_corrupt_archive(served, tmp_path):
    site, manifest = served
    (site.root / ARCHIVE_NAME).write_bytes(b"\x1f\x8b\x08\x00 truncated")
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="not a readable tar archive"):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert not (dest / ".lfw-download" / ARCHIVE_NAME).exists()


ERROR_PAGE = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    [
        (ARCHIVE_NAME, ERROR_PAGE, "text/html; charset=utf-8"),
        (ARCHIVE_NAME, b"\xef\xbb\xbf  <HTML><body>Sign in to continue</body></HTML>", None),
        (ARCHIVE_NAME, b"<head><title>Moved</title></head>", "text/html"),
        ("pairs.txt", ERROR_PAGE, None),
    ],
    ids=["doctype-labelled", "html-tag-after-bom", "labelled-without-doctype", "protocol-file"],
)
def test_fetch_rejects_html_page(served, tmp_path, name, body, content_type):
    site, manifest = served
    (site.root / name).write_bytes(body)
    if content_type:
        site.content_types[name] = content_type
    dest = tmp_path / "data"

    with pytest.raises(DataError, match=f"{name} returned an HTML page") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    message = str(caught.value)
    assert "check the url (--url) or the mirror" in message.lower()
    if content_type:
        assert f"Content-Type {content_type}" in message
    else:
        assert "its content starts like HTML, although its Content-Type is missing" in message
    assert not (dest / ".lfw-download" / name).exists()
    assert not (dest / ".lfw-download" / f"{name}.part").exists()


def test_fetch_accepts_files_mislabelled_html(served, lfw_files, tmp_path):
    site, manifest = served
    site.content_types[ARCHIVE_NAME] = "text/html"
    site.content_types["pairs.txt"] = "text/html"
    dest = tmp_path / "data"

    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    _assert_installed(dest, lfw_files)


def test_fetch_rejects_unverified_existing_dest(served, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"
    (dest / "lfw").mkdir(parents=True)
    (dest / "lfw" / "pairs.txt").write_text("something else\n")

    with pytest.raises(DataError, match="exists and does not verify") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "Delete" in str(caught.value)
    assert (dest / "lfw" / "pairs.txt").read_text() == "something else\n"
    assert site.requests == []


def test_fetch_rejects_tampered_install(served, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"
    root = fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)
    (root / "lfw-deepfunneled/AJ_Cook/AJ_Cook_0001.jpg").write_bytes(b"tampered")

    with pytest.raises(DataError, match="AJ_Cook_0001.jpg"):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)


# ---------------------------------------------------------------------------------------------
# Server and network errors


@pytest.mark.parametrize(("name", "status"), [(ARCHIVE_NAME, 500), ("pairs.txt", 404)])
def test_fetch_reports_server_error(served, tmp_path, name, status):
    site, manifest = served
    site.status_overrides[name] = status

    with pytest.raises(DataError, match=f"{name} failed: HTTP {status}") as caught:
        fetch_lfw(tmp_path / "data", url=site.base_url, progress=False, manifest=manifest)

    assert "--url" in str(caught.value)


def test_fetch_reports_unreachable_server(lfw_files, tmp_path, monkeypatch):
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    manifest = _write_manifest(tmp_path / "manifest.sha256", lfw_files)
    # A port that was just free and is now closed, so the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"

    with pytest.raises(DataError, match="check the network"):
        fetch_lfw(tmp_path / "data", url=url, progress=False, manifest=manifest, timeout_s=5)


def test_fetch_rejects_non_http_url(tmp_path):
    with pytest.raises(DataError, match="only http:// and https://"):
        fetch_lfw(tmp_path, url="ftp://example.org/lfw/", progress=False)


# ---------------------------------------------------------------------------------------------
# Manifest, verification and defaults


def test_shipped_manifest_lists_lfw():
    manifest = load_manifest()
    images = [path for path in manifest.digests if path.startswith("lfw-deepfunneled/")]

    assert len(images) == 13233
    assert "pairs.txt" in manifest.digests
    assert manifest.is_required("people.txt")
    assert not manifest.is_required("lfw_counts.json")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("abc  pairs.txt", "invalid manifest line"),
        ("a" * 64, "invalid manifest line"),
        ("a" * 64 + "  ../pairs.txt", "unsafe path"),
        ("a" * 64 + "  /etc/passwd", "unsafe path"),
    ],
)
def test_manifest_rejects_bad_line(tmp_path, line, message):
    path = tmp_path / "bad.sha256"
    path.write_text("b" * 64 + "  people.txt\n" + line + "\n")

    with pytest.raises(DataError, match=f"bad.sha256:2: {message}"):
        load_manifest(path)


def test_manifest_rejects_duplicate(tmp_path):
    path = tmp_path / "dup.sha256"
    path.write_text("b" * 64 + "  people.txt\n" + "c" * 64 + " *people.txt\n")

    with pytest.raises(DataError, match="dup.sha256:2: duplicate"):
        load_manifest(path)


@needs_lfw
def test_verify_shared_lfw_sample():
    assert lfw_present(SHARED_LFW)
    # 10 protocol and metadata files are always hashed besides the sampled images.
    assert verify_lfw(SHARED_LFW, sample=20) == 20 + 10


def test_verify_reports_missing_file(tmp_path):
    assert not lfw_present(tmp_path)
    with pytest.raises(DataError, match="incomplete: 13235 files missing"):
        verify_lfw(tmp_path, sample=5)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"

    monkeypatch.delenv("VQBENCH_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "vqbench" / "data"


def test_resolve_urls():
    assert fetch._resolve_urls(None) == (
        "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz",
        "http://vis-www.cs.umass.edu/lfw/",
    )
    assert fetch._resolve_urls("https://mirror.example/lfw") == (
        "https://mirror.example/lfw/lfw-deepfunneled.tgz",
        "https://mirror.example/lfw/",
    )
    assert fetch._resolve_urls("https://mirror.example/x/deep.tar.gz") == (
        "https://mirror.example/x/deep.tar.gz",
        "https://mirror.example/x/",
    )


def test_fetch_rejects_unwritable_dest(served, tmp_path):
    site, manifest = served
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    with pytest.raises(DataError, match="pass a writable --dest"):
        fetch_lfw(blocker, url=site.base_url, progress=False, manifest=manifest)


def test_fetch_rejects_archive_lacking_files(served, lfw_files, tmp_path):
    site, manifest = served
    images = {name: data for name, data in lfw_files.items() if name.startswith("lfw-")}
    renamed = {name.replace("lfw-deepfunneled/", "lfw/"): data for name, data in images.items()}
    _write_archive(site.root / ARCHIVE_NAME, renamed)
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="the download lacks 11 files"):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert not (dest / ".lfw-download" / ARCHIVE_NAME).exists()
    assert not (dest / "lfw").exists()


# ---------------------------------------------------------------------------------------------
# Leftovers, locking and early checks


def _symlinked_folder_members() -> list[tarfile.TarInfo]:
    folder = tarfile.TarInfo("lfw-deepfunneled/zz")
    folder.type = tarfile.SYMTYPE
    folder.linkname = "/tmp"
    inside = tarfile.TarInfo("lfw-deepfunneled/zz/x.jpg")
    inside.size = 1
    return [folder, inside]


@pytest.mark.parametrize(
    "extra",
    [
        [_unsafe_member("../../evil.txt")],
        [_unsafe_member("lfw-deepfunneled/zz/link.jpg", tarfile.SYMTYPE)],
        _symlinked_folder_members(),
    ],
    ids=["parent-path", "symlink-member", "symlinked-folder"],
)
def test_fetch_deletes_rejected_archive(served, lfw_files, tmp_path, extra):
    site, manifest = served
    images = {name: data for name, data in lfw_files.items() if name.startswith("lfw-")}
    _write_archive(site.root / ARCHIVE_NAME, images, extra=extra)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="rejected and deleted"):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert not (dest / ".lfw-download" / ARCHIVE_NAME).exists()

    # A rerun against a good server downloads the archive again and installs.
    _write_archive(site.root / ARCHIVE_NAME, images)
    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert site.requested_names().count(ARCHIVE_NAME) == 2
    _assert_installed(dest, lfw_files)


@pytest.mark.parametrize("name", [ARCHIVE_NAME, "pairs.txt", "README.txt"])
def test_fetch_rejects_empty_body(served, tmp_path, name):
    site, manifest = served
    (site.root / name).write_bytes(b"")
    dest = tmp_path / "data"

    with pytest.raises(DataError, match=f"{name} returned an empty file") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "--url" in str(caught.value)
    assert not (dest / ".lfw-download" / name).exists()
    assert not (dest / ".lfw-download" / f"{name}.part").exists()


def test_fetch_checks_protocol_files_first(served, tmp_path):
    site, manifest = served
    (site.root / "people.txt").write_text("1\nSomeone\t1\n")
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="'people.txt'") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "it was deleted" in str(caught.value)
    assert ARCHIVE_NAME not in site.requested_names()
    assert not (dest / ".lfw-download" / "people.txt").exists()


def test_fetch_replaces_stale_protocol_file(served, lfw_files, tmp_path, caplog):
    site, manifest = served
    dest = tmp_path / "data"
    stale = dest / ".lfw-download" / "pairs.txt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    caplog.set_level(logging.WARNING, logger="vqbench.data.fetch")

    fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "from an earlier run does not match the manifest" in caplog.text
    assert site.requested_names().count("pairs.txt") == 1
    _assert_installed(dest, lfw_files)


def test_fetch_stops_while_locked(served, tmp_path):
    from filelock import FileLock

    site, manifest = served
    dest = tmp_path / "data"
    dest.mkdir()
    lock_path = dest / ".lfw-fetch.lock"

    with FileLock(lock_path):
        with pytest.raises(DataError, match="another fetch of LFW into .* is already running") as caught:
            fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert str(lock_path) in str(caught.value)
    assert site.requests == []
    assert not (dest / "lfw").exists()


def test_fetch_command_stops_while_locked(served, tmp_path):
    from filelock import FileLock
    from typer.testing import CliRunner

    from vqbench.cli import app

    site, _ = served
    dest = tmp_path / "data"
    dest.mkdir()
    lock_path = dest / ".lfw-fetch.lock"

    with FileLock(lock_path):
        result = CliRunner().invoke(app, ["data", "fetch", "lfw", "--dest", str(dest), "--url", site.base_url])

    assert result.exit_code == 2
    assert "is already running" in result.stderr
    assert str(lock_path) in result.stderr.replace("\n", "")
    assert site.requests == []


def test_fetch_rejects_unusable_lock_file(served, tmp_path):
    site, manifest = served
    dest = tmp_path / "data"
    (dest / ".lfw-fetch.lock").mkdir(parents=True)

    with pytest.raises(DataError, match="cannot create the lock file .*pass a writable --dest"):
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert site.requests == []


def test_fetch_reports_unwritable_staging(served, tmp_path, monkeypatch):
    site, manifest = served
    dest = tmp_path / "data"
    real_mkdir = Path.mkdir

    # Permission bits do not stop root, so a read-only file system is faked at mkdir.
    def mkdir_read_only(self: Path, *args: object, **kwargs: object) -> None:
        if self.name.startswith(".lfw-unpack-"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_read_only)

    with pytest.raises(DataError, match="cannot create the temporary folder") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    message = str(caught.value)
    assert str(dest / ".lfw-unpack-") in message
    assert "pass a writable --dest" in message
    assert (dest / ".lfw-download" / ARCHIVE_NAME).is_file()


@pytest.mark.parametrize("url", ["http://[::1", "http://", "http:///lfw/", "ftp://mirror.invalid/lfw/"])
def test_fetch_rejects_malformed_url(tmp_path, monkeypatch, url):
    def no_client(*args: object, **kwargs: object) -> None:
        pytest.fail(f"fetch_lfw opened an HTTP client for the invalid URL {url!r}")

    monkeypatch.setattr(fetch.httpx, "Client", no_client)

    with pytest.raises(DataError, match="invalid --url") as caught:
        fetch_lfw(tmp_path / "data", url=url, progress=False)

    message = str(caught.value)
    assert repr(url) in message
    assert "Pass the URL of a folder that contains" in message


def test_fetch_command_rejects_malformed_url(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vqbench.cli import app

    def no_client(*args: object, **kwargs: object) -> None:
        pytest.fail("the command opened an HTTP client for an invalid URL")

    monkeypatch.setattr(fetch.httpx, "Client", no_client)

    result = CliRunner().invoke(app, ["data", "fetch", "lfw", "--dest", str(tmp_path), "--url", "http://[::1"])

    assert result.exit_code == 2
    assert "invalid --url 'http://[::1'" in result.stderr


def test_resolve_urls_archive_name_in_host():
    # A host name that ends like an archive is a base URL, not an archive URL.
    assert fetch._resolve_urls("http://mirror.tgz") == (
        "http://mirror.tgz/lfw-deepfunneled.tgz",
        "http://mirror.tgz/",
    )


@pytest.mark.parametrize("kind", ["file", "dangling-symlink"])
def test_fetch_rejects_lfw_non_folder(served, tmp_path, kind):
    site, manifest = served
    dest = tmp_path / "data"
    dest.mkdir()
    if kind == "file":
        (dest / "lfw").write_text("not a folder\n")
    else:
        (dest / "lfw").symlink_to(tmp_path / "missing")

    with pytest.raises(DataError, match="lfw exists and is not a folder") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest)

    assert "pass another --dest" in str(caught.value)
    assert site.requests == []


def test_fetch_timeout_names_limit(served, tmp_path):
    site, manifest = served
    site.stalled.add(ARCHIVE_NAME)
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="timed out: the server sent no data for 0.5 s") as caught:
        fetch_lfw(dest, url=site.base_url, progress=False, manifest=manifest, timeout_s=0.5)

    assert "check the network" in str(caught.value)


def _closed_port_url() -> str:
    # A port that was just free and is now closed, so the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_fetch_error_without_blank_line(lfw_files, tmp_path, monkeypatch, capsys):
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    manifest = _write_manifest(tmp_path / "manifest.sha256", lfw_files)

    with pytest.raises(DataError, match="check the network"):
        fetch_lfw(tmp_path / "data", url=_closed_port_url(), progress=True, manifest=manifest, timeout_s=5)

    assert capsys.readouterr().err == ""


def test_fetch_command_error_first_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vqbench.cli import app

    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)

    result = CliRunner().invoke(app, ["data", "fetch", "lfw", "--dest", str(tmp_path), "--url", _closed_port_url()])

    assert result.exit_code == 2
    assert result.stderr.startswith("error: download of ")
