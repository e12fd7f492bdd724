"""Tests for the LFW pairs.txt parser and the identity-folder pair generator."""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from pathlib import Path

import pytest

from vqbench.data import folders
from vqbench.data.folders import make_folder_pairs, scan_identity_folders
from vqbench.data.pairs import Pair, people_in_folds, read_lfw_pairs
from vqbench.errors import DataError

SHARED_LFW = Path("/work/shared/data/lfw")
PAIRS_FILE = SHARED_LFW / "pairs.txt"
IMAGE_ROOT = SHARED_LFW / "lfw-deepfunneled"

needs_lfw = pytest.mark.skipif(not PAIRS_FILE.is_file(), reason="needs LFW pairs.txt in /work/shared")


@pytest.fixture(scope="module")
def lfw_pairs() -> list[Pair]:
    if not PAIRS_FILE.is_file():
        pytest.skip("needs LFW pairs.txt in /work/shared")
    return read_lfw_pairs(PAIRS_FILE, IMAGE_ROOT)


def _fold_people(pairs: list[Pair]) -> dict[int, set[str]]:
    folds = sorted({pair.fold for pair in pairs})
    return {fold: people_in_folds(p for p in pairs if p.fold == fold) for fold in folds}


# ---------------------------------------------------------------------------------------------
# LFW pairs.txt


def test_lfw_pairs_shape(lfw_pairs):
    assert len(lfw_pairs) == 6000
    assert [pair.index for pair in lfw_pairs] == list(range(6000))
    counts = Counter((pair.fold, pair.same) for pair in lfw_pairs)
    assert counts == {(fold, same): 300 for fold in range(1, 11) for same in (True, False)}


def test_lfw_pairs_order_within_fold(lfw_pairs):
    fold_one = [pair for pair in lfw_pairs if pair.fold == 1]
    assert all(pair.same for pair in fold_one[:300])
    assert not any(pair.same for pair in fold_one[300:])


def test_lfw_pairs_first_and_last(lfw_pairs):
    first, last = lfw_pairs[0], lfw_pairs[-1]
    assert first.path_a == IMAGE_ROOT / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    assert first.path_b == IMAGE_ROOT / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg"
    assert first.identity_a == first.identity_b == "Abel_Pacheco"
    assert (last.identity_a, last.identity_b) == ("Slobodan_Milosevic", "Sok_An")
    assert last.path_b == IMAGE_ROOT / "Sok_An" / "Sok_An_0001.jpg"


def test_lfw_pairs_images_exist(lfw_pairs):
    for pair in lfw_pairs[::250]:
        assert pair.path_a.is_file(), pair.path_a
        assert pair.path_b.is_file(), pair.path_b


def test_lfw_folds_disjoint_people(lfw_pairs):
    people = _fold_people(lfw_pairs)
    for fold_a, fold_b in itertools.combinations(people, 2):
        assert not people[fold_a] & people[fold_b], (fold_a, fold_b)
    assert len(people_in_folds(lfw_pairs)) == 4281


@needs_lfw
def test_lfw_fold_selection(lfw_pairs):
    selected = read_lfw_pairs(PAIRS_FILE, IMAGE_ROOT, folds=[9, 10])

    assert len(selected) == 1200
    assert {pair.fold for pair in selected} == {9, 10}
    assert selected == [pair for pair in lfw_pairs if pair.fold in (9, 10)]
    assert selected[0].index == 4800


def _write_sample(tmp_path: Path, folds: list[int], per_kind: int) -> Path:
    """Write a pairs file with the first ``per_kind`` pairs of each kind of LFW ``folds``."""
    lines = PAIRS_FILE.read_text().splitlines()
    out = [f"{len(folds)}\t{per_kind}"]
    for fold in folds:
        start = 1 + (fold - 1) * 600
        out += lines[start : start + per_kind]
        out += lines[start + 300 : start + 300 + per_kind]
    path = tmp_path / "sample_pairs.txt"
    path.write_text("\n".join(out) + "\n")
    return path


