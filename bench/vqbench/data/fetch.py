"""Download, verify and install LFW deep-funneled from the official UMass site.

``fetch_lfw(dest)`` leaves the standard layout in ``dest/lfw``::

    dest/lfw/pairs.txt, people.txt, README.txt, lfw-names.txt, pairsDev*.txt, peopleDev*.txt
    dest/lfw/lfw-deepfunneled/NAME/NAME_0001.jpg

It works in five steps:

1. If ``dest/lfw`` exists and is not empty, verify it and return it, or raise when it does not
   verify or is not a folder. A fetch never overwrites files it cannot vouch for.
2. Lock ``dest/.lfw-fetch.lock``, so a second fetch into ``dest`` stops at once, and download
   the protocol files and then the archive into ``dest/.lfw-download/``. Each file grows as
   ``NAME.part`` and is renamed to ``NAME`` when complete, so an interrupted download resumes
   with an HTTP Range request on the next run. An empty download, or a protocol file that does
   not match the manifest, is deleted at once.
3. Unpack the archive into a temporary folder ``dest/.lfw-unpack-*``, rejecting and deleting
   the whole archive if any member is absolute, climbs out with ``..``, or is a link or special
   file. Members that the manifest does not list are skipped.
4. Check the SHA-256 of every file against ``lfw-manifest.sha256``, which ships in this
   package and lists paths relative to the LFW root in ``sha256sum`` format. The manifest
   also lists ``lfw_counts.json`` and ``LFW_SITE_DISCLAIMER_AND_CITATION.txt``, which are not
   on the official site, so they are checked only where a local copy contains them.
5. Rename the temporary folder to ``dest/lfw`` (atomic on one file system) and delete the
   downloads.

NOTE: the official site serves plain http:// only. The transport is not authenticated, so
the SHA-256 manifest is what makes a download trustworthy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx
from filelock import FileLock, Timeout
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vqbench.scenario import DATA_DIR_ENV, default_data_dir, url_problem  # noqa: F401  (re-exported)
from vqbench.errors import DataError

logger = logging.getLogger(__name__)

# NOTE: plain http because the UMass site offers no https; the manifest check covers integrity.
OFFICIAL_BASE_URL = "http://vis-www.cs.umass.edu/lfw/"
ARCHIVE_NAME = "lfw-deepfunneled.tgz"
IMAGE_DIR = "lfw-deepfunneled"
LFW_DIR = "lfw"
DOWNLOAD_DIR = ".lfw-download"
#: Lock file in ``dest`` that a fetch holds while it downloads and installs.
LOCK_NAME = ".lfw-fetch.lock"

# The fetch fails without these files. It downloads the optional ones too, but a mirror that
# lacks them (HTTP 404) only produces a warning.
REQUIRED_PROTOCOL_FILES = ("pairs.txt", "people.txt")
OPTIONAL_PROTOCOL_FILES = (
    "README.txt",
    "lfw-names.txt",
    "pairsDevTrain.txt",
    "pairsDevTest.txt",
    "peopleDevTrain.txt",
    "peopleDevTest.txt",
)

LFW_CITATION = (
    "LFW: G. B. Huang, M. Ramesh, T. Berg, E. Learned-Miller. Labeled Faces in the Wild: "
    "A Database for Studying Face Recognition in Unconstrained Environments. UMass Amherst "
    "Technical Report 07-49, 2007. Deep-funneled images: G. B. Huang, M. Mattar, H. Lee, "
    "E. Learned-Miller. Learning to Align from Scratch. NIPS 2012."
)

_CHUNK_BYTES = 1 << 16
_SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
#: Opening bytes of an HTML page (lower case, after whitespace and a UTF-8 byte order mark).
_HTML_STARTS = (b"<!doctype html", b"<html")
#: Bytes read from the start of a download to tell an HTML page from the expected file.
_SNIFF_BYTES = 512


@dataclass(frozen=True)
class Manifest:
    """Expected SHA-256 digests, keyed by path relative to the LFW root."""

    source: str
    digests: Mapping[str, str]

    def is_required(self, path: str) -> bool:
        """Return whether an install without ``path`` is incomplete."""
        return path.startswith(IMAGE_DIR + "/") or path in REQUIRED_PROTOCOL_FILES


# ---------------------------------------------------------------------------------------------
# Public API


def load_manifest(path: Path | None = None) -> Manifest:
    """Parse a ``sha256sum``-style manifest, by default the LFW manifest shipped in the package."""
    if path is None:
        source = "vqbench/data/lfw-manifest.sha256"
        text = resources.files("vqbench.data").joinpath("lfw-manifest.sha256").read_text("utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cannot read manifest {path}: {error}") from error
    return Manifest(source=source, digests=_parse_manifest(source, text))


def lfw_present(root: Path, manifest: Path | None = None) -> bool:
    """Return whether every required LFW file exists under ``root`` (the folder with pairs.txt).

    This checks existence only, not checksums; ``verify_lfw`` checks content.
    """
    expected = load_manifest(manifest)
    root = Path(root)
    return all(
        (root / path).is_file() for path in expected.digests if expected.is_required(path)
    )


def verify_lfw(root: Path, sample: int | None = None, manifest: Path | None = None) -> int:
    """Check LFW files under ``root`` against the manifest and return how many were hashed.

    With ``sample`` set, only that many images, drawn at random on each call, are hashed
    besides all protocol files. Optional protocol files are checked only when present.
    Raises DataError naming the first missing or mismatching file and the fix.
    """
    expected = load_manifest(manifest)
    root = Path(root)
    paths = _paths_to_verify(root, expected, sample)
    for path in paths:
        actual = _sha256_of_file(root / path)
        if actual != expected.digests[path]:
            raise DataError(
                f"{root / path} does not match the LFW manifest (SHA-256 {actual}, expected "
                f"{expected.digests[path]}); delete {root} and run `vqbench data fetch lfw`"
            )
    logger.info("verified %d LFW files under %s", len(paths), root)
    return len(paths)


def fetch_lfw(
    dest: Path,
    url: str | None = None,
    progress: bool = True,
    *,
    manifest: Path | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Download, verify and install LFW deep-funneled into ``dest/lfw`` and return that path.

    ``url`` replaces the official site. It may name a base URL that contains
    ``lfw-deepfunneled.tgz`` and the protocol files, or the archive itself, in which case the
    protocol files are fetched from the archive's folder. ``manifest`` replaces the shipped
    manifest (for tests and mirrors of other LFW variants).

    Raises DataError when ``url`` is invalid, another fetch into ``dest`` is running, a download
    fails, the archive contains an unsafe member, a file does not match the manifest, or
    ``dest/lfw`` is not a folder or already contains files that do not verify.
    """
    dest = Path(dest).expanduser()
    target = dest / LFW_DIR
    expected = load_manifest(manifest)
    archive_url, base_url = _resolve_urls(url)

    _reject_non_folder(target)
    if _is_non_empty_dir(target):
        return _reuse_existing(target, manifest)

    download_dir = dest / DOWNLOAD_DIR
    try:
        download_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {download_dir}: {error}; pass a writable --dest") from error

    with _fetch_lock(dest):
        # Another fetch may have installed LFW between the check above and the lock.
        if _is_non_empty_dir(target):
            return _reuse_existing(target, manifest)
        with _progress_bar(progress) as bar:
            with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
                protocol_files = _download_protocol_files(client, base_url, download_dir, expected, bar)
                archive = download_file(client, archive_url, download_dir / ARCHIVE_NAME, bar)
            _install(archive, protocol_files, dest, expected, bar)
        shutil.rmtree(download_dir, ignore_errors=True)

    logger.info("LFW installed in %s. Please cite: %s", target, LFW_CITATION)
    return target


