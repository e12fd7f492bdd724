"""Whether the service's detector found a face in each payload it embedded.

When dlib's detector finds no face, ``DlibAligner`` aligns a fixed fallback box instead and
marks the chip ``detected=False``. The pipelines' ``cloud()`` methods return only embeddings,
so without this module an image with no face would get a normal-looking embedding.

Only a pipeline whose cloud half aligns the face (``edge_aligns`` False, such as
``cloud-raw``) runs the detector in the service. For it, ``run_cloud`` records the
``detected`` flag of every alignment that ``cloud()`` makes, through a recording wrapper
around the shared aligner. Payloads aligned on the edge (codec chips, VQ codes, edge
embeddings) carry no detection result, so the service reports ``None`` for them: it cannot
tell a face chip from a chip cut from the fallback box.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from vqbench.data.align import FILE_IMAGE_FIX
from vqbench.pipelines.base import Components, Pipeline

if TYPE_CHECKING:
    from vqbench.data.align import AlignedChip

logger = logging.getLogger(__name__)

#: Values of ``aligned_on`` in the service's responses: where the face was detected and aligned.
ALIGNED_ON_CLOUD = "cloud"
ALIGNED_ON_EDGE = "edge"

# Serialises installing the wrapper: apps in one process (tests) may share a Components object.
_INSTALL_LOCK = threading.Lock()


def aligned_on(pipeline: Pipeline) -> str:
    """Return where the pipeline detects and aligns the face: ``"cloud"`` or ``"edge"``."""
    return ALIGNED_ON_EDGE if pipeline.edge_aligns else ALIGNED_ON_CLOUD


class DetectionRecorder:
    """An aligner wrapper that records, per thread, whether each alignment detected a face.

    Calls outside ``recording()`` pass through unrecorded, so the edge halves that share the
    aligner are unaffected. Every other attribute (``fingerprint``, ``model_bytes``) comes
    from the wrapped aligner.
    """

    def __init__(self, aligner: Any) -> None:
        self.aligner = aligner
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        # Called only for names not set in __init__. The guard stops a recursion when the
        # instance is read before __init__ has run (copy, pickle).
        if name in ("aligner", "_local"):
            raise AttributeError(name)
        return getattr(self.aligner, name)

    def align(self, image_rgb: np.ndarray) -> "AlignedChip":
        return self._record(self.aligner.align(image_rgb))

    def align_bytes(self, data: bytes, source: str = "<bytes>", fix: str = FILE_IMAGE_FIX) -> "AlignedChip":
        return self._record(self.aligner.align_bytes(data, source, fix))

    def _record(self, aligned: "AlignedChip") -> "AlignedChip":
        flags = getattr(self._local, "flags", None)
        if flags is not None:
            flags.append(bool(aligned.detected))
        return aligned

    @contextmanager
    def recording(self) -> Iterator[list[bool]]:
        """Collect the ``detected`` flag of each alignment made on this thread inside the block."""
        flags: list[bool] = []
        self._local.flags = flags
        try:
            yield flags
        finally:
            self._local.flags = None


def _recorder_for(pipeline: Pipeline) -> DetectionRecorder | None:
    """Return the recording wrapper of the aligner that ``pipeline.cloud()`` uses, installing it once.

    Returns None when the cloud half does not align, or when its aligner is not the one of a
    ``Components`` object. Reading ``components.aligner`` loads the aligner, as ``cloud()``
    would on its first call.
    """
    if pipeline.edge_aligns:
        return None
    components = getattr(pipeline, "components", None)
    if not isinstance(components, Components):
        return None
    with _INSTALL_LOCK:
        aligner = components.aligner
        if isinstance(aligner, DetectionRecorder):
            return aligner
        recorder = DetectionRecorder(aligner)
        # Components.aligner is a functools.cached_property, so an instance attribute replaces the cached value.
        components.aligner = recorder  # type: ignore[misc]
        return recorder


def run_cloud(pipeline: Pipeline, payloads: list[bytes]) -> tuple[np.ndarray, list[bool | None]]:
    """Run ``pipeline.cloud(payloads)`` and return its embeddings and, per payload, whether a face was detected.

    A flag is None when the payload was aligned on the edge, or when ``cloud()`` made another
    number of alignments than there are payloads (logged, because then the pipeline aligns in a
    way that this module does not record).
    """
    recorder = _recorder_for(pipeline)
    if recorder is None:
        return np.asarray(pipeline.cloud(payloads)), [None] * len(payloads)
    with recorder.recording() as flags:
        embeddings = np.asarray(pipeline.cloud(payloads))
    if len(flags) != len(payloads):
        logger.warning(
            "%s/%s made %d alignments for %d payloads; face detection is reported as unknown",
            pipeline.kind, pipeline.variant, len(flags), len(payloads),
        )
        return embeddings, [None] * len(payloads)
    return embeddings, list(flags)
