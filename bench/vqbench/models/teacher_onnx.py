"""The ported teacher under PyTorch and onnxruntime, behind the same ``embed`` interface as dlib.

Both teachers here take what ``DlibTeacher.embed`` takes: uint8 chips of shape
(N, 150, 150, 3), RGB, as ``dlib.get_face_chip`` returns them. They return float32 (N, 128)
raw descriptors, as dlib does. The ONNX graph has the PyTorch module's input contract:
``chips``, float32 (N, 3, 150, 150) on the 0..255 scale, with a dynamic batch axis, and output
``embeddings`` (N, 128).

The ONNX file is exported on first use with PyTorch's ``torch.export``-based exporter and cached
next to the converted weights (see ``vqbench.models.teacher_torch``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqbench.errors import ModelError
from vqbench.models.graph_stats import count_macs, count_params
from vqbench.models.teacher_torch import TEACHER_DAT_SHA256, default_model_cache_dir, load_torch_teacher

logger = logging.getLogger(__name__)

TEACHER_NAME = "dlib-resnet-v1"
CHIP_SIZE_PX = 150
EMBEDDING_DIM = 128
ONNX_OPSET = 18
ONNX_INPUT_NAME = "chips"
ONNX_OUTPUT_NAME = "embeddings"


def chips_to_tensor(chips: np.ndarray) -> np.ndarray:
    """Convert uint8 chips (N, 150, 150, 3) to the ported model's float32 (N, 3, 150, 150) input."""
    chips = np.asarray(chips)
    if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE_PX, CHIP_SIZE_PX, 3):
        raise ValueError(
            f"expected uint8 chips of shape (N, {CHIP_SIZE_PX}, {CHIP_SIZE_PX}, 3), got {chips.dtype} {chips.shape}; "
            "pass the RGB chips that dlib.get_face_chip returns"
        )
    return np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32)


def _batches(chips: np.ndarray, batch_size: int):
    for start in range(0, len(chips), batch_size):
        yield start, chips[start : start + batch_size]


def onnx_cache_path(cache_dir: Path | None = None, opset: int = ONNX_OPSET) -> Path:
    """Return the file that caches the exported ONNX teacher."""
    return Path(cache_dir or default_model_cache_dir()) / f"teacher-{TEACHER_DAT_SHA256[:12]}-opset{opset}.onnx"


def _export(model: nn.Module, path: str, opset: int) -> None:
    sample = torch.zeros(2, 3, CHIP_SIZE_PX, CHIP_SIZE_PX)
    # Without torchvision, the exporter logs one warning per torchvision operator it cannot
    # register. The teacher uses none of those operators, so the warnings are silenced.
    registration_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_logger.level
    registration_logger.setLevel(logging.ERROR)
    try:
        _export_quietly(model, sample, path, opset)
    finally:
        registration_logger.setLevel(level)