def download_file(
    client: httpx.Client, url: str, target: Path, bar: Progress | None = None
) -> Path:
    """Download ``url`` to ``target`` through ``target.part``, resuming a partial file.

    A complete ``target`` from an earlier run is reused. A ``.part`` file is resumed with an
    HTTP Range request. If the server ignores the range, the download restarts from byte 0, and
    a ``.part`` larger than the server's size is discarded with a warning.
    Raises DataError on an HTTP error status, a network failure or a timeout, and keeps the
    ``.part`` file so the next run resumes it. Raises DataError and deletes the file when the
    server returns an empty body or an HTML page.
    """
    if target.is_file():
        logger.info("reusing downloaded %s", target)
        return target
    part = target.with_name(target.name + ".part")

    # Two rounds at most: the second starts from byte 0 after the first discarded the part.
    for _ in range(2):
        offset_bytes = part.stat().st_size if part.is_file() else 0
        try:
            complete = _download_round(client, url, part, offset_bytes, bar)
        except httpx.HTTPError as error:
            kept = (
                f" The partial file {part} is kept and the next run resumes it."
                if part.is_file() and part.stat().st_size > 0
                else ""
            )
            raise DataError(
                f"download of {url} failed: {_describe_http_error(client, error)}; check the "
                f"network or pass --url with a mirror.{kept}"
            ) from error
        except OSError as error:
            raise DataError(
                f"cannot write {part}: {error}; check free disk space and permissions, or "
                f"pass another --dest"
            ) from error
        if complete:
            part.replace(target)
            return target
    raise DataError(f"download of {url} could not restart from byte 0; delete {part} and retry")


