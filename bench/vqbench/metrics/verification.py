"""Face verification metrics under the LFW View 2 protocol.

Pairs are accepted as "same person" when their score (cosine similarity) is at least a
threshold. Each held-out fold is scored with the threshold that maximises accuracy on the other
folds. Accuracy is reported as the mean and the population standard deviation over folds. TAR at FAR = 1e-3 uses, per held-out fold, the lowest threshold whose
false-accept rate on the other folds' impostor pairs is at most 1e-3. ROC AUC and EER are
computed over all pairs pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vqbench.errors import DataError


@dataclass(frozen=True)
class VerificationResult:
    """Summary of one pipeline variant's verification performance."""

    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: tuple[float, ...]
    tar_at_far_1e_3: float
    roc_auc: float
    eer: float


def _candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Midpoints between distinct sorted scores, plus one below and one above all of them."""
    unique = np.unique(scores)
    mids = (unique[:-1] + unique[1:]) / 2
    return np.concatenate(([unique[0] - 1.0], mids, [unique[-1] + 1.0]))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Return the threshold that maximises accuracy (ties: the lowest such threshold)."""
    thresholds = _candidate_thresholds(scores)
    order = np.argsort(scores)
    sorted_scores = scores[order]
    sorted_same = same[order].astype(np.int64)

    # Pairs below a threshold are rejected: count genuine pairs rejected and impostors rejected.
    below = np.searchsorted(sorted_scores, thresholds, side="left")
    genuine_below = np.concatenate(([0], np.cumsum(sorted_same)))[below]
    impostor_below = below - genuine_below
    genuine_total = int(sorted_same.sum())
    correct = (genuine_total - genuine_below) + impostor_below
    return float(thresholds[int(np.argmax(correct))])


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified correctly by ``score >= threshold``."""
    return float(np.mean((scores >= threshold) == same))


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """Return the lowest threshold whose false-accept rate on impostor pairs is at most ``far``."""
    sorted_scores = np.sort(impostor_scores)[::-1]
    allowed = int(np.floor(far * len(sorted_scores)))
    if allowed >= len(sorted_scores):
        return float(sorted_scores[-1])
    # Accept strictly above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(sorted_scores[allowed], np.inf))


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a genuine pair outscores an impostor pair."""
    genuine = scores[same]
    impostor = scores[~same]
    if len(genuine) == 0 or len(impostor) == 0:
        raise DataError("ROC AUC needs both genuine and impostor pairs")
    ranks = average_ranks(np.concatenate([genuine, impostor]))
    genuine_rank_sum = ranks[: len(genuine)].sum()
    u = genuine_rank_sum - len(genuine) * (len(genuine) + 1) / 2
    return float(u / (len(genuine) * len(impostor)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks, where tied values share their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (false-accept rates, true-accept rates) over every distinct threshold."""
    thresholds = _candidate_thresholds(scores)[::-1]
    genuine = np.sort(scores[same])
    impostor = np.sort(scores[~same])
    tar = 1 - np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    far = 1 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    return far, tar


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """Return the rate where false accepts equal false rejects, interpolated linearly."""
    far, tar = roc_curve(scores, same)
    frr = 1 - tar
    # Thresholds fall along the curve, so far - frr rises from -1 (reject all) to +1 (accept all).
    difference = far - frr
    crossing = int(np.argmax(difference >= 0))
    if crossing == 0:
        return float(far[0])
    d0, d1 = difference[crossing - 1], difference[crossing]
    weight = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(far[crossing - 1] + weight * (far[crossing] - far[crossing - 1]))


def evaluate_verification(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> VerificationResult:
    """Run the cross-fold protocol on per-pair scores, labels and fold numbers."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    if not (len(scores) == len(same) == len(folds)):
        raise ValueError("scores, same and folds must have the same length")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise DataError(
            f"the verification protocol needs at least 2 folds to choose thresholds, got {fold_ids.tolist()}; "
            "add folds to dataset.folds"
        )

    fold_accuracies = []
    tars = []
    for fold in fold_ids:
        test = folds == fold
        train = ~test
        threshold = best_threshold(scores[train], same[train])
        fold_accuracies.append(accuracy_at(scores[test], same[test], threshold))

        far_threshold = threshold_at_far(scores[train & ~same], 1e-3)
        genuine_test = scores[test & same]
        tars.append(float(np.mean(genuine_test >= far_threshold)) if len(genuine_test) else float("nan"))

    return VerificationResult(
        accuracy_mean=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        fold_accuracies=tuple(fold_accuracies),
        tar_at_far_1e_3=float(np.nanmean(tars)),
        roc_auc=roc_auc(scores, same),
        eer=equal_error_rate(scores, same),
    )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