@needs_lfw
def test_lfw_relabelled_sample(lfw_pairs, tmp_path):
    sample_file = _write_sample(tmp_path, [9, 10], per_kind=5)

    sample = read_lfw_pairs(sample_file, IMAGE_ROOT, fold_numbers=[9, 10])

    assert len(sample) == 20
    assert [pair.fold for pair in sample] == [9] * 10 + [10] * 10
    assert [pair.index for pair in sample] == list(range(20))
    full_fold_nine = [pair for pair in lfw_pairs if pair.fold == 9]
    expected = full_fold_nine[:5] + full_fold_nine[300:305]
    assert [(p.path_a, p.path_b, p.same) for p in sample[:10]] == [
        (p.path_a, p.path_b, p.same) for p in expected
    ]


@needs_lfw
def test_lfw_relabelled_selection(tmp_path):
    sample_file = _write_sample(tmp_path, [9, 10], per_kind=3)

    selected = read_lfw_pairs(sample_file, IMAGE_ROOT, folds=[10], fold_numbers=[9, 10])

    assert [pair.fold for pair in selected] == [10] * 6
    assert [pair.index for pair in selected] == list(range(6, 12))


@needs_lfw
def test_lfw_unlabelled_sample_numbers_from_one(tmp_path):
    sample_file = _write_sample(tmp_path, [9, 10], per_kind=2)

    assert {pair.fold for pair in read_lfw_pairs(sample_file, IMAGE_ROOT)} == {1, 2}


@needs_lfw
@pytest.mark.parametrize(
    ("folds", "fold_numbers", "message"),
    [
        ([3], [9, 10], r"folds \[3\] are not in"),
        (None, [9], "has 1 entries but .* contains 2 folds"),
        (None, [9, 9], "must be distinct integers >= 1"),
        (None, [0, 1], "must be distinct integers >= 1"),
        ([11], None, r"folds \[11\] are not in .* contains folds \[1, 2\]"),
    ],
)
def test_lfw_bad_fold_arguments(tmp_path, folds, fold_numbers, message):
    sample_file = _write_sample(tmp_path, [9, 10], per_kind=2)

    with pytest.raises(DataError, match=message):
        read_lfw_pairs(sample_file, IMAGE_ROOT, folds=folds, fold_numbers=fold_numbers)


GOOD_LINES = ["1 2", "Ann 1 2", "Bob 1 3", "Ann 1 Bob 2", "Cy 2 Dee 1"]


@pytest.mark.parametrize(
    ("lines", "line_number", "message"),
    [
        (["", *GOOD_LINES[1:]], 1, "invalid header ''"),
        (["10", *GOOD_LINES[1:]], 1, "invalid header '10'"),
        (["x 2", *GOOD_LINES[1:]], 1, "invalid header"),
        (["1 0"], 1, "invalid header"),
        (["1 2", "Ann 1", *GOOD_LINES[2:]], 2, "expected a matched pair `name i j`"),
        (["1 2", "Ann 1 Bob 2", *GOOD_LINES[2:]], 2, "expected a matched pair"),
        (["1 2", "Ann one 2", *GOOD_LINES[2:]], 2, "invalid image number 'one'"),
        (["1 2", "Ann 0 2", *GOOD_LINES[2:]], 2, "invalid image number '0'"),
        (["1 2", "Ann 2 2", *GOOD_LINES[2:]], 2, "matched pair 'Ann 2 2' compares an image with itself"),
        (["1 2", ".. 1 2", *GOOD_LINES[2:]], 2, "invalid person name '..'"),
        (["1 2", "../etc 1 2", *GOOD_LINES[2:]], 2, "invalid person name '../etc'"),
        (["1 2", "a/b 1 2", *GOOD_LINES[2:]], 2, "invalid person name 'a/b'"),
        (["1 2", "3 1 2", *GOOD_LINES[2:]], 2, "expected a person name, found the number '3'"),
        ([*GOOD_LINES[:3], "Ann 1 2", GOOD_LINES[4]], 4, "expected a mismatched pair"),
        ([*GOOD_LINES[:3], "Ann 1 Ann 2", GOOD_LINES[4]], 4, "mismatched pair 'Ann 1 Ann 2' names the same person twice"),
        (GOOD_LINES[:4], 5, "missing pair line; the header `1 2` promises 5 lines"),
        ([*GOOD_LINES[:4], "", GOOD_LINES[4]], 5, "missing pair line"),
        ([*GOOD_LINES, "", "Eve 1 2"], 7, "unexpected line after the 4 pairs"),
    ],
)
def test_lfw_malformed_pairs(tmp_path, lines, line_number, message):
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match=f"pairs.txt:{line_number}: {message}"):
        read_lfw_pairs(path, tmp_path)