# ---------------------------------------------------------------------------------------------
# Manifest and verification


def _parse_manifest(source: str, text: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not _SHA256_PATTERN.match(fields[0]):
            raise DataError(
                f"{source}:{line_number}: invalid manifest line {line!r}; expected "
                f"`<64 hex digits>  <relative path>` as written by sha256sum"
            )
        digest, path = fields[0].lower(), fields[1].strip().removeprefix("*")
        if _unsafe_relative_path(path):
            raise DataError(f"{source}:{line_number}: unsafe path {path!r} in the manifest")
        if path in digests:
            raise DataError(f"{source}:{line_number}: duplicate manifest entry for {path!r}")
        digests[path] = digest
    if not digests:
        raise DataError(f"manifest {source} lists no files")
    return digests


def _paths_to_verify(root: Path, expected: Manifest, sample: int | None) -> list[str]:
    images = [path for path in expected.digests if path.startswith(IMAGE_DIR + "/")]
    others = [path for path in expected.digests if not path.startswith(IMAGE_DIR + "/")]

    missing = [path for path in expected.digests if expected.is_required(path)]
    missing = [path for path in missing if not (root / path).is_file()]
    if missing:
        raise DataError(
            f"LFW under {root} is incomplete: {len(missing)} files missing, first "
            f"{root / missing[0]}; delete {root} and run `vqbench data fetch lfw`"
        )

    if sample is not None:
        if sample < 0:
            raise DataError(f"sample={sample} must be >= 0 (or None to check every image)")
        images = random.Random().sample(images, min(sample, len(images)))
    present_others = [path for path in others if (root / path).is_file()]
    return present_others + images


def _check_download(
    digests: Mapping[str, str], expected: Manifest, archive: Path, protocol_files: Mapping[str, Path]
) -> None:
    """Raise DataError unless ``digests`` cover the required files and all match the manifest.

    The downloads at fault are deleted, so the next run fetches them again instead of reusing
    them.
    """
    missing = [
        path for path in expected.digests if expected.is_required(path) and path not in digests
    ]
    if missing:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"the download lacks {len(missing)} files that the manifest {expected.source} "
            f"lists, first {missing[0]!r}, so {archive.name} was deleted; check that --url "
            f"serves {ARCHIVE_NAME}, {' and '.join(REQUIRED_PROTOCOL_FILES)} of LFW deep-funneled"
        )

    mismatched = [path for path, digest in digests.items() if digest != expected.digests[path]]
    if mismatched:
        culprits = {protocol_files.get(path, archive) for path in mismatched}
        for culprit in culprits:
            culprit.unlink(missing_ok=True)
        first = mismatched[0]
        raise DataError(
            f"{len(mismatched)} downloaded files do not match the manifest {expected.source}, "
            f"first {first!r} (SHA-256 {digests[first]}, expected {expected.digests[first]}). "
            f"The downloads {', '.join(sorted(path.name for path in culprits))} were deleted; "
            f"run the fetch again. If the mismatch repeats, the server's copy differs from the "
            f"one the manifest was made from"
        )


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reuse_existing(target: Path, manifest: Path | None) -> Path:
    try:
        verify_lfw(target, manifest=manifest)
    except DataError as error:
        raise DataError(
            f"{target} exists and does not verify ({error}). Delete {target} or pass another "
            f"--dest; the fetch never overwrites files it cannot verify"
        ) from error
    logger.info("LFW already installed and verified in %s", target)
    return target


