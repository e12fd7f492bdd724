"""The bearer token shared by ``vqbench serve``, ``vqbench loadtest`` and HTTP transport.

Its own module so that a warning about the file's permissions is logged under a name that
fits both the service and its clients.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from vqbench.errors import ScenarioError

logger = logging.getLogger(__name__)


def read_token_file(path: Path) -> str:
    """Read a bearer token from the first line of ``path``.

    Raises ScenarioError when the file is missing or empty; warns when other users can read it.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError as error:
        raise ScenarioError(f"token file not found: {path}; create it with one line holding the token") from error
    except OSError as error:
        raise ScenarioError(f"cannot read token file {path}: {error.strerror}; check its permissions") from error
    except UnicodeDecodeError as error:
        raise ScenarioError(f"token file {path} is not UTF-8 text; write the token on its first line as plain text") from error
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ScenarioError(f"token file {path} is empty; write the token on its first line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("token file %s can be read by other users; run chmod 600 on it", path)
    return token
