"""The pipeline interface: an edge half, a payload, and a cloud half.

Every pipeline turns a camera image into a payload on the edge and the payload into a face
embedding in the cloud. The two halves are separate methods so that each one is timed,
metered and sized on its own.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vqbench.data.align import DlibAligner
    from vqbench.models.teacher import Teacher
    from vqbench.scenario import AlignmentConfig, TeacherConfig


@dataclass(frozen=True)
class EdgeOutput:
    """Payload sent by the edge, and whether its detector found a face (None: no detector ran)."""

    payload: bytes
    detected: bool | None = None


@dataclass(frozen=True)
class HalfFootprint:
    """Static size of one half: model file bytes, parameters and MACs (None where unknown)."""

    model_bytes: int = 0
    params: int | None = None
    macs: int | None = None


@dataclass(frozen=True)
class VariantInfo:
    """Identity of a pipeline variant and the extra result columns it fills."""

    pipeline: str
    variant: str
    extra_columns: dict[str, object] = field(default_factory=dict)


class Components:
    """Models shared by pipelines, loaded on first use.

    Loading on first use lets a process that runs only one half (the memory probe) load only
    that half's models.
    """

    def __init__(self, alignment: "AlignmentConfig", teacher: "TeacherConfig") -> None:
        self.alignment_config = alignment
        self.teacher_config = teacher

    @cached_property
    def aligner(self) -> "DlibAligner":
        from vqbench.data.align import DlibAligner

        config = self.alignment_config
        return DlibAligner(
            chip_size_px=config.chip_size_px,
            padding=config.padding,
            upsample=config.upsample,
            face_choice=config.face_choice,
        )

    @cached_property
    def teacher(self) -> "Teacher":
        from vqbench.models.teacher import create_teacher

        return create_teacher(self.teacher_config.runtime, batch_size=self.teacher_config.batch_size)


class Pipeline(abc.ABC):
    """One pipeline variant (``cloud-codec`` with ``jpeg-q30``, say)."""

    #: Pipeline kind as in the scenario (``cloud-raw``, ``cloud-codec``, ...).
    kind: str
    #: Variant name: the parameters that distinguish it (``original``, ``jpeg-q30``, ...).
    variant: str
    #: True when the edge half aligns the face, so that cached chips can stand in for it.
    edge_aligns: bool = True

    @abc.abstractmethod
    def edge(self, image_bytes: bytes) -> EdgeOutput:
        """Run the whole edge half on a camera image file."""

    @abc.abstractmethod
    def edge_from_chip(self, chip: np.ndarray) -> bytes:
        """Run the edge half after alignment, on an already aligned chip."""

    @abc.abstractmethod
    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        """Run the whole cloud half on payloads; return float32 embeddings (N, D)."""

    @property
    @abc.abstractmethod
    def cloud_fingerprint(self) -> str:
        """Hash of everything in the cloud half that changes its output, for cache keys."""

    @abc.abstractmethod
    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        """Return the (edge, cloud) static footprints."""

    def info(self) -> VariantInfo:
        """Return the variant's identity and extra result columns."""
        return VariantInfo(self.kind, self.variant)

    def reconstruct(self, payloads: list[bytes]) -> np.ndarray | None:
        """Return the uint8 chips (N, H, W, 3) the cloud rebuilds from payloads, or None if it rebuilds none."""
        return None

    def check_cloud_model(self) -> None:
        """Raise ModelError when the cloud half's model files do not fit what the edge sends.

        The runner calls this before any data is read; the cloud half also calls it before
        opening its model. Pipelines whose cloud half has nothing to check keep this default.
        """