def _export_quietly(model: nn.Module, sample: torch.Tensor, path: str, opset: int) -> None:
    with warnings.catch_warnings():
        # torch 2.13's exporter trips its own pytree deprecation warning (LeafSpec); it is harmless.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(
            model,
            (sample,),
            path,
            input_names=[ONNX_INPUT_NAME],
            output_names=[ONNX_OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def export_teacher_onnx(path: Path, model: nn.Module | None = None, opset: int = ONNX_OPSET) -> Path:
    """Export the ported teacher to an ONNX file with a dynamic batch axis and return its path.

    ``model`` defaults to ``load_torch_teacher()``. The file is written next to ``path`` first and
    then moved into place, so a failed export leaves no partial file.
    """
    import onnx

    model = (model or load_torch_teacher()).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        _export(model, temporary, opset)
        onnx.checker.check_model(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    logger.info("exported the teacher to %s (opset %d)", path, opset)
    return path


def _fingerprint(runtime: str, version: str) -> str:
    return hashlib.sha256(f"{TEACHER_DAT_SHA256}|{runtime}|{version}".encode()).hexdigest()


class TorchTeacher:
    """The PyTorch port of dlib's ResNet on the CPU (or another torch device)."""

    name = TEACHER_NAME
    runtime = "torch"

    def __init__(self, cache_dir: Path | None = None, batch_size: int = 32, device: str = "cpu") -> None:
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model = load_torch_teacher(cache_dir).to(self.device)
        self.fingerprint = _fingerprint(self.runtime, torch.__version__)

    @property
    def model_bytes(self) -> int:
        """Bytes of the float32 parameters and buffers held in memory."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @cached_property
    def params(self) -> int:
        """Trained values in the network."""
        return count_params(self.model)

    @cached_property
    def macs(self) -> int:
        """Multiply-accumulates per chip (convolutions and fc, see ``graph_stats``)."""
        return count_macs(self.model, (1, 3, CHIP_SIZE_PX, CHIP_SIZE_PX))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Map uint8 chips (N, 150, 150, 3) to float32 descriptors (N, 128), in batches."""
        inputs = chips_to_tensor(chips)
        out = np.empty((len(inputs), EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            for start, batch in _batches(inputs, self.batch_size):
                result = self.model(torch.from_numpy(batch).to(self.device))
                out[start : start + len(batch)] = result.cpu().numpy()
        return out


class OnnxTeacher:
    """The exported ONNX port of dlib's ResNet under onnxruntime.

    ``model_path`` defaults to the cached export, which is made on first use and made again if
    onnxruntime cannot load it. An explicit ``model_path`` that does not load raises ModelError.
    ``threads`` sets onnxruntime's intra-op thread count (None: onnxruntime's default).
    """

    name = TEACHER_NAME
    runtime = "onnxruntime"

    def __init__(
        self,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime

        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._options = onnxruntime.SessionOptions()
        if threads is not None:
            self._options.intra_op_num_threads = threads
            self._options.inter_op_num_threads = 1
        self._providers = providers or ["CPUExecutionProvider"]
        if model_path is not None:
            self.model_path = Path(model_path)
            self._session = self._open(self.model_path)
        else:
            self.model_path = onnx_cache_path(cache_dir)
            self._session = self._open_cached()
        self.fingerprint = _fingerprint(self.runtime, onnxruntime.__version__)

    def _open(self, path: Path):
        import onnxruntime
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

        try:
            return onnxruntime.InferenceSession(str(path), self._options, providers=self._providers)
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as error:
            raise ModelError(
                f"onnxruntime cannot load {path}: {error}; export it again with export_teacher_onnx"
            ) from error

    def _open_cached(self):
        if self.model_path.is_file():
            try:
                return self._open(self.model_path)
            except ModelError as error:
                logger.warning("cached ONNX teacher is damaged (%s); exporting it again", error)
        export_teacher_onnx(self.model_path, load_torch_teacher(self.cache_dir))
        return self._open(self.model_path)

    @property
    def model_bytes(self) -> int:
        """Bytes of the ONNX file."""
        return self.model_path.stat().st_size

    @cached_property
    def params(self) -> int:
        """Trained values in the network (counted on the PyTorch module it was exported from)."""
        return count_params(load_torch_teacher(self.cache_dir))

    @cached_property
    def macs(self) -> int:
        """Multiply-accumulates per chip (convolutions and fc, see ``graph_stats``)."""
        return count_macs(load_torch_teacher(self.cache_dir), (1, 3, CHIP_SIZE_PX, CHIP_SIZE_PX))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Map uint8 chips (N, 150, 150, 3) to float32 descriptors (N, 128), in batches."""
        inputs = chips_to_tensor(chips)
        out = np.empty((len(inputs), EMBEDDING_DIM), dtype=np.float32)
        for start, batch in _batches(inputs, self.batch_size):
            (result,) = self._session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: batch})
            out[start : start + len(batch)] = result
        return out