def test_lfw_small_file_parses(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(GOOD_LINES) + "\n\n")

    pairs = read_lfw_pairs(path, tmp_path / "img")

    assert [pair.same for pair in pairs] == [True, True, False, False]
    assert pairs[2].path_b == tmp_path / "img" / "Bob" / "Bob_0002.jpg"
    assert people_in_folds(pairs) == {"Ann", "Bob", "Cy", "Dee"}


def test_lfw_missing_file(tmp_path):
    with pytest.raises(DataError, match="pairs file not found: .*vqbench data fetch lfw"):
        read_lfw_pairs(tmp_path / "absent.txt", tmp_path)


# ---------------------------------------------------------------------------------------------
# Identity folders


def _make_tree(root: Path, counts: list[int]) -> Path:
    """Create identities person00, person01, ... with the given image counts and mixed suffixes."""
    suffixes = [".jpg", ".JPG", ".png", ".jpeg", ".WebP"]
    for number, count in enumerate(counts):
        folder = root / f"person{number:02d}"
        folder.mkdir(parents=True)
        for image in range(count):
            (folder / f"img{image}{suffixes[image % len(suffixes)]}").write_bytes(b"x")
        (folder / "notes.txt").write_text("not an image")
        (folder / ".hidden.jpg").write_bytes(b"x")
        (folder / "nested").mkdir()
    (root / ".cache").mkdir()
    (root / ".cache" / "a.jpg").write_bytes(b"x")
    (root / "loose.jpg").write_bytes(b"x")
    (root / "empty_person").mkdir()
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    # 40 identities: 30 with 2 to 6 images and 10 with one image.
    counts = [2 + number % 5 for number in range(30)] + [1] * 10
    return _make_tree(tmp_path / "faces", counts)


def _assert_valid_pairs(pairs: list[Pair]) -> None:
    for pair in pairs:
        assert (pair.identity_a == pair.identity_b) == pair.same, pair
        assert pair.path_a != pair.path_b, pair
        assert pair.path_a.parent.name == pair.identity_a
        assert pair.path_b.parent.name == pair.identity_b
    unordered = {frozenset((pair.path_a, pair.path_b)) for pair in pairs}
    assert len(unordered) == len(pairs), "a pair repeats"
    assert [pair.index for pair in pairs] == list(range(len(pairs)))


def test_scan_identity_folders(tree):
    dataset = scan_identity_folders(tree)

    assert len(dataset.images) == 40
    assert "empty_person" not in dataset.images
    assert dataset.image_count == sum(2 + number % 5 for number in range(30)) + 10
    assert [path.name for path in dataset.images["person04"]] == [
        "img0.jpg", "img1.JPG", "img2.png", "img3.jpeg", "img4.WebP", "img5.jpg"
    ]


@pytest.mark.parametrize("make", [lambda root: root / "absent", lambda root: root])
def test_scan_rejects_empty_or_missing(tmp_path, make):
    with pytest.raises(DataError, match="ROOT/<identity>/<image>"):
        scan_identity_folders(make(tmp_path))


def test_folder_pairs_balanced_disjoint(tree):
    pairs = make_folder_pairs(tree, n_folds=5, pairs_per_fold=20, seed=3)

    counts = Counter((pair.fold, pair.same) for pair in pairs)
    assert counts == {(fold, same): 10 for fold in range(1, 6) for same in (True, False)}
    people = _fold_people(pairs)
    for fold_a, fold_b in itertools.combinations(people, 2):
        assert not people[fold_a] & people[fold_b], (fold_a, fold_b)
    _assert_valid_pairs(pairs)


def test_folder_pairs_matched_before_mismatched(tree):
    pairs = make_folder_pairs(tree, n_folds=2, pairs_per_fold=8, seed=0)

    assert [pair.same for pair in pairs] == ([True] * 4 + [False] * 4) * 2
    assert [pair.fold for pair in pairs] == [1] * 8 + [2] * 8


