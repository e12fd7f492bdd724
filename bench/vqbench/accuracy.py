"""The accuracy pass: every image of the evaluation set through every pipeline variant.

Aligned chips and embeddings are cached on disk (see ``vqbench.data.cache``): chips by image
content and aligner fingerprint, embeddings by payload content and the cloud half's
fingerprint. The cached value is what the pipeline would compute, so a second run of a
scenario scores the same pairs in a fraction of the time. Timing and energy are measured
separately, uncached, in ``vqbench.measure``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vqbench.data.cache import ArrayCache, content_hash
from vqbench.data.dataset import EvaluationSet
from vqbench.pipelines.base import Components, Pipeline

logger = logging.getLogger(__name__)

#: Called as ``advance(n_done)`` after each processed item.
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class AlignedSet:
    """Aligned chips of every image and which ones fell back to the fixed box."""

    chips: np.ndarray
    detected: np.ndarray


@dataclass(frozen=True)
class VariantScores:
    """Per-image payload sizes and embeddings of one variant, and per-pair scores."""

    payload_bytes: np.ndarray
    embeddings: np.ndarray


def align_all(
    evaluation: EvaluationSet, components: Components, cache: ArrayCache, advance: ProgressCallback | None = None
) -> AlignedSet:
    """Align every image, reading and filling the chip cache."""
    aligner = components.aligner
    chips = []
    detected = []
    for image in evaluation.images:
        key = f"chip|{content_hash(image.data)}|{aligner.fingerprint}"
        cached = cache.get(key)
        if cached is not None and cached.dtype == np.uint8 and cached.shape[:2] == (aligner.chip_size_px + 1, aligner.chip_size_px):
            chip, found = cached[:-1], bool(cached[-1, 0, 0])
        else:
            aligned = aligner.align_bytes(image.data, str(image.path))
            chip, found = aligned.chip, aligned.detected
            # The last row of the stored array carries the detection flag.
            flag_row = np.full((1, chip.shape[1], 3), int(found), dtype=np.uint8)
            cache.put(key, np.concatenate([chip, flag_row]))
        chips.append(chip)
        detected.append(found)
        if advance:
            advance(1)
    return AlignedSet(chips=np.stack(chips), detected=np.asarray(detected, dtype=bool))


def embed_payloads(
    payloads: list[bytes],
    embed: Callable[[list[bytes]], np.ndarray],
    fingerprint: str,
    cache: ArrayCache,
    batch_size: int,
    advance: ProgressCallback | None = None,
) -> np.ndarray:
    """Embed payloads through ``embed`` in batches, reusing cached embeddings by payload hash."""
    keys = [f"embedding|{content_hash(payload)}|{fingerprint}" for payload in payloads]
    results: list[np.ndarray | None] = [cache.get(key) for key in keys]
    missing = [i for i, value in enumerate(results) if value is None]
    if advance and len(payloads) > len(missing):
        advance(len(payloads) - len(missing))

    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        embeddings = embed([payloads[i] for i in batch])
        for i, embedding in zip(batch, embeddings):
            results[i] = embedding
            cache.put(keys[i], embedding)
        if advance:
            advance(len(batch))
    return np.stack(results)  # type: ignore[arg-type]


def score_variant(
    pipeline: Pipeline,
    evaluation: EvaluationSet,
    aligned: AlignedSet,
    cache: ArrayCache,
    batch_size: int,
    advance: ProgressCallback | None = None,
) -> VariantScores:
    """Compute every image's payload and embedding for one variant."""
    if pipeline.edge_aligns:
        payloads = [pipeline.edge_from_chip(chip) for chip in aligned.chips]
        embeddings = embed_payloads(payloads, pipeline.cloud, pipeline.cloud_fingerprint, cache, batch_size, advance)
    else:
        # The cloud half is alignment then the teacher; the cached chips are its alignment.
        payloads = [image.data for image in evaluation.images]
        teacher = pipeline.components.teacher  # type: ignore[attr-defined]
        chip_payloads = [chip.tobytes() for chip in aligned.chips]
        shape = aligned.chips.shape[1:]

        def embed_chips(raw_chips: list[bytes]) -> np.ndarray:
            return teacher.embed(np.stack([np.frombuffer(raw, np.uint8).reshape(shape) for raw in raw_chips]))

        embeddings = embed_payloads(
            chip_payloads, embed_chips, f"teacher|{teacher.fingerprint}", cache, batch_size, advance
        )
    sizes = np.asarray([len(payload) for payload in payloads], dtype=np.int64)
    return VariantScores(payload_bytes=sizes, embeddings=embeddings.astype(np.float32))


def pair_scores(evaluation: EvaluationSet, embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair's two embeddings."""
    from vqbench.metrics.verification import cosine_similarity

    index_a = [evaluation.image_index[pair.path_a] for pair in evaluation.pairs]
    index_b = [evaluation.image_index[pair.path_b] for pair in evaluation.pairs]
    return cosine_similarity(embeddings[index_a], embeddings[index_b])
