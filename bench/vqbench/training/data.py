"""Training data: which people a model may see, and their chips and teacher targets.

The training set is every image of the people in the chosen View 2 folds plus every image of
people who appear in no View 2 pair. View 2 folds share no people, so the people of the other
folds are never read. ``prepare_training_set`` aligns each image once with ``DlibAligner``
(upsample 0, 150x150, padding 0.25). The PyTorch teacher then labels the chip and its
horizontal flip with two targets: the 128-d embedding, and the 4x4x256 feature map that enters
the teacher's last residual block (the student's feature target). The result is cached as one ``.npz`` file keyed
by the image list, the aligner and the teacher.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqbench.data.pairs import read_lfw_pairs, people_in_folds
from vqbench.errors import DataError

logger = logging.getLogger(__name__)

LFW_IMAGE_FOLDER = "lfw-deepfunneled"
_PREPARED_FORMAT = 1


@dataclass(frozen=True)
class TrainingPeople:
    """The people a model trains on, and the View 2 folds they were drawn from."""

    train_folds: tuple[int, ...]
    people: frozenset[str]
    excluded_people: frozenset[str]

    @property
    def sha256(self) -> str:
        return people_sha256(self.people)


def people_sha256(people: frozenset[str] | set[str]) -> str:
    """Return the SHA-256 of the sorted names, one per line (the card's fingerprint)."""
    return hashlib.sha256("".join(f"{name}\n" for name in sorted(people)).encode()).hexdigest()


def select_training_people(root: Path, train_folds: list[int], include_unpaired: bool = True) -> TrainingPeople:
    """Pick the people of ``train_folds`` (plus people in no pair) from an LFW folder."""
    image_root = root / LFW_IMAGE_FOLDER
    if not image_root.is_dir():
        raise DataError(f"LFW images not found at {image_root}; run `vqbench data fetch lfw` or set data.root")
    pairs = read_lfw_pairs(root / "pairs.txt", image_root, fold_numbers=_sample_fold_numbers(root))
    folds = sorted({pair.fold for pair in pairs})
    unknown = sorted(set(train_folds) - set(folds))
    if unknown:
        raise DataError(f"train_folds {unknown} are not in {root / 'pairs.txt'}, which contains folds {folds}; choose from those")

    chosen = people_in_folds(pair for pair in pairs if pair.fold in set(train_folds))
    excluded = people_in_folds(pair for pair in pairs if pair.fold not in set(train_folds))
    overlap = chosen & excluded
    if overlap:
        raise DataError(f"people {sorted(overlap)[:5]} appear in both training and held-out folds of {root / 'pairs.txt'}")
    everyone = {entry.name for entry in image_root.iterdir() if entry.is_dir()}
    people = set(chosen)
    if include_unpaired:
        people |= everyone - chosen - excluded
    return TrainingPeople(tuple(sorted(train_folds)), frozenset(people), frozenset(excluded))


def _sample_fold_numbers(root: Path) -> list[int] | None:
    """Return the View 2 fold numbers of a sample's pairs file (see vqbench.data.dataset), if any."""
    import json

    from vqbench.data.dataset import SAMPLE_MANIFEST

    manifest = root / SAMPLE_MANIFEST
    if not manifest.is_file():
        return None
    try:
        return [int(fold) for fold in json.loads(manifest.read_text(encoding="utf-8"))["fold_numbers"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{manifest} is invalid ({error}); it must hold {{\"fold_numbers\": [..]}}") from error


def training_image_paths(root: Path, people: frozenset[str]) -> list[Path]:
    """List every image of the given people, sorted by path."""
    image_root = root / LFW_IMAGE_FOLDER
    paths: list[Path] = []
    for name in sorted(people):
        paths.extend(sorted((image_root / name).glob("*.jpg")))
    return paths


@dataclass(frozen=True)
class PreparedSet:
    """Aligned chips and teacher targets; index 0 of the view axis is the chip, 1 its flip."""

    chips: np.ndarray  # (N, 150, 150, 3) uint8
    identities: np.ndarray  # (N,) str
    detected: np.ndarray  # (N,) bool
    embeddings: np.ndarray  # (N, 2, 128) float32
    features: np.ndarray  # (N, 2, 256, 4, 4) float16

    def __len__(self) -> int:
        return len(self.chips)


def prepared_key(paths: list[Path], aligner_fingerprint: str, teacher_tag: str) -> str:
    """Key of a prepared set: the image names and sizes, the aligner and the teacher."""
    digest = hashlib.sha256(f"{_PREPARED_FORMAT}|{aligner_fingerprint}|{teacher_tag}".encode())
    for path in paths:
        digest.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def prepare_training_set(paths: list[Path], cache_dir: Path, batch_size: int = 32) -> PreparedSet:
    """Align and label the images (or load the cached result) and return the prepared set."""
    from vqbench.data.align import DlibAligner
    from vqbench.models.teacher_torch import TEACHER_DAT_SHA256

    aligner = DlibAligner(chip_size_px=150, padding=0.25, upsample=0)
    cache_file = cache_dir / f"train-{prepared_key(paths, aligner.fingerprint, TEACHER_DAT_SHA256)}.npz"
    cached = _load_prepared(cache_file)
    if cached is not None:
        logger.info("loaded %d prepared training images from %s", len(cached), cache_file)
        return cached

    chips, detected = _align_all(aligner, paths)
    embeddings, features = label_with_teacher(chips, batch_size)
    prepared = PreparedSet(
        chips=chips,
        identities=np.array([path.parent.name for path in paths]),
        detected=detected,
        embeddings=embeddings,
        features=features,
    )
    _save_prepared(cache_file, prepared)
    return prepared


def _align_all(aligner: object, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    from vqbench.training.progress import progress_bar

    chips = np.empty((len(paths), 150, 150, 3), dtype=np.uint8)
    detected = np.empty(len(paths), dtype=bool)
    with progress_bar() as progress:
        task = progress.add_task("aligning training images", total=len(paths), status="")
        for index, path in enumerate(paths):
            aligned = aligner.align_bytes(path.read_bytes(), str(path))  # type: ignore[attr-defined]
            chips[index] = aligned.chip
            detected[index] = aligned.detected
            progress.advance(task)
    logger.info("aligned %d images, %d without a detection", len(paths), int((~detected).sum()))
    return chips, detected


def label_with_teacher(chips: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Return the teacher's embeddings (N, 2, 128) and last-block inputs (N, 2, 256, 4, 4) of chips and flips."""
    import torch

    from vqbench.training.progress import progress_bar
    from vqbench.models.student import teacher_trunk
    from vqbench.models.teacher_torch import load_torch_teacher

    teacher = load_torch_teacher()
    embeddings = np.empty((len(chips), 2, 128), dtype=np.float32)
    features = np.empty((len(chips), 2, 256, 4, 4), dtype=np.float16)
    with progress_bar() as progress, torch.no_grad():
        task = progress.add_task("labelling with the teacher", total=len(chips), status="")
        for start in range(0, len(chips), batch_size):
            batch = torch.from_numpy(chips[start : start + batch_size]).permute(0, 3, 1, 2).float()
            for view, images in enumerate((batch, batch.flip(3))):
                trunk = teacher_trunk(teacher, images)
                features[start : start + len(batch), view] = trunk.numpy().astype(np.float16)
                embeddings[start : start + len(batch), view] = teacher_tail_forward(teacher, trunk).numpy()
            progress.advance(task, len(batch))
    return embeddings, features


def teacher_tail_forward(teacher: object, trunk: "object") -> "object":
    """Run the teacher's last block, pooling and fc on a trunk feature map."""
    from vqbench.models.student import TeacherTail

    return TeacherTail(teacher)(trunk)  # type: ignore[arg-type]


def _load_prepared(path: Path) -> PreparedSet | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return PreparedSet(**{name: data[name] for name in PreparedSet.__dataclass_fields__})
    except (OSError, ValueError, KeyError, EOFError) as error:
        logger.warning("prepared training set %s is damaged (%s); preparing it again", path, error)
        return None


def _save_prepared(path: Path, prepared: PreparedSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **{name: getattr(prepared, name) for name in PreparedSet.__dataclass_fields__})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("cached %d prepared training images in %s", len(prepared), path)
