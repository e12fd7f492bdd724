"""Training data: which people a model may see, and their chips and teacher targets.

The training set is every image of the people in the chosen View 2 folds plus every image of
people who appear in no View 2 pair. View 2 folds share no people, so the people of the other
folds are never read. ``prepare_training_set`` aligns each image once with ``DlibAligner``
(upsample 0, 150x150, padding 0.25). The PyTorch teacher then labels the chip and its
horizontal flip with two targets: the 128-d embedding, and the 4x4x256 feature map that enters
the teacher's last residual block (the student's feature target). The result is cached as one
``.npz`` file keyed by the image list, the aligner and the teacher. ``add_teacher_views``
appends random augmented views (``vqbench.training.augment``) with the same two targets, cached
in a second file keyed by the chips, the view parameters and the teacher. For a student that
reuses more than the teacher's last block, ``relabel_tail_inputs`` replaces the feature targets
by the map at that earlier cut, cached in a third file. For the encoder hint
(``loss.encoder_hint``), ``add_hint_maps`` labels every view with the teacher's last
128-channel map, average-pooled to the code grid, cached in a fourth file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vqbench.data.dataset import sample_fold_numbers
from vqbench.data.pairs import read_lfw_pairs, people_in_folds
from vqbench.errors import DataError

if TYPE_CHECKING:
    from vqbench.training.config import AugmentConfig

logger = logging.getLogger(__name__)

LFW_IMAGE_FOLDER = "lfw-deepfunneled"
_PREPARED_FORMAT = 1
#: Channels of the teacher map that the encoder hint targets. That stage is 8x8, the teacher's
#: map size nearest the code grids of 9 to 14.
HINT_CHANNELS = 128


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
    pairs = read_lfw_pairs(root / "pairs.txt", image_root, fold_numbers=sample_fold_numbers(root / "pairs.txt"))
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


def training_image_paths(root: Path, people: frozenset[str]) -> list[Path]:
    """List every image of the given people, sorted by path."""
    image_root = root / LFW_IMAGE_FOLDER
    paths: list[Path] = []
    for name in sorted(people):
        paths.extend(sorted((image_root / name).glob("*.jpg")))
    return paths


@dataclass(frozen=True)
class PreparedSet:
    """Aligned chips and teacher targets per view: index 0 is the chip, 1 its flip, 2.. augmented views."""

    chips: np.ndarray  # (N, 150, 150, 3) uint8
    identities: np.ndarray  # (N,) str
    detected: np.ndarray  # (N,) bool
    embeddings: np.ndarray  # (N, V, 128) float32
    features: np.ndarray  # (N, V, 256, 4, 4) float16
    view_params: np.ndarray | None = None  # (N, V, 7), see vqbench.training.augment; None: chip and flip only
    hint_maps: np.ndarray | None = None  # (N, V, 128, grid, grid) float16; None without the encoder hint

    def __len__(self) -> int:
        return len(self.chips)

    @property
    def n_views(self) -> int:
        return int(self.embeddings.shape[1])


#: The arrays of a prepared set's cache file (augmented views are cached separately).
_STORED_ARRAYS = ("chips", "identities", "detected", "embeddings", "features")


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
    from vqbench.training.augment import chip_and_flip_params

    return label_views(chips, chip_and_flip_params(len(chips)), batch_size)


def label_views(chips: np.ndarray, params: np.ndarray, batch_size: int = 32, tail_blocks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Return the teacher's embeddings (N, V, 128) and tail inputs (N, V, 256, 4, 4) of the views ``params`` (N, V, 7).

    The tail input is the map that enters the teacher's last ``tail_blocks`` residual blocks.
    """
    import torch

    from vqbench.models.student import TeacherTail, teacher_trunk
    from vqbench.models.teacher_torch import load_torch_teacher
    from vqbench.training.augment import render_views
    from vqbench.training.progress import progress_bar

    teacher = load_torch_teacher()
    tail = TeacherTail(teacher, tail_blocks)
    n_views = params.shape[1]
    embeddings = np.empty((len(chips), n_views, 128), dtype=np.float32)
    features = np.empty((len(chips), n_views, 256, 4, 4), dtype=np.float16)
    with progress_bar() as progress, torch.no_grad():
        task = progress.add_task(f"labelling {n_views} views per image with the teacher", total=len(chips), status="")
        for start in range(0, len(chips), batch_size):
            stop = min(start + batch_size, len(chips))
            for view in range(n_views):
                trunk = teacher_trunk(teacher, render_views(chips[start:stop], params[start:stop, view]), tail_blocks)
                features[start:stop, view] = trunk.numpy().astype(np.float16)
                embeddings[start:stop, view] = tail(trunk).numpy()
            progress.advance(task, stop - start)
    return embeddings, features


