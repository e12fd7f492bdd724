"""Atomic file writes: a temporary file in the same folder, then a rename.

A reader never sees a half-written results file, and an interrupted run leaves the previous
version of each file in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Call ``writer`` on a temporary binary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            writer(stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates files readable by the owner only; give results the usual permissions.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_path_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` with a temporary path beside ``path``, then rename that file onto ``path``.

    For writers that take a file name rather than a stream (matplotlib's PdfPages, say).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_atomic(path, lambda stream: stream.write(text.encode("utf-8")))


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON (indented, UTF-8) atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
