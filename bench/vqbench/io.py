"""Atomic file writes: a temporary file in the same folder, then a rename.

A reader never sees a half-written results file, and an interrupted run leaves the previous
version of each file in place. Streams such as ``/dev/stdout`` or a FIFO are appended to
directly, since a rename would replace them.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Call ``writer`` on a temporary binary file beside ``path``, then rename it to ``path``.

    A symbolic link is followed, so the file it points to is replaced and the link stays. A
    stream path is appended to instead: a device, FIFO or socket, and any path under ``/dev`` or
    ``/proc``, such as ``/dev/stdout``. A rename would replace the device or pipe itself, or an
    output file the shell opened for the process, and appending keeps what the shell wrote
    there before. An OSError about the temporary file (the folder is not writable, ``path`` is a
    folder) is raised naming ``path`` instead, so that a message shows the path the caller gave.
    """
    path = Path(path)
    if _is_stream(path):
        with path.open("ab") as stream:
            writer(stream)
        return path
    path = _follow_links(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _make_temporary(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            writer(stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates files readable by the owner only; give results the usual permissions.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            _raise_naming_target(error, path)
        raise
    return path


def write_path_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` with a temporary path beside ``path``, then rename that file onto ``path``.

    For writers that take a file name rather than a stream (matplotlib's PdfPages, say). Errors
    about the temporary file name ``path``, as in ``write_atomic``.
    """
    path = _follow_links(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = _make_temporary(path)
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except OSError as error:
        _raise_naming_target(error, path)
        raise
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _follow_links(path: Path) -> Path:
    """Return the path that a symbolic link at ``path`` leads to, or ``path`` when it is no link."""
    if not path.is_symlink():
        return path
    # realpath also resolves a dangling link, to the file that writing would create.
    return Path(os.path.realpath(path))


#: Folders whose entries are the kernel's views of open files and devices, not files to replace.
_STREAM_FOLDERS = (Path("/dev"), Path("/proc"))


def _is_stream(path: Path) -> bool:
    """Return whether ``path`` is a stream to append to: a device, FIFO or socket, or a path under /dev or /proc.

    ``/dev/stdout`` links to ``/proc/self/fd/1``, whose target is a pipe or the file the shell
    redirected to, so the path itself, not its resolved target, decides.
    """
    absolute = Path(os.path.abspath(path))
    if any(absolute.is_relative_to(folder) for folder in _STREAM_FOLDERS):
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _make_temporary(path: Path) -> tuple[int, str]:
    """Create the temporary file beside ``path``: ``.NAME.<random>.tmp`` in the same folder."""
    try:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        _raise_naming_target(error, path)
        raise


def _is_temporary_of(filename: object, path: Path) -> bool:
    """Return whether ``filename`` is a temporary file that ``_make_temporary`` creates for ``path``."""
    if not isinstance(filename, (str, os.PathLike)):
        return False
    # mkstemp returns an absolute name even for a relative folder, so compare absolute folders.
    candidate = Path(os.path.abspath(filename))
    return (candidate.parent == Path(os.path.abspath(path)).parent and candidate.name.startswith(f".{path.name}.")
            and candidate.name.endswith(".tmp"))


def _raise_naming_target(error: OSError, path: Path) -> None:
    """Raise ``error`` again with ``path`` as its file name when it names the temporary file.

    The user never gave the temporary file's name, so an error naming it cannot be acted on.
    ``OSError(errno, ...)`` returns the subclass for the error number, such as IsADirectoryError.
    """
    if _is_temporary_of(error.filename, path):
        raise OSError(error.errno, error.strerror, str(path)) from error


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
