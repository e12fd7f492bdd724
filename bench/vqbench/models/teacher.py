"""The teacher: dlib's ResNet face descriptor (128-d, 150x150 chips), run by dlib itself.

This is the reference runtime. ``vqbench.models.teacher_torch`` and ``teacher_onnx`` hold the
PyTorch and onnxruntime ports of the same network; every teacher exposes ``embed(chips)``.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from vqbench.models.files import RECOGNITION_MODEL, dlib_model_path, sha256_file

EMBEDDING_DIM = 128
CHIP_SIZE_PX = 150


class Teacher(Protocol):
    """Anything that maps aligned 150x150 RGB chips to 128-d face embeddings."""

    name: str
    runtime: str
    fingerprint: str
    model_bytes: int
    params: int
    macs: int

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Map uint8 chips of shape (N, 150, 150, 3) to float32 embeddings (N, 128)."""
        ...


class DlibTeacher:
    """dlib's ``face_recognition_model_v1`` on the CPU."""

    name = "dlib-resnet-v1"
    runtime = "dlib"

    def __init__(self, batch_size: int = 32) -> None:
        import dlib

        self.batch_size = batch_size
        self.model_path: Path = dlib_model_path(RECOGNITION_MODEL)
        self._model = dlib.face_recognition_model_v1(str(self.model_path))
        self.model_sha256 = sha256_file(self.model_path)
        self.fingerprint = hashlib.sha256(f"{self.model_sha256}|dlib|{dlib.__version__}".encode()).hexdigest()
        self.model_bytes = self.model_path.stat().st_size

    @cached_property
    def params(self) -> int:
        """Parameters counted from the layers in dlib's model file."""
        from vqbench.models.dlib_format import read_dlib_resnet

        return read_dlib_resnet(self.model_path).param_count

    @cached_property
    def macs(self) -> int:
        """Multiply-accumulates per chip, counted on the graph of the verified PyTorch port."""
        from vqbench.models.graph_stats import count_macs
        from vqbench.models.teacher_torch import load_torch_teacher

        return count_macs(load_torch_teacher(), (1, 3, CHIP_SIZE_PX, CHIP_SIZE_PX))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Embed chips in batches of ``batch_size`` (dlib's batched descriptor call)."""
        chips = np.ascontiguousarray(chips, dtype=np.uint8)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE_PX, CHIP_SIZE_PX, 3):
            raise ValueError(f"expected chips of shape (N, 150, 150, 3), got {chips.shape}")
        out = np.empty((len(chips), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(chips), self.batch_size):
            batch = [chip for chip in chips[start : start + self.batch_size]]
            descriptors = self._model.compute_face_descriptor(batch)
            out[start : start + len(batch)] = np.asarray([np.asarray(d) for d in descriptors], dtype=np.float32)
        return out


def create_teacher(runtime: str = "dlib", batch_size: int = 32) -> Teacher:
    """Build the teacher for a runtime: ``dlib``, ``torch`` or ``onnxruntime``."""
    if runtime == "dlib":
        return DlibTeacher(batch_size=batch_size)
    if runtime == "torch":
        from vqbench.models.teacher_onnx import TorchTeacher

        return TorchTeacher(batch_size=batch_size)
    if runtime == "onnxruntime":
        from vqbench.models.teacher_onnx import OnnxTeacher

        return OnnxTeacher(batch_size=batch_size)
    from vqbench.errors import ScenarioError

    raise ScenarioError(f"unknown teacher runtime {runtime!r}; use one of dlib, torch, onnxruntime")