# ---------------------------------------------------------------------------------------------
# Downloads


def _resolve_urls(url: str | None) -> tuple[str, str]:
    """Return (archive URL, base URL of the protocol files) for a base or archive URL.

    Raises DataError, before any request, when ``url`` is not an http:// or https:// URL
    with a host.
    """
    if url is None:
        return OFFICIAL_BASE_URL + ARCHIVE_NAME, OFFICIAL_BASE_URL
    problem = url_problem(url)
    if problem:
        raise DataError(
            f"invalid --url {url!r}: {problem}. Pass the URL of a folder that contains "
            f"{ARCHIVE_NAME}, or of the archive itself. The fetch supports only http:// and "
            f"https:// URLs; for a local copy, unpack it yourself and point the scenario at it"
        )
    if urlsplit(url).path.endswith(_ARCHIVE_SUFFIXES):
        return url, url.rsplit("/", 1)[0] + "/"
    base_url = url if url.endswith("/") else url + "/"
    return base_url + ARCHIVE_NAME, base_url


def _download_protocol_files(
    client: httpx.Client,
    base_url: str,
    download_dir: Path,
    expected: Manifest,
    bar: Progress | None,
) -> dict[str, Path]:
    """Download the protocol files and check each against the manifest before the archive.

    The files are small, so a wrong mirror is found before the archive's download.
    """
    files: dict[str, Path] = {}
    for name in REQUIRED_PROTOCOL_FILES:
        files[name] = _download_protocol_file(client, base_url + name, download_dir / name, expected, bar)
    for name in OPTIONAL_PROTOCOL_FILES:
        try:
            files[name] = _download_protocol_file(client, base_url + name, download_dir / name, expected, bar)
        except _NotFound:
            logger.warning("optional LFW file %s is not on the server (HTTP 404)", base_url + name)
    return files


def _download_protocol_file(
    client: httpx.Client, url: str, target: Path, expected: Manifest, bar: Progress | None
) -> Path:
    """Download ``url`` to ``target`` and raise DataError unless it matches the manifest.

    A complete file from an earlier run that does not match is downloaded once more.
    """
    reused = target.is_file()
    path = download_file(client, url, target, bar)
    if reused and not _matches_manifest(path, expected):
        logger.warning("%s from an earlier run does not match the manifest; downloading it again", path)
        path.unlink()
        path = download_file(client, url, target, bar)
    _check_protocol_file(url, path, expected)
    return path


def _matches_manifest(path: Path, expected: Manifest) -> bool:
    """Return whether ``path`` matches the manifest entry of its name, or has no entry."""
    digest = expected.digests.get(path.name)
    return digest is None or _sha256_of_file(path) == digest


def _check_protocol_file(url: str, path: Path, expected: Manifest) -> None:
    """Delete ``path`` and raise DataError when the manifest lists it with another SHA-256."""
    if _matches_manifest(path, expected):
        return
    name = path.name
    actual = _sha256_of_file(path)
    path.unlink(missing_ok=True)
    raise DataError(
        f"the download of {url} does not match the manifest {expected.source} for {name!r} "
        f"(SHA-256 {actual}, expected {expected.digests[name]}), so it was deleted; run the "
        f"fetch again. If the mismatch repeats, the server's copy differs from the one the "
        f"manifest was made from, so pass --url with another mirror"
    )


