"""Known answers and insightface references for the protocol: folds, thresholds, both TAR@FAR read-outs."""

from __future__ import annotations

import numpy as np
import pytest
from insightface_reference import calculate_roc_accuracy, eval_ijbc_tar_at_far, kfold_test_indices

from partialfc.eval.scores import (
    best_threshold,
    grid_verification_accuracy,
    kfold_slices,
    roc_far_grid,
    roc_tar_at_far,
    strict_tar_at_far,
    verification_accuracy,
)


def test_folds_match_unshuffled_kfold():
    # sklearn KFold(10) on 12 items: the first 12 mod 10 = 2 folds take one extra item.
    sizes = [s.stop - s.start for s in kfold_slices(12, 10)]
    assert sizes == [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [s.start for s in kfold_slices(23, 10)] == [0, 3, 6, 9, 11, 13, 15, 17, 19, 21]
    assert len(kfold_slices(4, 10)) == 4  # fewer items than folds: one item each
    assert [np.arange(1234)[s].tolist() for s in kfold_slices(1234)] == [f.tolist() for f in kfold_test_indices(1234)]


def test_tied_scores_are_not_split():
    # The reproduction: no strict threshold separates three equal scores.
    scores, labels = np.array([0.5, 0.5, 0.5]), np.array([False, True, True])
    assert best_threshold(scores, labels) < 0.5  # accept all: 2 of 3 correct
    # One pair per fold. Trained on one genuine and one impostor, accepting all and rejecting all tie
    # and the largest threshold (reject all) wins, as in insightface: every fold is wrong.
    assert verification_accuracy(scores, labels).fold_accuracies == (0.0, 0.0, 0.0)
    assert calculate_roc_accuracy(np.full(3, 2 - 2 * 0.5), labels, folds=3) == [0.0, 0.0, 0.0]


def test_collapsed_model_scores_the_positive_fraction():
    # 60 pairs, 6 per fold, 4 positives in each fold: a model giving one score to every pair.
    labels = np.tile([True, False, True, True, False, True], 10)
    result = verification_accuracy(np.full(60, 0.3), labels)
    assert result.mean == pytest.approx(4 / 6)
    assert result.std == pytest.approx(0.0, abs=1e-12)


def test_midpoint_threshold_and_outer_cuts():
    assert best_threshold(np.array([0.25, 0.75]), np.array([False, True])) == 0.5
    assert best_threshold(np.array([0.25, 0.75]), np.array([False, False])) == 0.75  # reject all
    # Inverted labels: accepting all and rejecting all are both 1 of 2; insightface keeps the first
    # best of its ascending distance grid, i.e. the largest cosine threshold: reject all.
    assert best_threshold(np.array([0.25, 0.75]), np.array([True, False])) == 0.75


def test_threshold_between_adjacent_floats_realises_its_accuracy():
    # The case: (a + nextafter(a)) / 2 rounds onto one of them; the threshold must still split them.
    for a in (0.5, 0.3, 1 / 3, 0.7071067811865476):
        scores = np.array([0.1, a, np.nextafter(a, 1), 0.9])
        labels = np.array([False, False, True, True])
        threshold = best_threshold(scores, labels)
        assert np.mean((scores > threshold) == labels) == 1.0, a


def _grid_levels(pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances at 40 levels midway between insightface's 0.01 grid points, pair k at level
    k mod 40 (so every fold holds every level), labels drawn with P(same) falling with distance: many
    thresholds tie for the best training accuracy, and every distinct-score cut is a grid cut."""
    rng = np.random.default_rng(seed)
    levels = (np.sort(rng.choice(400, 40, replace=False)) + 0.5) * 0.01
    distances = levels[np.arange(pairs) % 40]
    same = rng.random(pairs) < 1 / (1 + np.exp(6 * (distances - 1.6)))
    return distances, same


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_threshold_rules_match_insightface_calculate_roc(seed):
    distances, same = _grid_levels(1234, seed)
    reference = calculate_roc_accuracy(distances, same)
    grid = grid_verification_accuracy(distances, same)
    assert list(grid.fold_accuracies) == reference
    # On cosines (1 - d/2, the same order) the distinct-cut rule takes the same cuts, ties included.
    assert list(verification_accuracy(1 - distances / 2, same).fold_accuracies) == reference


@pytest.mark.parametrize("seed", [0, 1])
def test_a_distance_on_a_grid_point_is_not_accepted_there(seed):
    """insightface accepts a pair when ``distance < threshold``: a distance equal to a grid threshold (the
    very float of ``np.arange(0, 4, 0.01)``) is rejected at that threshold and accepted at the next."""
    rng = np.random.default_rng(seed)
    grid = np.arange(0, 4, 0.01)
    distances = grid[np.sort(rng.choice(np.arange(40, 360), 40, replace=False))][np.arange(1000) % 40]
    same = rng.random(1000) < 1 / (1 + np.exp(6 * (distances - 1.6)))
    assert list(grid_verification_accuracy(distances, same).fold_accuracies) == calculate_roc_accuracy(distances, same)


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


def test_strict_tar_at_far_known_answer():
    negatives = np.arange(1, 11) / 16  # 1/16 .. 10/16
    positives = np.array([10, 9, 8.5, 8, 4]) / 16
    tar, threshold = strict_tar_at_far(positives, negatives, [1e-3, 0.1, 0.2, 1.0])
    # FAR 0.1 of 10 negatives: one may score above the threshold -> t = 9/16; only 10/16 > 9/16
    # (`>=` would also count the positive at exactly 9/16).
    assert threshold.tolist() == [10 / 16, 9 / 16, 8 / 16, -np.inf]
    assert tar.tolist() == [0.0, 0.2, 0.6, 1.0]


def test_strict_tar_at_far_rounding_and_empty_sides():
    negatives = np.arange(100, dtype=float)
    _, threshold = strict_tar_at_far(np.array([1.0]), negatives, [0.29])  # 0.29 * 100 = 28.999999999999996
    assert threshold[0] == 70.0  # 29 negatives (71..99) above it
    tar, _ = strict_tar_at_far(np.empty(0), negatives, [0.1])
    assert np.isnan(tar[0])
    tar, threshold = strict_tar_at_far(np.array([0.1, 0.2]), np.empty(0), [0.1])
    assert tar[0] == 1.0 and threshold[0] == -np.inf


def test_roc_grid_stops_at_the_resolution_of_the_negatives():
    grid = roc_far_grid(1000)
    assert grid[0] == pytest.approx(1e-3) and grid[-1] == 1.0
    assert roc_far_grid(10**8)[0] == pytest.approx(1e-6)


def test_literature_read_out_drops_intermediate_roc_points():
    # Ten score levels, each holding one genuine and one impostor pair: the ROC steps (k, k) lie on
    # one line, sklearn's roc_curve keeps only (0, 0), (0.1, 0.1) and (1, 1), so the point nearest
    # FAR 0.3 is (0.1, 0.1): TAR 0.1, where the strict read-out (at most 3 impostors) gives 0.3.
    scores = np.repeat(np.linspace(0.9, 0.0, 10), 2)
    labels = np.tile([True, False], 10)
    readout = roc_tar_at_far(scores, labels, [0.3])
    assert readout.tar.tolist() == [0.1] and readout.far.tolist() == [0.1] and readout.threshold.tolist() == [0.9]
    assert eval_ijbc_tar_at_far(labels, scores, [0.3]) == [0.1]
    assert strict_tar_at_far(scores[labels], scores[~labels], [0.3])[0].tolist() == [pytest.approx(0.3)]


@pytest.mark.parametrize("seed", [0, 1])
def test_literature_read_out_matches_eval_ijbc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.1
    scores = np.round(np.where(labels, rng.normal(0.6, 0.2, 3000), rng.normal(0.1, 0.15, 3000)), 3)  # ties
    fars = [1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5]
    assert roc_tar_at_far(scores, labels, fars).tar.tolist() == eval_ijbc_tar_at_far(labels, scores, fars)
