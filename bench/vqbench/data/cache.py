"""A content-addressed disk cache for aligned chips and embeddings.

Entries are NumPy ``.npy`` files named by the SHA-256 of their key. The key always includes
the input's content hash and the fingerprint of every model that produced the value, so a
changed image, model file or setting misses the cache instead of returning stale values. A
file that fails to load is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/vqbench/cache")
CACHE_DIR_ENV = "VQBENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """Return ``${VQBENCH_CACHE_DIR}``, else ``~/.cache/vqbench/cache``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE_DIR.expanduser()


def content_hash(data: bytes) -> str:
    """Return the hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


class ArrayCache:
    """Store NumPy arrays on disk under one namespace (``chips``, ``embeddings``, ...)."""

    def __init__(self, root: Path, namespace: str) -> None:
        self.folder = root / namespace
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.damaged = 0

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """Return the cached array for ``key``, or None if absent or unreadable."""
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            logger.warning("cache entry %s is damaged (%s); recomputing it", path, error)
            path.unlink(missing_ok=True)
            self.damaged += 1
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        """Store ``value`` atomically (temporary file, then rename)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, value, allow_pickle=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
