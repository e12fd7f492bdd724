"""Edge-encoding pipelines: ``edge-vq-recon``, ``edge-vq-student`` and ``edge-embed``.

``edge-vq-*`` align the face on the edge, run the VQ-VAE encoder (ONNX, fp32 or int8) and send
the code indices in the payload format of ``vqbench.pipelines.payload``. In the cloud,
``edge-vq-recon`` decodes a face chip and runs the teacher on it, while ``edge-vq-student`` maps
the indices straight to an embedding with the distilled student. ``edge-embed`` runs a small
embedder on the edge and sends the embedding itself, as fp16 or as int8 after L2
normalisation. Its cloud half only parses the bytes.

Each pipeline exposes ``training_people``, the people its model was trained on, so that the
runner rejects scoring it on folds that contain them.
"""

from __future__ import annotations

import hashlib
from functools import cached_property

import numpy as np

from vqbench.errors import ModelError, PayloadError, ScenarioError
from vqbench.models.vq_card import VQModelCard, check_index_graphs, load_vq_card, resolve_model_folder
from vqbench.pipelines.base import Components, EdgeOutput, HalfFootprint, Pipeline, VariantInfo
from vqbench.pipelines.payload import PayloadFormat

EMBEDDING_DIM = 128


def _session(path: object, threads: int = 1) -> object:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return load_onnx_session(path, options)


def load_onnx_session(path: object, options: object) -> object:
    """Open an ONNX graph on the CPU, raising ModelError when the file cannot be parsed."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile

    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile) as error:
        raise ModelError(f"cannot load ONNX model {path}: {error}; restore the model folder or retrain") from error


def chips_to_input(chips: np.ndarray) -> np.ndarray:
    """Convert uint8 chips (N,150,150,3) to the models' float32 (N,3,150,150) on 0..255."""
    return np.ascontiguousarray(np.asarray(chips, dtype=np.float32).transpose(0, 3, 1, 2))


#: The pipeline kinds that run each kind of model card, and the card kind's name in messages.
PIPELINE_KINDS_BY_MODEL_KIND = {"vq": ("edge-vq-student", "edge-vq-recon"), "edge-embed": ("edge-embed",)}
MODEL_KIND_NAMES = {"vq": "a VQ-VAE", "edge-embed": "an edge-embed"}


class _TrainedPipeline(Pipeline):
    """Shared loading of a trained model folder and the edge half of aligned-chip pipelines."""

    #: The card ``kind`` this pipeline runs.
    model_kind: str

    def __init__(self, components: Components, model: str, int8: bool = False, threads: int = 1) -> None:
        self.components = components
        self.card: VQModelCard = load_vq_card(resolve_model_folder(model))
        if self.card.kind != self.model_kind:
            usable = " or ".join(PIPELINE_KINDS_BY_MODEL_KIND[self.card.kind])
            raise ScenarioError(
                f"model {model} is {MODEL_KIND_NAMES[self.card.kind]} model, which pipeline kind {self.kind} cannot run; "
                f"use kind: {usable} for it, or name {MODEL_KIND_NAMES[self.model_kind]} model"
            )
        self.int8 = int8
        self.threads = threads
        self.training_people: frozenset[str] = self.card.training_people
        self.variant = self.card.model_id + ("-int8" if int8 else "")

    @property
    def edge_role(self) -> str:
        return "edge_encoder_int8" if self.int8 else "edge_encoder"

    @cached_property
    def edge_session(self) -> object:
        return _session(self.card.file(self.edge_role), self.threads)

    def edge(self, image_bytes: bytes) -> EdgeOutput:
        aligned = self.components.aligner.align_bytes(image_bytes)
        return EdgeOutput(payload=self.edge_from_chip(aligned.chip), detected=aligned.detected)

    def _model_footprint(self, role: str, footprint_key: str, extra_bytes: int = 0) -> HalfFootprint:
        stats = self.card.data["footprint"][footprint_key]
        return HalfFootprint(
            model_bytes=self.card.file(role).stat().st_size + extra_bytes, params=stats["params"], macs=stats["macs"]
        )

    def _edge_footprint(self) -> HalfFootprint:
        return self._model_footprint(self.edge_role, "edge_encoder", self.components.aligner.model_bytes)


class _EdgeVQPipeline(_TrainedPipeline):
    """Edge half of the VQ pipelines: encoder + quantiser -> payload."""

    model_kind = "vq"

    def __init__(self, components: Components, model: str, int8: bool = False, entropy_coding: bool = True, threads: int = 1) -> None:
        super().__init__(components, model, int8, threads)
        self.entropy_coding = entropy_coding
        self.payload_format = PayloadFormat(self.card.model_id, self.card.grid, self.card.codebook_size)

    def edge_from_chip(self, chip: np.ndarray) -> bytes:
        indices = self.edge_session.run(None, {"chips": chips_to_input(chip[None])})[0]  # type: ignore[attr-defined]
        return self.payload_format.encode(indices[0], self.entropy_coding)

    def decode_payloads(self, payloads: list[bytes]) -> np.ndarray:
        """Parse payloads into an (N, H', W') int64 index array."""
        return np.stack([self.payload_format.decode(payload) for payload in payloads])

    def info(self) -> VariantInfo:
        grid = self.card.grid
        return VariantInfo(
            self.kind, self.variant, {"codebook_size": self.card.codebook_size, "code_grid": f"{grid[0]}x{grid[1]}"}
        )


