"""The bearer token shared by ``vqbench serve``, ``vqbench loadtest`` and HTTP transport.

Its own module so that a warning about the file's permissions is logged under a name that
fits both the service and its clients.
"""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

from vqbench.errors import ScenarioError

logger = logging.getLogger(__name__)


#: Characters a token may contain: printable ASCII without spaces, which every HTTP client can
#: send in an ``Authorization: Bearer`` header unchanged.
_TOKEN_PATTERN = re.compile(r"^[!-~]+$")

#: Maximum token length, in characters. The HTTP server reads a request's headers in a 16 KiB buffer (h11's
#: default), so a much longer token would make every request fail; 1024 leaves room to spare.
MAX_TOKEN_CHARACTERS = 1024


def read_token_file(path: Path) -> str:
    """Read a bearer token from the first line of ``path``.

    A UTF-8 byte order mark, as some editors write, is ignored. Raises ScenarioError when the
    file is missing, a folder or empty, or when the token is longer than MAX_TOKEN_CHARACTERS or
    contains characters other than printable ASCII. Warns when other users can read the file.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
        mode = path.stat().st_mode
    except FileNotFoundError as error:
        raise ScenarioError(f"token file not found: {path}; create it with one line holding the token") from error
    except IsADirectoryError as error:
        raise ScenarioError(f"token file {path} is a folder; pass the file that contains the token") from error
    except OSError as error:
        raise ScenarioError(f"cannot read token file {path}: {error.strerror}; check its permissions") from error
    except UnicodeDecodeError as error:
        raise ScenarioError(f"token file {path} is not UTF-8 text; write the token on its first line as plain text") from error
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ScenarioError(f"token file {path} is empty; write the token on its first line")
    if len(token) > MAX_TOKEN_CHARACTERS:
        raise ScenarioError(
            f"the token in {path} has {len(token)} characters, more than the {MAX_TOKEN_CHARACTERS} that fit in a "
            "request header; write a shorter token, such as the output of `openssl rand -hex 32`"
        )
    if not _TOKEN_PATTERN.match(token):
        position = next(index for index, char in enumerate(token) if not "!" <= char <= "~")
        raise ScenarioError(
            f"the token in {path} contains {token[position]!r} at character {position + 1}, which an HTTP header "
            "cannot carry unchanged; write a token of printable ASCII characters without spaces, such as the "
            "output of `openssl rand -hex 32`"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("token file %s can be read by other users; run chmod 600 on it", path)
    return token
