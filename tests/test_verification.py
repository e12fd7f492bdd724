"""The LFW protocol metrics against hand-computed cases."""

import numpy as np
import pytest

from vqbench.errors import DataError
from vqbench.metrics.verification import (
    accuracy_at,
    best_threshold,
    cosine_similarity,
    equal_error_rate,
    evaluate_verification,
    roc_auc,
    threshold_at_far,
)


def test_best_threshold_separable():
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    same = np.array([False, False, True, True])
    threshold = best_threshold(scores, same)
    assert 0.2 < threshold < 0.8
    assert accuracy_at(scores, same, threshold) == 1.0


def test_best_threshold_with_overlap():
    # Thresholds between 0.4 and 0.5 misclassify exactly one pair (the impostor at 0.6).
    scores = np.array([0.3, 0.4, 0.6, 0.5, 0.7, 0.9])
    same = np.array([False, False, False, True, True, True])
    threshold = best_threshold(scores, same)
    assert accuracy_at(scores, same, threshold) == pytest.approx(5 / 6)
    assert threshold == pytest.approx(0.45)


def test_threshold_applied_from_other_folds():
    # Fold 1 alone would choose 0.55; fold 2's threshold (from fold 1) misclassifies one pair.
    scores = np.array([0.5, 0.6, 0.4, 0.7, 0.2, 0.3, 0.58, 0.9])
    same = np.array([False, True, False, True, False, False, True, True])
    folds = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    result = evaluate_verification(scores, same, folds)
    # Fold 1 trains on fold 2: threshold between 0.3 and 0.58 (lowest: 0.44) -> fold 1: 0.5 is
    # accepted wrongly: 3/4. Fold 2 trains on fold 1: threshold 0.55 -> fold 2 all correct.
    assert result.fold_accuracies == (pytest.approx(0.75), pytest.approx(1.0))
    assert result.accuracy_mean == pytest.approx(0.875)
    assert result.accuracy_std == pytest.approx(0.125)


def test_single_fold_rejected():
    with pytest.raises(DataError, match="at least 2 folds"):
        evaluate_verification(np.array([0.1, 0.9]), np.array([False, True]), np.array([3, 3]))


def test_roc_auc_hand_computed():
    # Genuine 0.8, 0.4; impostor 0.5, 0.1: of 4 comparisons, 3 are won -> 0.75.
    scores = np.array([0.8, 0.4, 0.5, 0.1])
    same = np.array([True, True, False, False])
    assert roc_auc(scores, same) == pytest.approx(0.75)


def test_roc_auc_ties_count_half():
    scores = np.array([0.5, 0.5])
    same = np.array([True, False])
    assert roc_auc(scores, same) == pytest.approx(0.5)


def test_eer_of_symmetric_overlap():
    # Genuine: 0.4, 0.6, 0.8, 0.9; impostor: 0.1, 0.2, 0.5, 0.7. At t = 0.55..0.6 one of four
    # impostors is accepted and one of four genuine pairs rejected: EER 0.25.
    scores = np.array([0.4, 0.6, 0.8, 0.9, 0.1, 0.2, 0.5, 0.7])
    same = np.array([True] * 4 + [False] * 4)
    assert equal_error_rate(scores, same) == pytest.approx(0.25)


def test_eer_of_separable_scores_is_zero():
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    same = np.array([True, True, False, False])
    assert equal_error_rate(scores, same) == pytest.approx(0.0)


def test_threshold_at_far_accept_count():
    impostors = np.linspace(0.0, 1.0, 2001)  # 2001 impostors: 2 may be accepted at FAR 1e-3
    threshold = threshold_at_far(impostors, 1e-3)
    accepted = int(np.sum(impostors >= threshold))
    assert accepted == 2


def test_tar_at_far_uses_training_impostors():
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.8, 0.05, 400)
    impostor = rng.normal(0.2, 0.05, 4000)
    scores = np.concatenate([genuine, impostor])
    same = np.concatenate([np.ones(400, bool), np.zeros(4000, bool)])
    folds = np.concatenate([np.arange(400) % 4, np.arange(4000) % 4]) + 1
    result = evaluate_verification(scores, same, folds)
    assert result.tar_at_far_1e_3 == pytest.approx(1.0)
    assert result.roc_auc == pytest.approx(1.0)


def test_cosine_similarity_rows():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    assert cosine_similarity(a, b) == pytest.approx([0.0, 1.0])