def _describe_http_error(client: httpx.Client, error: httpx.HTTPError) -> str:
    """Describe ``error`` in one phrase that names the limit of a read or connect timeout."""
    # httpx raises these only for a limit that is set, so the limit is a number here.
    if isinstance(error, httpx.ReadTimeout):
        return f"timed out: the server sent no data for {client.timeout.read:g} s"
    if isinstance(error, httpx.ConnectTimeout):
        return f"timed out: no connection within {client.timeout.connect:g} s"
    return str(error)


class _NotFound(DataError):
    """The server returned HTTP 404 for a download."""


def _download_round(
    client: httpx.Client, url: str, part: Path, offset_bytes: int, bar: Progress | None
) -> bool:
    """Fetch ``url`` into ``part`` from ``offset_bytes``; return False when the part was discarded."""
    headers = {"Accept-Encoding": "identity"}
    if offset_bytes:
        headers["Range"] = f"bytes={offset_bytes}-"

    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:
            return _settle_unsatisfiable_range(url, part, offset_bytes, response)
        if response.status_code == 206:
            start_bytes, total_bytes = _parse_content_range(url, response)
            if start_bytes != offset_bytes:
                return _discard_part(part, f"the server resumed at byte {start_bytes}")
            mode = "ab"
        elif response.status_code == 200:
            total_bytes = _content_length(response)
            if offset_bytes and total_bytes is not None and offset_bytes > total_bytes:
                logger.warning(
                    "discarding partial download %s because it contains %d bytes but the "
                    "server's file has %d; restarting",
                    part,
                    offset_bytes,
                    total_bytes,
                )
            elif offset_bytes:
                logger.info("%s ignores Range requests; restarting from byte 0", url)
            offset_bytes, mode = 0, "wb"
        else:
            _raise_for_status(url, response)

        _write_body(response, part, mode, offset_bytes, total_bytes, bar, url)
        _reject_html_page(url, part, response.headers.get("content-type", ""))

    size_bytes = part.stat().st_size
    if total_bytes is not None and size_bytes != total_bytes:
        raise DataError(
            f"download of {url} stopped at {size_bytes} of {total_bytes} bytes; run the fetch "
            f"again to resume from {part}"
        )
    if size_bytes == 0:
        part.unlink(missing_ok=True)
        raise DataError(
            f"download of {url} returned an empty file (HTTP {response.status_code} with no "
            f"body), and nothing was kept. Check the URL (--url) or the mirror, or try again later"
        )
    return True


def _settle_unsatisfiable_range(
    url: str, part: Path, offset_bytes: int, response: httpx.Response
) -> bool:
    # HTTP 416 carries `Content-Range: bytes */TOTAL`: equal sizes mean the part is complete.
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("content-range", "").strip())
    if match and int(match.group(1)) == offset_bytes:
        logger.info("%s was already complete", part)
        return True
    total = match.group(1) if match else "unknown"
    return _discard_part(
        part, f"it contains {offset_bytes} bytes but the server's file has {total} bytes ({url})"
    )


def _discard_part(part: Path, reason: str) -> bool:
    logger.warning("discarding partial download %s because %s; restarting", part, reason)
    part.unlink(missing_ok=True)
    return False


def _parse_content_range(url: str, response: httpx.Response) -> tuple[int, int | None]:
    header = response.headers.get("content-range", "")
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", header.strip())
    if not match:
        raise DataError(
            f"download of {url} failed: HTTP 206 with invalid Content-Range {header!r}; "
            f"delete the .part file to download without resuming"
        )
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _raise_for_status(url: str, response: httpx.Response) -> None:
    message = (
        f"download of {url} failed: HTTP {response.status_code} {response.reason_phrase}; "
        f"check the URL (--url) or try again later"
    )
    if response.status_code == 404:
        raise _NotFound(message)
    raise DataError(message)