def test_folder_pairs_seeded(tree):
    first = make_folder_pairs(tree, n_folds=4, pairs_per_fold=12, seed=7)
    again = make_folder_pairs(tree, n_folds=4, pairs_per_fold=12, seed=7)
    other = make_folder_pairs(tree, n_folds=4, pairs_per_fold=12, seed=8)

    assert first == again
    assert first != other


def test_folder_pairs_spread_over_identities(tree):
    pairs = make_folder_pairs(tree, n_folds=1, pairs_per_fold=60, seed=1)

    # 30 identities can form matched pairs, so 30 matched pairs give one to each.
    matched = Counter(pair.identity_a for pair in pairs if pair.same)
    assert len(matched) == 30
    assert set(matched.values()) == {1}


def test_folder_pairs_reduced_to_capacity(tmp_path, caplog):
    # Fold capacity: 3 identities with 2 images give 3 matched pairs per fold at most.
    root = _make_tree(tmp_path / "faces", [2] * 6 + [1] * 2)
    caplog.set_level(logging.WARNING, logger="vqbench.data.folders")

    pairs = make_folder_pairs(root, n_folds=2, pairs_per_fold=20, seed=0)

    assert "each fold gets 3 matched and 3 mismatched pairs instead of 10" in caplog.text
    counts = Counter((pair.fold, pair.same) for pair in pairs)
    assert counts == {(fold, same): 3 for fold in (1, 2) for same in (True, False)}
    _assert_valid_pairs(pairs)


def test_folder_pairs_share_identities_when_too_few(tmp_path, caplog):
    root = _make_tree(tmp_path / "faces", [4, 4, 3])
    caplog.set_level(logging.WARNING, logger="vqbench.data.folders")

    pairs = make_folder_pairs(root, n_folds=3, pairs_per_fold=4, seed=0)

    assert "too few for 3 identity-disjoint folds" in caplog.text
    assert "folds share identities" in caplog.text
    counts = Counter((pair.fold, pair.same) for pair in pairs)
    assert counts == {(fold, same): 2 for fold in (1, 2, 3) for same in (True, False)}
    _assert_valid_pairs(pairs)


def test_folder_pairs_require_disjoint(tmp_path):
    root = _make_tree(tmp_path / "faces", [4, 4, 3])

    with pytest.raises(DataError, match="use fewer folds or add identities"):
        make_folder_pairs(root, n_folds=3, pairs_per_fold=4, require_disjoint=True)


def test_folder_pairs_many_per_identity_pair(tmp_path):
    # Two identities of 3 images: 6 matched and 9 mismatched pairs exist, and only one pair of
    # identities, so the mismatched pairs must reuse it with different images.
    root = _make_tree(tmp_path / "faces", [3, 3])

    pairs = make_folder_pairs(root, n_folds=1, pairs_per_fold=12, seed=0)

    assert sum(pair.same for pair in pairs) == 6
    assert sum(not pair.same for pair in pairs) == 6
    _assert_valid_pairs(pairs)


def test_folder_pairs_too_small(tmp_path):
    root = _make_tree(tmp_path / "faces", [1, 1, 1])

    with pytest.raises(DataError, match="cannot supply one matched and one mismatched pair"):
        make_folder_pairs(root, n_folds=1, pairs_per_fold=2)


@pytest.mark.parametrize(
    ("n_folds", "pairs_per_fold", "message"),
    [
        (0, 10, "n_folds=0 is invalid"),
        (2, 7, "pairs_per_fold=7 is invalid"),
        (2, 0, "pairs_per_fold=0"),
    ],
)
def test_folder_pairs_bad_arguments(tree, n_folds, pairs_per_fold, message):
    with pytest.raises(DataError, match=message):
        make_folder_pairs(tree, n_folds=n_folds, pairs_per_fold=pairs_per_fold)


@pytest.mark.parametrize("size", [2, 3, 7, 50])
def test_unrank_pair_covers_combinations(size):
    ranks = [folders._unrank_pair(rank) for rank in range(math.comb(size, 2))]

    assert sorted(ranks) == list(itertools.combinations(range(size), 2))


def test_round_robin_quotas():
    assert folders._round_robin_quotas([5, 1, 0, 3], 7) == [3, 1, 0, 3]
    assert folders._round_robin_quotas([5, 5], 3) == [2, 1]
    assert folders._round_robin_quotas([2, 2], 0) == [0, 0]
