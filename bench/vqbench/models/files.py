"""Locate dlib's model files shipped by the ``face_recognition_models`` package.

That package's ``__init__`` imports ``pkg_resources``, which recent setuptools no longer
provides, so the files are found through the import system's spec without importing it.
``VQBENCH_DLIB_MODELS_DIR`` points at another folder holding the same file names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from vqbench.errors import ModelError

RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"

MODELS_DIR_ENV = "VQBENCH_DLIB_MODELS_DIR"


def dlib_models_dir() -> Path:
    """Return the folder that contains dlib's ``.dat`` model files."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the package face_recognition_models is not installed; "
            f"run `pip install face_recognition_models` or set {MODELS_DIR_ENV} to a folder "
            f"holding {RECOGNITION_MODEL}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def dlib_model_path(file_name: str) -> Path:
    """Return the path of one of dlib's model files, raising ModelError if it is missing."""
    path = dlib_models_dir() / file_name
    if not path.is_file():
        raise ModelError(
            f"dlib model file not found: {path}; reinstall face_recognition_models "
            f"or set {MODELS_DIR_ENV} to a folder that holds {file_name}"
        )
    return path


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