def _looks_like_html(head: bytes, content_type: str = "") -> bool:
    """True when a download that starts with ``head`` is an HTML page rather than the file requested.

    It is one when it starts with ``<!doctype html`` or ``<html``, or when the server labels it
    ``text/html`` and it starts with a tag. A gzip archive or a text file that a server
    mislabels as ``text/html`` starts otherwise and passes.
    """
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if start.startswith(_HTML_STARTS):
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "text/html" and start.startswith(b"<")


def _reject_html_page(url: str, part: Path, content_type: str) -> None:
    """Delete ``part`` and raise DataError when the server sent an HTML page instead of the file.

    Servers and captive portals often return an error or login page with HTTP 200 for a wrong
    URL. Without this check, that page would fail later as an unreadable archive or a checksum
    mismatch.
    """
    with part.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if not _looks_like_html(head, content_type):
        return
    part.unlink(missing_ok=True)
    if "html" in content_type.lower():
        label = f"Content-Type {content_type}"
    else:
        label = f"its content starts like HTML, although its Content-Type is {content_type or 'missing'}"
    expected = url.rsplit("/", 1)[-1] or url
    raise DataError(
        f"download of {url} returned an HTML page ({label}) instead of {expected}, usually an error or "
        f"login page, and it was deleted. Check the URL (--url) or the mirror, for example by opening it in a browser"
    )


def _write_body(
    response: httpx.Response,
    part: Path,
    mode: str,
    offset_bytes: int,
    total_bytes: int | None,
    bar: Progress | None,
    url: str,
) -> None:
    task = _add_task(bar, url.rsplit("/", 1)[-1], total_bytes, offset_bytes)
    with part.open(mode) as handle:
        # iter_raw keeps the bytes as served, so offsets stay valid for Range requests.
        for chunk in response.iter_raw(_CHUNK_BYTES):
            handle.write(chunk)
            if bar is not None and task is not None:
                bar.advance(task, len(chunk))


# ---------------------------------------------------------------------------------------------
# Unpacking and installing


def _install(
    archive: Path, protocol_files: Mapping[str, Path], dest: Path, expected: Manifest, bar: Progress | None
) -> None:
    """Build the install in a temporary folder in ``dest`` and rename it to ``dest/lfw``."""
    staging = _make_staging_dir(dest)
    try:
        _build_install(archive, protocol_files, staging, expected, bar)
        _move_into_place(staging, dest / LFW_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_install(
    archive: Path,
    protocol_files: Mapping[str, Path],
    staging: Path,
    expected: Manifest,
    bar: Progress | None,
) -> None:
    """Unpack and copy everything into ``staging`` and check it against the manifest."""
    digests = _unpack_archive(archive, staging, expected, bar)
    try:
        for name, path in protocol_files.items():
            if name in expected.digests:
                shutil.copyfile(path, staging / name)
                digests[name] = _sha256_of_file(path)
    except OSError as error:
        raise DataError(
            f"cannot copy the protocol files into {staging}: {error}; check free disk space "
            f"and permissions, or pass another --dest"
        ) from error
    _check_download(digests, expected, archive, protocol_files)


def _unpack_archive(
    archive: Path, staging: Path, expected: Manifest, bar: Progress | None
) -> dict[str, str]:
    """Extract the manifest's members of ``archive`` into ``staging``; return their SHA-256.

    Deletes ``archive`` when it is unreadable or contains an unsafe member, so the next run
    downloads it again instead of reusing it.
    """
    digests: dict[str, str] = {}
    skipped = 0
    task = _add_task(bar, "unpack", archive.stat().st_size)
    try:
        # Streaming mode reads the archive once. Each member is checked before it is written.
        with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                try:
                    name = _safe_member_name(archive, member)
                except DataError:
                    archive.unlink(missing_ok=True)
                    raise
                if member.isdir():
                    continue
                if name not in expected.digests:
                    skipped += 1
                    continue
                digests[name] = _extract_member(tar, member, staging / name)
                if bar is not None and task is not None:
                    bar.update(task, completed=raw.tell())
    except (tarfile.TarError, EOFError, zlib.error) as error:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"{archive} is not a readable tar archive ({error}); it was deleted, run the "
            f"fetch again to download it afresh"
        ) from error
    except OSError as error:
        raise DataError(
            f"cannot unpack {archive} into {staging}: {error}; check free disk space and "
            f"permissions, or pass another --dest"
        ) from error
    if skipped:
        logger.warning("skipped %d archive members that the manifest does not list", skipped)
    return digests