class EdgeVQReconPipeline(_EdgeVQPipeline):
    """Codes -> decoded face chip -> teacher, in the cloud."""

    kind = "edge-vq-recon"

    def check_cloud_model(self) -> None:
        check_index_graphs(self.card, ("decoder",))

    @cached_property
    def decoder_session(self) -> object:
        self.check_cloud_model()
        return _session(self.card.file("decoder"), self.threads)

    def reconstruct(self, payloads: list[bytes]) -> np.ndarray:
        """Decode payloads into uint8 chips (N,150,150,3)."""
        chips = self.decoder_session.run(None, {"indices": self.decode_payloads(payloads)})[0]  # type: ignore[attr-defined]
        return np.clip(np.rint(chips), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        return self.components.teacher.embed(self.reconstruct(payloads))

    @property
    def cloud_fingerprint(self) -> str:
        decoder_sha256 = self.card.data["files"]["decoder.onnx"]["sha256"]
        key = f"vq-recon|{decoder_sha256}|{self.components.teacher.fingerprint}"
        return hashlib.sha256(key.encode()).hexdigest()

    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        teacher = self.components.teacher
        decoder = self._model_footprint("decoder", "decoder")
        teacher_stats = self.card.data["footprint"]["teacher"]
        cloud = HalfFootprint(
            model_bytes=decoder.model_bytes + teacher.model_bytes,
            params=(decoder.params or 0) + teacher_stats["params"],
            macs=(decoder.macs or 0) + teacher_stats["macs"],
        )
        return self._edge_footprint(), cloud


class EdgeVQStudentPipeline(_EdgeVQPipeline):
    """Codes -> student -> embedding, in the cloud; no decoder and no teacher."""

    kind = "edge-vq-student"

    def check_cloud_model(self) -> None:
        check_index_graphs(self.card, ("student",))

    @cached_property
    def student_session(self) -> object:
        self.check_cloud_model()
        return _session(self.card.file("student"), self.threads)

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        embeddings = self.student_session.run(None, {"indices": self.decode_payloads(payloads)})[0]  # type: ignore[attr-defined]
        return np.asarray(embeddings, dtype=np.float32)

    @property
    def cloud_fingerprint(self) -> str:
        student_sha256 = self.card.data["files"]["student.onnx"]["sha256"]
        return hashlib.sha256(f"vq-student|{student_sha256}".encode()).hexdigest()

    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        return self._edge_footprint(), self._model_footprint("student", "student")


# ----- edge-embed ----------------------------------------------------------------------------

#: Payload of edge-embed: byte 0 is the format (1 = fp16, 2 = int8), then the embedding.
#: NOTE: unlike the VQ payload it carries no model tag, so the service accepts a payload of
#: another edge-embed model of the same dtype and compares embeddings of two models.
EMBED_FORMATS = {"fp16": 1, "int8": 2}


def encode_embedding(embedding: np.ndarray, dtype: str) -> bytes:
    """Serialise one embedding: fp16 as is, or int8 of the L2-normalised vector times 127."""
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if dtype == "fp16":
        body = embedding.astype("<f2").tobytes()
    elif dtype == "int8":
        unit = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        body = np.clip(np.rint(unit * 127.0), -127, 127).astype(np.int8).tobytes()
    else:
        raise PayloadError(f"embedding dtype {dtype!r} is not supported; use one of {sorted(EMBED_FORMATS)}")
    return bytes([EMBED_FORMATS[dtype]]) + body


def decode_embedding(payload: bytes, dtype: str, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """Parse an edge-embed payload, rejecting another format byte or length."""
    expected = 1 + dim * (2 if dtype == "fp16" else 1)
    if len(payload) != expected:
        raise PayloadError(f"embedding payload length {len(payload)} bytes does not match {expected} for {dim}-d {dtype}; send the whole payload")
    if payload[0] != EMBED_FORMATS[dtype]:
        raise PayloadError(f"embedding payload format byte {payload[0]} does not match {dtype} ({EMBED_FORMATS[dtype]}); use the same dtype on both halves")
    if dtype == "int8":
        return np.frombuffer(payload[1:], dtype=np.int8).astype(np.float32) / 127.0
    embedding = np.frombuffer(payload[1:], dtype="<f2").astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(embedding)))
    if bad:
        raise PayloadError(f"embedding contains NaN or infinite values ({bad} of {dim} components); the edge half must send a finite embedding")
    return embedding


class EdgeEmbedPipeline(_TrainedPipeline):
    """A small embedder on the edge; the embedding is the payload."""

    kind = "edge-embed"
    model_kind = "edge-embed"

    def __init__(self, components: Components, model: str, dtype: str = "fp16", int8: bool = False, threads: int = 1) -> None:
        super().__init__(components, model, int8, threads)
        if dtype not in EMBED_FORMATS:
            raise PayloadError(f"embedding dtype {dtype!r} is not supported; use one of {sorted(EMBED_FORMATS)}")
        self.dtype = dtype
        self.variant = f"{self.variant}-{dtype}"

    @property
    def edge_role(self) -> str:
        return "embedder_int8" if self.int8 else "embedder"

    def edge_from_chip(self, chip: np.ndarray) -> bytes:
        embedding = self.edge_session.run(None, {"chips": chips_to_input(chip[None])})[0]  # type: ignore[attr-defined]
        return encode_embedding(embedding[0], self.dtype)

    def cloud(self, payloads: list[bytes]) -> np.ndarray:
        return np.stack([decode_embedding(payload, self.dtype) for payload in payloads])

    @property
    def cloud_fingerprint(self) -> str:
        return hashlib.sha256(f"edge-embed|{self.dtype}".encode()).hexdigest()

    def _edge_footprint(self) -> HalfFootprint:
        return self._model_footprint(self.edge_role, "embedder", self.components.aligner.model_bytes)

    def footprint(self) -> tuple[HalfFootprint, HalfFootprint]:
        return self._edge_footprint(), HalfFootprint(model_bytes=0, params=0, macs=0)
