"""Verification pairs: the Pair record and the LFW View 2 ``pairs.txt`` parser.

``pairs.txt`` (LFW README, section 3c) starts with a line ``n_folds n_per_fold``. Each fold
follows as ``n_per_fold`` matched lines ``name i j`` and then ``n_per_fold`` mismatched lines
``name1 i name2 j``, where ``i`` and ``j`` are 1-based image numbers and image ``i`` of ``name``
is ``name/name_%04d.jpg``. The full View 2 file has 10 folds of 300 + 300 pairs, and people
do not repeat across its folds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vqbench.errors import DataError

logger = logging.getLogger(__name__)

FETCH_HINT = "run `vqbench data fetch lfw` or point the scenario at a local LFW copy"


@dataclass(frozen=True)
class Pair:
    """Two face images to verify, and whether they show the same person."""

    fold: int  # 1-based fold number
    index: int  # 0-based position within the whole protocol (the parsed file for LFW)
    path_a: Path
    path_b: Path
    same: bool
    identity_a: str
    identity_b: str


def lfw_image_path(image_root: Path, name: str, number: int) -> Path:
    """Return the path of image ``number`` (1-based) of ``name`` in the LFW layout."""
    return image_root / name / f"{name}_{number:04d}.jpg"


def people_in_folds(pairs: Iterable[Pair]) -> set[str]:
    """Return every identity that appears on either side of the given pairs."""
    people: set[str] = set()
    for pair in pairs:
        people.add(pair.identity_a)
        people.add(pair.identity_b)
    return people


def read_lfw_pairs(
    pairs_file: Path,
    image_root: Path,
    folds: list[int] | None = None,
    fold_numbers: list[int] | None = None,
) -> list[Pair]:
    """Parse an LFW View 2 ``pairs.txt`` into pairs, in file order.

    ``fold_numbers`` relabels the folds of a file that contains a subset of View 2: a sample file
    with 2 folds taken from LFW folds 9 and 10 is read with ``fold_numbers=[9, 10]``. Without
    it the folds are numbered 1 to ``n_folds``. ``folds`` keeps only the pairs of those fold
    numbers (after relabelling). ``Pair.index`` is the pair's position in the file, so it does
    not change when ``folds`` selects a subset.

    Raises DataError naming the file, the line number and the fix when the file is missing,
    its header or a line is malformed, or the line count does not match the header.
    """
    pairs_file = Path(pairs_file)
    lines = _read_lines(pairs_file)
    n_folds, n_per_fold = _parse_header(pairs_file, lines)
    labels = _fold_labels(pairs_file, n_folds, fold_numbers)
    selected = _selected_folds(pairs_file, labels, folds)

    pairs: list[Pair] = []
    line_number = 1
    index = 0
    for label in labels:
        for same in (True, False):
            for _ in range(n_per_fold):
                line_number += 1
                text = _pair_line(pairs_file, lines, line_number, n_folds, n_per_fold)
                if label in selected:
                    pairs.append(
                        _parse_pair(pairs_file, line_number, text, same, label, index, image_root)
                    )
                index += 1

    _reject_trailing_lines(pairs_file, lines, line_number)
    logger.debug("read %d pairs from %s (folds %s)", len(pairs), pairs_file, sorted(selected))
    return pairs


def _read_lines(pairs_file: Path) -> list[str]:
    try:
        return pairs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"pairs file not found: {pairs_file}; {FETCH_HINT}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"cannot read pairs file {pairs_file}: {error}; {FETCH_HINT}"
        ) from error


def _parse_header(pairs_file: Path, lines: Sequence[str]) -> tuple[int, int]:
    header = lines[0].split() if lines else []
    if len(header) != 2 or not all(_is_positive_int(field) for field in header):
        header_line = lines[0] if lines else ""
        raise DataError(
            f"{pairs_file}:1: invalid header {header_line!r}; expected `n_folds n_per_fold` "
            f"as two positive integers (View 2 has `10 300`)"
        )
    return int(header[0]), int(header[1])


def _fold_labels(
    pairs_file: Path, n_folds: int, fold_numbers: list[int] | None
) -> list[int]:
    if fold_numbers is None:
        return list(range(1, n_folds + 1))
    labels = list(fold_numbers)
    if len(labels) != n_folds:
        raise DataError(
            f"fold_numbers {labels} has {len(labels)} entries but {pairs_file} contains "
            f"{n_folds} folds; give one fold number per fold in the file"
        )
    if any(label < 1 for label in labels) or len(set(labels)) != len(labels):
        raise DataError(
            f"fold_numbers {labels} for {pairs_file} must be distinct integers >= 1"
        )
    return labels


def _selected_folds(pairs_file: Path, labels: list[int], folds: list[int] | None) -> set[int]:
    if folds is None:
        return set(labels)
    missing = sorted(set(folds) - set(labels))
    if missing:
        raise DataError(
            f"folds {missing} are not in {pairs_file}, which contains folds {labels}; "
            f"choose from those (or set fold_numbers if the file contains a subset of View 2)"
        )
    return set(folds)


def _pair_line(
    pairs_file: Path, lines: Sequence[str], line_number: int, n_folds: int, n_per_fold: int
) -> str:
    if line_number > len(lines) or not lines[line_number - 1].strip():
        expected = 1 + n_folds * 2 * n_per_fold
        raise DataError(
            f"{pairs_file}:{line_number}: missing pair line; the header `{n_folds} "
            f"{n_per_fold}` promises {expected} lines in all. The file is truncated; "
            f"fetch it again ({FETCH_HINT})"
        )
    return lines[line_number - 1]


def _parse_pair(
    pairs_file: Path,
    line_number: int,
    text: str,
    same: bool,
    fold: int,
    index: int,
    image_root: Path,
) -> Pair:
    fields = text.split()
    where = f"{pairs_file}:{line_number}"
    if same:
        if len(fields) != 3:
            raise DataError(
                f"{where}: expected a matched pair `name i j`, found {text!r}; "
                f"each fold lists its matched pairs before its mismatched pairs"
            )
        name_a, number_a, number_b = fields
        name_b = name_a
    else:
        if len(fields) != 4:
            raise DataError(
                f"{where}: expected a mismatched pair `name1 i name2 j`, found {text!r}; "
                f"each fold lists its matched pairs before its mismatched pairs"
            )
        name_a, number_a, name_b, number_b = fields

    for name in (name_a, name_b):
        _check_name(where, name)
    for number in (number_a, number_b):
        if not _is_positive_int(number):
            raise DataError(
                f"{where}: invalid image number {number!r} in {text!r}; "
                f"image numbers are integers >= 1"
            )
    if same and number_a == number_b:
        raise DataError(f"{where}: matched pair {text!r} compares an image with itself")
    if not same and name_a == name_b:
        raise DataError(
            f"{where}: mismatched pair {text!r} names the same person twice; "
            f"a matched pair is written `name i j`"
        )

    return Pair(
        fold=fold,
        index=index,
        path_a=lfw_image_path(image_root, name_a, int(number_a)),
        path_b=lfw_image_path(image_root, name_b, int(number_b)),
        same=same,
        identity_a=name_a,
        identity_b=name_b,
    )


def _check_name(where: str, name: str) -> None:
    # A name becomes a directory name, so it must not climb out of the image root.
    if name in (".", "..") or "/" in name or "\\" in name:
        raise DataError(f"{where}: invalid person name {name!r}; names are folder names")
    if _is_positive_int(name):
        raise DataError(
            f"{where}: expected a person name, found the number {name!r}; "
            f"check the field order (`name i j` or `name1 i name2 j`)"
        )


def _reject_trailing_lines(pairs_file: Path, lines: Sequence[str], last_line: int) -> None:
    for line_number in range(last_line + 1, len(lines) + 1):
        if lines[line_number - 1].strip():
            raise DataError(
                f"{pairs_file}:{line_number}: unexpected line after the {last_line - 1} pairs "
                f"that the header promises; fix the header or remove the extra lines"
            )


def _is_positive_int(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) >= 1