def add_teacher_views(prepared: PreparedSet, augment: "AugmentConfig", seed: int, cache_dir: Path, batch_size: int = 32) -> PreparedSet:
    """Append ``augment.extra_views`` random views per image, labelled by the teacher (cached)."""
    from vqbench.models.teacher_torch import TEACHER_DAT_SHA256
    from vqbench.training.augment import draw_view_params, view_params_sha256

    if augment.extra_views == 0:
        return prepared
    params = draw_view_params(len(prepared), augment, seed)
    digest = hashlib.sha256(f"{_PREPARED_FORMAT}|{TEACHER_DAT_SHA256}|{view_params_sha256(params)}".encode())
    digest.update(np.ascontiguousarray(prepared.chips).data)
    cache_file = cache_dir / f"views-{digest.hexdigest()[:20]}.npz"
    labels = load_cached_arrays(cache_file, ("embeddings", "features"))
    if labels is None:
        embeddings, features = label_views(prepared.chips, params[:, 2:], batch_size)
        save_cached_arrays(cache_file, {"embeddings": embeddings, "features": features})
        logger.info("labelled %d extra views per image and cached them in %s", augment.extra_views, cache_file)
    else:
        embeddings, features = labels["embeddings"], labels["features"]
        logger.info("loaded teacher labels of %d extra views per image from %s", augment.extra_views, cache_file)
    return PreparedSet(
        chips=prepared.chips,
        identities=prepared.identities,
        detected=prepared.detected,
        embeddings=np.concatenate([prepared.embeddings, embeddings], axis=1),
        features=np.concatenate([prepared.features, features], axis=1),
        view_params=params,
    )


def relabel_tail_inputs(prepared: PreparedSet, tail_blocks: int, cache_dir: Path, batch_size: int = 32) -> PreparedSet:
    """Replace every view's feature target by the map that enters the teacher's last ``tail_blocks`` blocks (cached).

    The prepared set and its extra views carry the input of the last block only. A student that
    reuses more of the teacher needs the map from an earlier cut, so every view is labelled again.
    """
    from vqbench.models.teacher_torch import TEACHER_DAT_SHA256
    from vqbench.training.augment import chip_and_flip_params, view_params_sha256

    if tail_blocks == 1:
        return prepared
    params = prepared.view_params if prepared.view_params is not None else chip_and_flip_params(len(prepared))
    digest = hashlib.sha256(f"{_PREPARED_FORMAT}|{TEACHER_DAT_SHA256}|{view_params_sha256(params)}|{tail_blocks}".encode())
    digest.update(np.ascontiguousarray(prepared.chips).data)
    cache_file = cache_dir / f"tail-inputs-{digest.hexdigest()[:20]}.npz"
    cached = load_cached_arrays(cache_file, ("features",))
    if cached is None:
        _, features = label_views(prepared.chips, params, batch_size, tail_blocks)
        save_cached_arrays(cache_file, {"features": features})
        logger.info("labelled the inputs of the teacher's last %d blocks for %d views per image", tail_blocks, params.shape[1])
    else:
        features = cached["features"]
        logger.info("loaded the inputs of the teacher's last %d blocks from %s", tail_blocks, cache_file)
    return dataclasses.replace(prepared, features=features)


