"""Resolve a scenario's data set into pairs and the images they use.

Images are read once. A file that is missing or cannot be decoded is reported by path and
left out together with every pair that uses it, so one bad file does not end a run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from vqbench.data.pairs import Pair, read_lfw_pairs
from vqbench.errors import DataError
from vqbench.scenario import DATA_DIR_ENV, DatasetConfig, default_data_dir, expand_path

logger = logging.getLogger(__name__)

#: File beside a pairs file that relabels its folds, e.g. ``{"fold_numbers": [9, 10]}``.
SAMPLE_MANIFEST = "vqbench-sample.json"
LFW_IMAGE_FOLDER = "lfw-deepfunneled"


@dataclass(frozen=True)
class ImageRecord:
    """One image file used by the pairs: its path and bytes."""

    index: int
    path: Path
    data: bytes


@dataclass
class EvaluationSet:
    """Pairs to score and the distinct images they reference."""

    root: Path
    pairs: list[Pair]
    images: list[ImageRecord]
    image_index: dict[Path, int]
    skipped_images: dict[str, str] = field(default_factory=dict)
    skipped_pairs: int = 0

    @property
    def folds(self) -> list[int]:
        return sorted({pair.fold for pair in self.pairs})


def resolve_dataset_root(config: DatasetConfig, scenario_dir: Path) -> Path:
    """Return the data set folder named by the scenario, or the default LFW location."""
    if config.root:
        return expand_path(config.root, scenario_dir)
    return default_data_dir() / "lfw"


def missing_data_message(root: Path) -> str:
    """Explain where LFW was looked for and how to get it."""
    # `vqbench data fetch lfw --dest D` writes D/lfw, so it fills ``root`` only when root is named lfw.
    fetch_hint = (
        f"run `vqbench data fetch lfw --dest {root.parent}`"
        if root.name == "lfw"
        else f"run `vqbench data fetch lfw --dest DIR` and set dataset.root to DIR/lfw"
    )
    return (
        f"LFW not found at {root} (checked dataset.root, else ${{{DATA_DIR_ENV}}}/lfw, else ~/.cache/vqbench/data/lfw); "
        f"{fetch_hint}, set {DATA_DIR_ENV} to the folder that holds lfw/, or set dataset.download: true"
    )


def load_pairs(config: DatasetConfig, root: Path, scenario_dir: Path) -> list[Pair]:
    """Read the pairs protocol of an LFW-layout or identity-folder data set."""
    if config.kind == "folders":
        from vqbench.data.folders import make_folder_pairs

        if not root.is_dir():
            raise DataError(f"identity folder data set not found: {root}; set dataset.root to ROOT/<identity>/<image>")
        pairs = make_folder_pairs(
            root, n_folds=config.folders_n_folds, pairs_per_fold=config.folders_pairs_per_fold, seed=config.seed
        )
    else:
        pairs_file = expand_path(config.pairs_file, scenario_dir) if config.pairs_file else root / "pairs.txt"
        if not pairs_file.is_file():
            raise DataError(missing_data_message(root) if not root.exists() else f"pairs file not found: {pairs_file}")
        pairs = read_lfw_pairs(pairs_file, root / LFW_IMAGE_FOLDER, fold_numbers=sample_fold_numbers(pairs_file))

    available = sorted({pair.fold for pair in pairs})
    if config.folds:
        unknown = sorted(set(config.folds) - set(available))
        if unknown:
            raise DataError(f"dataset.folds {unknown} are not in the pairs file; available folds: {available}")
        pairs = [pair for pair in pairs if pair.fold in set(config.folds)]
    if config.max_pairs:
        pairs = limit_pairs(pairs, config.max_pairs)
    return pairs


def sample_fold_numbers(pairs_file: Path) -> list[int] | None:
    """Return the View 2 fold numbers a sample's manifest gives for its pairs file, or None for full LFW."""
    manifest = pairs_file.parent / SAMPLE_MANIFEST
    if not manifest.is_file():
        return None
    try:
        return [int(fold) for fold in json.loads(manifest.read_text())["fold_numbers"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{manifest} is invalid ({error}); it must hold {{\"fold_numbers\": [..]}}") from error


def limit_pairs(pairs: list[Pair], max_pairs: int) -> list[Pair]:
    """Keep at most ``max_pairs``, balanced over folds and over matched and mismatched pairs.

    Each fold keeps at least one matched and one mismatched pair, so that every fold can be
    scored. With fewer than two pairs per fold allowed, that minimum exceeds ``max_pairs``.
    """
    folds = sorted({pair.fold for pair in pairs})
    per_group = max(1, max_pairs // (2 * len(folds)))
    kept: list[Pair] = []
    for fold in folds:
        for same in (True, False):
            group = [pair for pair in pairs if pair.fold == fold and pair.same == same]
            kept.extend(group[:per_group])
    return sorted(kept, key=lambda pair: pair.index)


def read_images(pairs: list[Pair], root: Path) -> EvaluationSet:
    """Read every image the pairs use; skip unreadable ones and the pairs that use them."""
    from vqbench.data.align import CorruptImageError, decode_image

    unique_paths = list(dict.fromkeys(path for pair in pairs for path in (pair.path_a, pair.path_b)))
    images: list[ImageRecord] = []
    image_index: dict[Path, int] = {}
    skipped: dict[str, str] = {}
    for path in unique_paths:
        try:
            data = path.read_bytes()
            decode_image(data, str(path))
        except FileNotFoundError:
            skipped[str(path)] = "file not found"
            continue
        except (OSError, CorruptImageError) as error:
            skipped[str(path)] = str(error)
            continue
        image_index[path] = len(images)
        images.append(ImageRecord(index=len(images), path=path, data=data))

    for path, reason in skipped.items():
        logger.warning("skipping image %s: %s", path, reason)
    kept_pairs = [pair for pair in pairs if pair.path_a in image_index and pair.path_b in image_index]
    return EvaluationSet(
        root=root,
        pairs=kept_pairs,
        images=images,
        image_index=image_index,
        skipped_images=skipped,
        skipped_pairs=len(pairs) - len(kept_pairs),
    )
