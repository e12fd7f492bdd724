"""Named in-memory face galleries of the cloud service: enrol labelled embeddings, identify by cosine."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqbench.network.service_errors import ServiceProblem


@dataclass
class _Gallery:
    embedding_dim: int
    #: The pipeline variant, as ``kind/variant``, that enrolled every entry.
    enrolled_with: str
    labels: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


class GalleryStore:
    """Named in-memory galleries of labelled unit embeddings, bounded in count and size.

    Every pipeline served today embeds into the teacher's space, so a gallery enrolled through
    one pipeline can be searched through another, and the response names the enrolling variant.
    All entries of a gallery come from one variant, because embeddings of one model lie closer
    to each other than to another model's. So a gallery of mixed models would favour the
    entries of the querying model over the right person.
    """

    def __init__(self, max_galleries: int = 16, max_entries: int = 10_000) -> None:
        self.max_galleries = max_galleries
        self.max_entries = max_entries
        self._galleries: dict[str, _Gallery] = {}
        self._lock = threading.Lock()

    def enrol(self, name: str, label: str, embedding: np.ndarray, variant: str) -> int:
        """Add one labelled embedding made by ``variant`` (``kind/variant``); return the gallery's new size."""
        with self._lock:
            gallery = self._galleries.get(name)
            if gallery is None:
                if len(self._galleries) >= self.max_galleries:
                    raise ServiceProblem(
                        409, "gallery_limit", f"{len(self._galleries)} galleries exist, the maximum",
                        "delete a gallery with DELETE /v1/gallery/{name} first",
                    )
                gallery = self._galleries[name] = _Gallery(embedding_dim=len(embedding), enrolled_with=variant)
            if variant != gallery.enrolled_with:
                raise ServiceProblem(
                    409, "gallery_variant_mismatch",
                    f"gallery {name!r} was enrolled through {gallery.enrolled_with}, not {variant}",
                    f"enrol through {gallery.enrolled_with}, or use another gallery name for {variant}",
                )
            _check_dim(gallery, name, embedding)
            if len(gallery.labels) >= self.max_entries:
                raise ServiceProblem(
                    409, "gallery_full", f"gallery {name!r} holds {len(gallery.labels)} entries, the maximum",
                    f"delete the gallery with DELETE /v1/gallery/{name} or use another gallery name",
                )
            gallery.labels.append(label)
            gallery.embeddings.append(_unit(embedding))
            return len(gallery.labels)

    def identify(self, name: str, embedding: np.ndarray, top_k: int = 5) -> dict[str, Any]:
        """Return the best label and the ``top_k`` labels by their best cosine similarity."""
        with self._lock:
            gallery = self._galleries.get(name)
            if gallery is None or not gallery.labels:
                raise ServiceProblem(404, "gallery_not_found", f"gallery {name!r} does not exist or is empty",
                                     f"enrol identities with POST /v1/gallery/{name}/enrol first")
            _check_dim(gallery, name, embedding)
            labels = list(gallery.labels)
            matrix = np.stack(gallery.embeddings)
            enrolled_with = gallery.enrolled_with
        similarities = matrix @ _unit(embedding)
        best_per_label: dict[str, float] = {}
        for label, similarity in zip(labels, similarities.tolist()):
            best_per_label[label] = max(similarity, best_per_label.get(label, -math.inf))
        ranked = sorted(best_per_label.items(), key=lambda item: item[1], reverse=True)[:top_k]
        return {
            "label": ranked[0][0],
            "cosine_similarity": ranked[0][1],
            "top": [{"label": label, "cosine_similarity": score} for label, score in ranked],
            "gallery_entries": len(labels),
            "enrolled_with": enrolled_with,
        }

    def describe(self, name: str) -> dict[str, Any]:
        with self._lock:
            gallery = self._galleries.get(name)
            if gallery is None:
                raise ServiceProblem(404, "gallery_not_found", f"gallery {name!r} does not exist",
                                     f"enrol identities with POST /v1/gallery/{name}/enrol first")
            return {"name": name, "entries": len(gallery.labels), "labels": len(set(gallery.labels)),
                    "embedding_dim": gallery.embedding_dim, "enrolled_with": gallery.enrolled_with,
                    "max_entries": self.max_entries}

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._galleries.pop(name, None) is not None


def _check_dim(gallery: _Gallery, name: str, embedding: np.ndarray) -> None:
    if len(embedding) != gallery.embedding_dim:
        raise ServiceProblem(
            422, "embedding_size_mismatch",
            f"gallery {name!r} holds {gallery.embedding_dim}-d embeddings, this pipeline gives {len(embedding)}-d",
            "use a pipeline that embeds into the same space, or another gallery name",
        )


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine similarity of two vectors (0.0 when either is all zeros)."""
    return float(np.dot(_unit(a.astype(np.float64)), _unit(b.astype(np.float64))))
