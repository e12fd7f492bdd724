"""Generic identity-folder data sets (``ROOT/<identity>/<image>``) and seeded verification pairs.

Any data set laid out as one folder per person can be benchmarked like LFW: the folder name is
the identity, and every ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` file directly inside it (any
letter case) is one image. Hidden entries (names starting with ``.``) and subfolders inside an
identity folder are ignored.

``make_folder_pairs`` builds an LFW-style protocol from such a tree with these rules:

- **Folds are identity-disjoint when possible.** Identities are shuffled with the seed and dealt
  round-robin to the folds, those with two or more images first, so each fold gets a near-equal
  share of the identities that can form matched pairs. Both images of every pair in a fold come
  from that fold's identities. This needs at least ``n_folds`` identities with two or more
  images and ``2 * n_folds`` identities in all. With fewer, every fold draws from all
  identities (with a logged warning), and only the pairs themselves stay distinct across folds.
- **Folds are balanced.** Every fold contains the same number of matched and mismatched pairs,
  ``pairs_per_fold // 2`` of each, reduced with a warning to what the smallest fold can supply.
- **Pairs are spread over identities.** Matched pairs are shared round-robin among the
  identities, so one person with hundreds of images does not dominate, and no image pair
  repeats. Mismatched pairs use distinct pairs of identities, with a random image of each,
  while enough identity pairs exist.
- **The seed fixes everything.** The same tree, arguments and seed give the same pairs.

Within a fold, matched pairs come before mismatched pairs, each sorted by identity as in LFW's
``pairs.txt``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vqbench.data.pairs import Pair
from vqbench.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


@dataclass(frozen=True)
class IdentityFolders:
    """Images of an identity-folder tree, keyed by identity, each list sorted by file name."""

    root: Path
    images: Mapping[str, tuple[Path, ...]]

    @property
    def image_count(self) -> int:
        """Number of images in all identities."""
        return sum(len(paths) for paths in self.images.values())


# One drawn pair before it gets its fold and protocol position: (name_a, path_a, name_b, path_b).
_Drawn = tuple[str, Path, str, Path]


def scan_identity_folders(root: Path) -> IdentityFolders:
    """List the images of ``root/<identity>/<image>``; identities without images are left out.

    Raises DataError when ``root`` is not a folder or contains no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"identity-folder data set {root} is not a folder; expected ROOT/<identity>/<image>"
        )
    images: dict[str, tuple[Path, ...]] = {}
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        paths = tuple(
            path
            for path in sorted(folder.iterdir())
            if not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_SUFFIXES
            and path.is_file()
        )
        if paths:
            images[folder.name] = paths
    if not images:
        raise DataError(
            f"no images found in {root}; expected ROOT/<identity>/<image> with image suffixes "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    logger.debug("found %d identities under %s", len(images), root)
    return IdentityFolders(root=root, images=images)


def make_folder_pairs(
    root: Path,
    n_folds: int = 10,
    pairs_per_fold: int = 600,
    seed: int = 0,
    *,
    require_disjoint: bool = False,
) -> list[Pair]:
    """Generate balanced genuine and impostor pairs from an identity-folder tree, in folds.

    ``pairs_per_fold`` counts both kinds, half matched and half mismatched, so the LFW View 2
    shape is ``n_folds=10, pairs_per_fold=600``. The module docstring states the rules.
    ``require_disjoint=True`` raises DataError instead of falling back to folds that share
    identities. Raises DataError for invalid arguments or a tree too small for one pair of each
    kind per fold.
    """
    _check_arguments(n_folds, pairs_per_fold)
    dataset = scan_identity_folders(root)
    rng = random.Random(seed)

    folds = _deal_identities(dataset.images, n_folds, rng)
    if folds is None:
        if require_disjoint:
            raise DataError(_too_few_identities_message(dataset, n_folds))
        logger.warning(
            "%s; folds share identities instead", _too_few_identities_message(dataset, n_folds)
        )
        draws = _draw_shared(dataset.images, n_folds, pairs_per_fold // 2, rng)
    else:
        draws = _draw_disjoint(dataset.images, folds, pairs_per_fold // 2, rng)

    pairs = _number_pairs(draws)
    logger.info(
        "made %d pairs in %d folds from %d identities under %s (seed %d)",
        len(pairs),
        n_folds,
        len(dataset.images),
        dataset.root,
        seed,
    )
    return pairs


def _check_arguments(n_folds: int, pairs_per_fold: int) -> None:
    if n_folds < 1:
        raise DataError(f"n_folds={n_folds} is invalid; use 1 or more (LFW uses 10)")
    if pairs_per_fold < 2 or pairs_per_fold % 2:
        raise DataError(
            f"pairs_per_fold={pairs_per_fold} is invalid; use an even number >= 2, half "
            f"matched and half mismatched (LFW uses 600)"
        )


def _too_few_identities_message(dataset: IdentityFolders, n_folds: int) -> str:
    multi = sum(1 for paths in dataset.images.values() if len(paths) >= 2)
    return (
        f"{dataset.root} has {multi} identities with two or more images and "
        f"{len(dataset.images)} in all, too few for {n_folds} identity-disjoint folds "
        f"(needs {n_folds} and {2 * n_folds}); use fewer folds or add identities"
    )


# ---------------------------------------------------------------------------------------------
# Folds


def _deal_identities(
    images: Mapping[str, Sequence[Path]], n_folds: int, rng: random.Random
) -> list[list[str]] | None:
    """Deal identities to folds round-robin; return None when the folds cannot be disjoint."""
    multi = [name for name, paths in images.items() if len(paths) >= 2]
    single = [name for name, paths in images.items() if len(paths) < 2]
    if len(multi) < n_folds or len(images) < 2 * n_folds:
        return None
    rng.shuffle(multi)
    rng.shuffle(single)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for position, name in enumerate(multi + single):
        folds[position % n_folds].append(name)
    return folds


def _draw_disjoint(
    images: Mapping[str, Sequence[Path]],
    folds: list[list[str]],
    per_kind: int,
    rng: random.Random,
) -> list[tuple[list[_Drawn], list[_Drawn]]]:
    capacity = min(_capacity(images, names) for names in folds)
    count = _limit_count(per_kind, capacity, len(folds))
    return [
        (_draw_matched(images, names, count, rng), _draw_mismatched(images, names, count, rng))
        for names in folds
    ]


def _draw_shared(
    images: Mapping[str, Sequence[Path]], n_folds: int, per_kind: int, rng: random.Random
) -> list[tuple[list[_Drawn], list[_Drawn]]]:
    names = list(images)
    rng.shuffle(names)
    count = _limit_count(per_kind, _capacity(images, names) // n_folds, n_folds)
    matched = _draw_matched(images, names, count * n_folds, rng)
    mismatched = _draw_mismatched(images, names, count * n_folds, rng)
    rng.shuffle(matched)
    rng.shuffle(mismatched)
    return [
        (matched[fold * count : (fold + 1) * count], mismatched[fold * count : (fold + 1) * count])
        for fold in range(n_folds)
    ]


def _capacity(images: Mapping[str, Sequence[Path]], names: Sequence[str]) -> int:
    """Return how many distinct pairs of each kind ``names`` can supply (the smaller count)."""
    sizes = [len(images[name]) for name in names]
    matched = sum(math.comb(size, 2) for size in sizes)
    mismatched = (sum(sizes) ** 2 - sum(size * size for size in sizes)) // 2
    return min(matched, mismatched)


def _limit_count(per_kind: int, capacity: int, n_folds: int) -> int:
    if capacity < 1:
        raise DataError(
            f"the data set cannot supply one matched and one mismatched pair for each of "
            f"{n_folds} folds; it needs an identity with two or more images and at least two "
            f"identities per fold. Use fewer folds or add images"
        )
    if capacity < per_kind:
        logger.warning(
            "each fold gets %d matched and %d mismatched pairs instead of %d, because the "
            "smallest fold cannot supply more distinct pairs",
            capacity,
            capacity,
            per_kind,
        )
    return min(per_kind, capacity)


# ---------------------------------------------------------------------------------------------
# Pairs


def _draw_matched(
    images: Mapping[str, Sequence[Path]], names: Sequence[str], count: int, rng: random.Random
) -> list[_Drawn]:
    caps = [math.comb(len(images[name]), 2) for name in names]
    pairs: list[_Drawn] = []
    for name, quota in zip(names, _round_robin_quotas(caps, count), strict=True):
        paths = images[name]
        for rank in rng.sample(range(math.comb(len(paths), 2)), quota):
            first, second = _unrank_pair(rank)
            pairs.append((name, paths[first], name, paths[second]))
    return pairs


def _draw_mismatched(
    images: Mapping[str, Sequence[Path]], names: Sequence[str], count: int, rng: random.Random
) -> list[_Drawn]:
    identity_pairs = math.comb(len(names), 2)
    if count <= identity_pairs:
        # One image pair per identity pair, the identity pairs drawn without replacement.
        pairs: list[_Drawn] = []
        for rank in rng.sample(range(identity_pairs), count):
            first, second = _unrank_pair(rank)
            name_a, name_b = names[first], names[second]
            pairs.append(
                (name_a, rng.choice(images[name_a]), name_b, rng.choice(images[name_b]))
            )
        return pairs

    # Few identities: several image pairs per identity pair, shared round-robin.
    couples = [_unrank_pair(rank) for rank in range(identity_pairs)]
    caps = [len(images[names[a]]) * len(images[names[b]]) for a, b in couples]
    pairs: list[_Drawn] = []
    for (first, second), quota in zip(couples, _round_robin_quotas(caps, count), strict=True):
        paths_a, paths_b = images[names[first]], images[names[second]]
        for rank in rng.sample(range(len(paths_a) * len(paths_b)), quota):
            index_a, index_b = divmod(rank, len(paths_b))
            pairs.append((names[first], paths_a[index_a], names[second], paths_b[index_b]))
    return pairs


def _round_robin_quotas(caps: Sequence[int], total: int) -> list[int]:
    """Share ``total`` among buckets one unit per round, skipping full buckets."""
    quotas = [0] * len(caps)
    remaining = total
    open_buckets = [index for index, cap in enumerate(caps) if cap > 0]
    while remaining and open_buckets:
        for index in open_buckets[:remaining]:
            quotas[index] += 1
        remaining -= min(remaining, len(open_buckets))
        open_buckets = [index for index in open_buckets if quotas[index] < caps[index]]
    if remaining:
        raise AssertionError(f"quotas short by {remaining}; capacity was checked before")
    return quotas


def _unrank_pair(rank: int) -> tuple[int, int]:
    """Map ``rank`` in ``range(comb(n, 2))`` to the pair ``(i, j)``, ``i < j``, for any n."""
    # Pairs are ordered by j, then i: rank = j * (j - 1) / 2 + i.
    second = (1 + math.isqrt(1 + 8 * rank)) // 2
    first = rank - second * (second - 1) // 2
    return first, second


def _number_pairs(draws: Sequence[tuple[list[_Drawn], list[_Drawn]]]) -> list[Pair]:
    pairs: list[Pair] = []
    for fold, (matched, mismatched) in enumerate(draws, start=1):
        for same, draw in ((True, matched), (False, mismatched)):
            for name_a, path_a, name_b, path_b in sorted(draw):
                pairs.append(
                    Pair(
                        fold=fold,
                        index=len(pairs),
                        path_a=path_a,
                        path_b=path_b,
                        same=same,
                        identity_a=name_a,
                        identity_b=name_b,
                    )
                )
    return pairs
