"""Cloud-only pipelines: ``cloud-raw`` and ``cloud-codec``.

``cloud-raw`` sends the camera's image file unchanged; the cloud detects, aligns and embeds.
``cloud-codec`` aligns on the edge, optionally downscales the chip and encodes it with an image
codec. The cloud decodes it, upscales it back to the teacher's 150x150 input and embeds it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from vqbench.data.align import PAYLOAD_IMAGE_FIX
from vqbench.models.teacher import CHIP_SIZE_PX, Teacher
from vqbench.pipelines.base import Components, EdgeOutput, HalfFootprint, Pipeline, VariantInfo
from vqbench.pipelines.codecs import decode_chip, encode_chip


class CloudRawPipeline(Pipeline):
    """The camera image file goes to the cloud as it is."""

    kind = "cloud-raw"
    edge_aligns = False

    def __init__(self, components: Components, variant: str = "original") -> None:
        self.components = components
        self.variant = variant

    def edge(self, image_bytes: bytes) -> EdgeOutput:
        return EdgeOutput(payload=image_bytes)

    def edge_from_chip(self, chip: np.ndarray) -> bytes:
        raise NotImplementedError("cloud-raw sends the original file; there is no chip on the edge")

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        aligner = self.components.aligner
        chips = np.stack([aligner.align_bytes(payload, "cloud-raw payload", PAYLOAD_IMAGE_FIX).chip for payload in payloads])
        return self.components.teacher.embed(chips)

    @property
    def cloud_fingerprint(self) -> str:
        return hashlib.sha256(f"raw|{self.components.aligner.fingerprint}|{self.components.teacher.fingerprint}".encode()).hexdigest()

    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        cloud_bytes = self.components.aligner.model_bytes + self.components.teacher.model_bytes
        return HalfFootprint(model_bytes=0, params=0, macs=0), _teacher_footprint(self.components.teacher, cloud_bytes)


class CloudCodecPipeline(Pipeline):
    """The edge aligns and compresses the chip; the cloud decodes and embeds."""

    kind = "cloud-codec"

    def __init__(
        self, components: Components, codec: str, quality: int, size_px: int = CHIP_SIZE_PX
    ) -> None:
        self.components = components
        self.codec = codec
        self.quality = quality
        self.size_px = size_px
        suffix = "" if size_px == CHIP_SIZE_PX else f"-{size_px}px"
        self.variant = f"{codec}-q{quality}{suffix}"

    def edge(self, image_bytes: bytes) -> EdgeOutput:
        aligned = self.components.aligner.align_bytes(image_bytes)
        return EdgeOutput(payload=self.edge_from_chip(aligned.chip), detected=aligned.detected)

    def edge_from_chip(self, chip: np.ndarray) -> bytes:
        return encode_chip(chip, self.codec, self.quality, self.size_px)

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        return self.components.teacher.embed(self.reconstruct(payloads))

    @property
    def cloud_fingerprint(self) -> str:
        return hashlib.sha256(f"codec|{self.components.teacher.fingerprint}".encode()).hexdigest()

    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        edge = HalfFootprint(model_bytes=self.components.aligner.model_bytes)
        return edge, _teacher_footprint(self.components.teacher, self.components.teacher.model_bytes)

    def info(self) -> VariantInfo:
        return VariantInfo(self.kind, self.variant, {"codec": self.codec, "quality": self.quality})

    def reconstruct(self, payloads: list[bytes]) -> np.ndarray:
        return np.stack([decode_chip(payload, CHIP_SIZE_PX) for payload in payloads])


def _teacher_footprint(teacher: Teacher, model_bytes: int) -> HalfFootprint:
    return HalfFootprint(
        model_bytes=model_bytes,
        params=getattr(teacher, "params", None),
        macs=getattr(teacher, "macs", None),
    )