def _safe_member_name(archive: Path, member: tarfile.TarInfo) -> str:
    name = member.name.removeprefix("./")
    if _unsafe_relative_path(name):
        raise DataError(
            f"{archive} contains the unsafe member path {member.name!r} (absolute or with "
            f"'..'); the archive was rejected and deleted. Download it from the official site "
            f"or a trusted mirror"
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive} contains {member.name!r}, which is a link or special file; the "
            f"archive was rejected and deleted. Download it from the official site or a "
            f"trusted mirror"
        )
    return name


def _unsafe_relative_path(path: str) -> bool:
    pure = PurePosixPath(path)
    return not path or pure.is_absolute() or ".." in pure.parts or "\\" in path


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    source = tar.extractfile(member)
    if source is None:
        raise DataError(f"cannot read archive member {member.name!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with source, target.open("wb") as handle:
        return _copy_and_hash(source, handle)


def _copy_and_hash(source: BinaryIO, handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: source.read(_CHUNK_BYTES), b""):
        digest.update(chunk)
        handle.write(chunk)
    return digest.hexdigest()


def _make_staging_dir(dest: Path) -> Path:
    # NOTE: a fetch killed during unpacking leaves this folder behind. A later fetch keeps it,
    # because it may belong to a fetch that is still running.
    staging = dest / f".lfw-unpack-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as error:
        raise DataError(
            f"cannot create the temporary folder {staging} for unpacking: {error}; pass a "
            f"writable --dest. The downloads in {dest / DOWNLOAD_DIR} are kept for the next run"
        ) from error
    return staging


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        if target.is_dir():
            target.rmdir()  # empty, because a non-empty target returned or raised earlier
        os.rename(staging, target)
    except OSError as error:
        raise DataError(
            f"cannot move the verified files from {staging} to {target}: {error}; delete "
            f"{target} if another fetch left it half-made, and run the fetch again"
        ) from error


def _is_non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _reject_non_folder(target: Path) -> None:
    """Raise DataError, before any download, when ``target`` exists and is not a folder."""
    if os.path.lexists(target) and not target.is_dir():
        raise DataError(
            f"{target} exists and is not a folder, so LFW cannot be installed there; move or "
            f"delete it, or pass another --dest"
        )


@contextlib.contextmanager
def _fetch_lock(dest: Path) -> Iterator[None]:
    """Hold the lock file ``dest/.lfw-fetch.lock`` for the block.

    Raises DataError at once when another process holds it, because two fetches into one
    folder would write the same ``.part`` files. The operating system releases the lock when
    its process ends, even when it is killed. The file stays, because deleting a lock file
    would let two processes lock different files of one name.
    """
    lock_path = dest / LOCK_NAME
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DataError(
            f"another fetch of LFW into {dest} is already running (lock file {lock_path}); "
            f"wait for it to finish, or pass another --dest"
        ) from None
    except OSError as error:
        raise DataError(f"cannot create the lock file {lock_path}: {error}; pass a writable --dest") from error
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """Yield a progress display that starts with its first task (see ``_add_task``)."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=Console(stderr=True), transient=False)
    try:
        yield bar
    finally:
        # Progress.stop would print an empty line on a console that is not a terminal, even
        # when the display never started, so only the live display is stopped.
        bar.live.stop()


def _add_task(bar: Progress | None, description: str, total: int | None, completed: int = 0) -> TaskID | None:
    """Add a task to ``bar``, starting the display first if needed.

    A display that started before its first task, as when the first request fails, would
    leave an empty line above the error message.
    """
    if bar is None:
        return None
    bar.start()
    return bar.add_task(description, total=total, completed=completed)
