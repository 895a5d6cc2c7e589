"""Known answers for the verification protocol: folds, threshold among distinct cuts, TAR@FAR."""

from __future__ import annotations

import numpy as np
import pytest

from partialfc.eval.protocol import best_threshold, kfold_slices, roc_far_grid, tar_at_far, verification_accuracy


def test_folds_match_unshuffled_kfold():
    # sklearn KFold(10) on 12 items: the first 12 mod 10 = 2 folds take one extra item.
    sizes = [s.stop - s.start for s in kfold_slices(12, 10)]
    assert sizes == [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [s.start for s in kfold_slices(23, 10)] == [0, 3, 6, 9, 11, 13, 15, 17, 19, 21]
    assert len(kfold_slices(4, 10)) == 4  # fewer items than folds: one item each


def test_tied_scores_are_not_split():
    # The reproduction: no strict threshold separates three equal scores.
    scores, labels = np.array([0.5, 0.5, 0.5]), np.array([False, True, True])
    assert best_threshold(scores, labels) < 0.5  # accept all: 2 of 3 correct
    assert verification_accuracy(scores, labels).mean == pytest.approx(2 / 3)


def test_collapsed_model_scores_the_positive_fraction():
    # 60 pairs, 6 per fold, 4 positives in each fold: a model giving one score to every pair.
    labels = np.tile([True, False, True, True, False, True], 10)
    result = verification_accuracy(np.full(60, 0.3), labels)
    assert result.mean == pytest.approx(4 / 6)
    assert result.std == pytest.approx(0.0, abs=1e-12)


def test_midpoint_threshold_and_outer_cuts():
    assert best_threshold(np.array([0.25, 0.75]), np.array([False, True])) == 0.5
    assert best_threshold(np.array([0.25, 0.75]), np.array([False, False])) == 0.75  # reject all
    # Inverted labels: accepting all and rejecting all are both 1 of 2; the lowest threshold wins.
    assert best_threshold(np.array([0.25, 0.75]), np.array([True, False])) == np.nextafter(0.25, -1)


# Twelve pairs, folds [0,1] [2,3] [4] ... [11]. Pair 2 is a negative scoring like the positives (0.75);
# pair 5 is a negative at exactly 0.5, the threshold the other folds choose for its fold.
SCORES = np.array([0.75, 0.25, 0.75, 0.25, 0.75, 0.5, 0.75, 0.25, 0.75, 0.25, 0.75, 0.75])
LABELS = np.array([1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 1], dtype=bool)


def test_ten_fold_accuracy_known_answer():
    result = verification_accuracy(SCORES, LABELS)
    # Fold [2,3]: trained on the others (separable at 0.625) it accepts the hard negative: 1 of 2.
    # Fold [5]: the others give 0.5 (between 0.25 and 0.75); 0.5 > 0.5 is false, so it is rejected.
    # Every other fold is classified correctly. (Fitting on the held-out fold would give 1.0;
    # `>=` would accept pair 5; the old `10 i // P` folds put pair 2 alone in a fold: mean 0.9.)
    assert result.fold_accuracies == (1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert result.fold_thresholds[1] == 0.625 and result.fold_thresholds[3] == 0.5
    assert result.mean == pytest.approx(0.95)
    assert result.std == pytest.approx(0.15)
    assert result.threshold == 0.625  # fitted on all pairs: only the hard negative is wrong


def test_tar_at_far_known_answer():
    negatives = np.arange(1, 11) / 16  # 1/16 .. 10/16
    positives = np.array([10, 9, 8.5, 8, 4]) / 16
    tar, threshold = tar_at_far(positives, negatives, [1e-3, 0.1, 0.2, 1.0])
    # FAR 0.1 of 10 negatives: one may score above the threshold -> t = 9/16; only 10/16 > 9/16
    # (`>=` would also count the positive at exactly 9/16).
    assert threshold.tolist() == [10 / 16, 9 / 16, 8 / 16, -np.inf]
    assert tar.tolist() == [0.0, 0.2, 0.6, 1.0]


def test_tar_at_far_rounding_and_empty_sides():
    negatives = np.arange(100, dtype=float)
    _, threshold = tar_at_far(np.array([1.0]), negatives, [0.29])  # 0.29 * 100 = 28.999999999999996
    assert threshold[0] == 70.0  # 29 negatives (71..99) above it
    tar, _ = tar_at_far(np.empty(0), negatives, [0.1])
    assert np.isnan(tar[0])
    tar, threshold = tar_at_far(np.array([0.1, 0.2]), np.empty(0), [0.1])
    assert tar[0] == 1.0 and threshold[0] == -np.inf


def test_roc_grid_stops_at_the_resolution_of_the_negatives():
    grid = roc_far_grid(1000)
    assert grid[0] == pytest.approx(1e-3) and grid[-1] == 1.0
    assert roc_far_grid(10**8)[0] == pytest.approx(1e-6)