def label_hint_maps(chips: np.ndarray, params: np.ndarray, grid: int, batch_size: int = 32) -> np.ndarray:
    """Return the teacher's last 128-channel map of the views ``params`` (N, V, 7), pooled to (N, V, 128, grid, grid).

    The map is 8x8 for a 150x150 chip. Adaptive average pooling to a larger grid, such as 10,
    averages overlapping windows of the 8x8 map.
    """
    import torch
    import torch.nn.functional as F

    from vqbench.models.teacher_torch import load_torch_teacher
    from vqbench.training.augment import render_views
    from vqbench.training.progress import progress_bar

    teacher = load_torch_teacher()
    n_views = params.shape[1]
    maps = np.empty((len(chips), n_views, HINT_CHANNELS, grid, grid), dtype=np.float16)
    with progress_bar() as progress, torch.no_grad():
        task = progress.add_task(f"labelling hint maps of {n_views} views per image", total=len(chips), status="")
        for start in range(0, len(chips), batch_size):
            stop = min(start + batch_size, len(chips))
            for view in range(n_views):
                stage = teacher.stage_output(render_views(chips[start:stop], params[start:stop, view]), HINT_CHANNELS)
                maps[start:stop, view] = F.adaptive_avg_pool2d(stage, grid).numpy().astype(np.float16)
            progress.advance(task, stop - start)
    return maps


def add_hint_maps(prepared: PreparedSet, grid: int, cache_dir: Path, batch_size: int = 32) -> PreparedSet:
    """Label every view of the prepared set with the encoder hint's target map (cached)."""
    from vqbench.models.teacher_torch import TEACHER_DAT_SHA256
    from vqbench.training.augment import chip_and_flip_params, view_params_sha256

    params = prepared.view_params if prepared.view_params is not None else chip_and_flip_params(len(prepared))
    digest = hashlib.sha256(
        f"{_PREPARED_FORMAT}|{TEACHER_DAT_SHA256}|{view_params_sha256(params)}|hint|{HINT_CHANNELS}|{grid}".encode()
    )
    digest.update(np.ascontiguousarray(prepared.chips).data)
    cache_file = cache_dir / f"hint-maps-{digest.hexdigest()[:20]}.npz"
    cached = load_cached_arrays(cache_file, ("hint_maps",))
    if cached is None:
        maps = label_hint_maps(prepared.chips, params, grid, batch_size)
        save_cached_arrays(cache_file, {"hint_maps": maps})
        logger.info("labelled hint maps of %d views per image and cached them in %s", params.shape[1], cache_file)
    else:
        maps = cached["hint_maps"]
        logger.info("loaded hint maps of %d views per image from %s", params.shape[1], cache_file)
    return dataclasses.replace(prepared, hint_maps=maps)


def channel_mean_std(maps: np.ndarray, chunk_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-channel mean and standard deviation (float32) of (N, V, C, H, W) maps.

    The sums run over chunks of ``chunk_rows`` images in float64, so no float32 copy of the
    whole array is made.
    """
    channels = maps.shape[2]
    total = np.zeros(channels)
    total_square = np.zeros(channels)
    for start in range(0, len(maps), chunk_rows):
        chunk = maps[start : start + chunk_rows].astype(np.float64)
        total += chunk.sum(axis=(0, 1, 3, 4))
        total_square += np.square(chunk).sum(axis=(0, 1, 3, 4))
    count = maps.size // channels
    mean = total / count
    variance = np.maximum(total_square / count - np.square(mean), 0.0)
    return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)


def _load_prepared(path: Path) -> PreparedSet | None:
    arrays = load_cached_arrays(path, _STORED_ARRAYS)
    return None if arrays is None else PreparedSet(**arrays)


def _save_prepared(path: Path, prepared: PreparedSet) -> None:
    save_cached_arrays(path, {name: getattr(prepared, name) for name in _STORED_ARRAYS})
    logger.info("cached %d prepared training images in %s", len(prepared), path)


def load_cached_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Return the named arrays of a cached ``.npz``, or None when it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logger.warning("cached training arrays %s are damaged (%s); computing them again", path, error)
        return None


def save_cached_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an ``.npz`` atomically, so an interrupted write leaves no damaged file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
