"""Score-level metrics shared by every evaluation: 1:1 verification accuracy, TAR@FAR, ROC points.

Conventions, chosen to match insightface (``recognition/arcface_torch/eval/verification.py`` for the
``.bin`` sets, ``recognition/arcface_torch/eval_ijbc.py`` for IJB-B/C) and the LFW protocol:

- A pair is accepted when ``score > threshold`` (strict) on cosine similarity.
- **Folds** follow sklearn's ``KFold(n_splits=10, shuffle=False)``: contiguous, and the first
  ``P mod 10`` folds take one extra pair, so figures compare with published ones for any pair count.
- **Best threshold** (:func:`best_threshold`): only cuts between *distinct* scores are scored (a
  strict threshold cannot split a group of tied scores). Among equally good cuts the one rejecting
  the most pairs wins, the largest cosine threshold: insightface scans squared-L2 distances upwards
  and keeps the first best, which is the same cut. Inside the chosen gap the threshold sits midway
  between the neighbours when that midpoint separates them; for adjacent floating-point values the
  midpoint rounds onto one of them, and the lower neighbour is taken instead, so a threshold always
  realises the training accuracy it was chosen for.
- **insightface's grid** (:func:`grid_verification_accuracy`): its ``calculate_roc`` exactly, for
  matching a published LFW/CFP-FP/AgeDB figure to the digit: thresholds ``np.arange(0, 4, 0.01)`` on the
  squared L2 distance of normalised embeddings, accept when ``distance < threshold``, first best.
- **TAR@FAR, literature read-out** (:func:`roc_tar_at_far`): as ``eval_ijbc.py`` reads its table,
  the point of sklearn's ``roc_curve`` (``drop_intermediate=True``) whose FPR is nearest the target,
  the highest such point on ties. Its FAR can exceed the target.
- **TAR@FAR, strict** (:func:`strict_tar_at_far`): the threshold lets at most ``floor(FAR x negatives)``
  negatives score above it; when that is zero (FAR below the resolution of the negatives) no
  negative is accepted at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "INSIGHTFACE_DISTANCE_GRID",
    "AccuracyResult",
    "RocReadout",
    "best_threshold",
    "grid_verification_accuracy",
    "kfold_slices",
    "roc_curve_points",
    "roc_far_grid",
    "roc_tar_at_far",
    "strict_tar_at_far",
    "verification_accuracy",
]

# insightface's evaluate(): squared-L2 distance thresholds of calculate_roc.
INSIGHTFACE_DISTANCE_GRID = np.arange(0, 4, 0.01)


def kfold_slices(num_items: int, folds: int = 10) -> list[slice]:
    """Contiguous folds as sklearn's unshuffled KFold: sizes ``n // k + 1`` for the first ``n mod k``.

    With fewer items than folds every item is its own fold.
    """
    folds = max(1, min(folds, num_items))
    base, extra = divmod(num_items, folds)
    slices, start = [], 0
    for fold in range(folds):
        size = base + (1 if fold < extra else 0)
        slices.append(slice(start, start + size))
        start += size
    return slices


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """The threshold ``t`` maximising the accuracy of ``score > t`` over cuts between distinct scores;
    ties go to the largest threshold (insightface's choice), and ``t`` realises that accuracy exactly."""
    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    if scores.size == 0:
        return -math.inf
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], issame[order]
    # Rejecting the k lowest scores is correct on the negatives among them and the positives above.
    correct = (
        np.concatenate([[0], np.cumsum(~sorted_same)])
        + sorted_same.sum()
        - np.concatenate([[0], np.cumsum(sorted_same)])
    )
    cut = np.ones(len(scores) + 1, dtype=bool)
    cut[1:-1] = sorted_scores[1:] > sorted_scores[:-1]  # a cut inside a tied group is not realisable
    candidates = np.flatnonzero(cut)
    best = correct[candidates]
    k = int(candidates[len(best) - 1 - np.argmax(best[::-1])])  # last maximum: the largest threshold
    if k == 0:
        return float(np.nextafter(sorted_scores[0], -np.inf))
    if k == len(scores):
        return float(sorted_scores[-1])
    below, above = sorted_scores[k - 1], sorted_scores[k]
    middle = below + (above - below) / 2
    return float(middle if middle < above else below)  # adjacent floats: the midpoint rounds up onto `above`


@dataclass(frozen=True)
class AccuracyResult:
    """10-fold accuracy: mean and std over folds, the per-fold thresholds and the one fitted on all pairs
    (cosine thresholds; for insightface's grid ``1 - d/2`` of its distance threshold ``d``)."""

    mean: float
    std: float
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    threshold: float


def _check_vectors(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    if scores.shape != issame.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {issame.shape} must be equal-length vectors")
    return scores, issame


def _summary(accuracies: list[float], thresholds: list[float], threshold: float) -> AccuracyResult:
    return AccuracyResult(
        mean=float(np.mean(accuracies)) if accuracies else math.nan,
        std=float(np.std(accuracies)) if accuracies else math.nan,
        fold_accuracies=tuple(accuracies),
        fold_thresholds=tuple(thresholds),
        threshold=threshold,
    )


def verification_accuracy(scores: np.ndarray, issame: np.ndarray, folds: int = 10) -> AccuracyResult:
    """Each fold is scored with the best threshold of the *other* folds (the held-out fold never fits)."""
    scores, issame = _check_vectors(scores, issame)
    accuracies, thresholds = [], []
    for fold in kfold_slices(len(scores), folds):
        train = np.ones(len(scores), dtype=bool)
        train[fold] = False
        threshold = best_threshold(scores[train], issame[train])
        accuracies.append(float(np.mean((scores[fold] > threshold) == issame[fold])))
        thresholds.append(threshold)
    return _summary(accuracies, thresholds, best_threshold(scores, issame))


def _grid_best(distances: np.ndarray, issame: np.ndarray, grid: np.ndarray) -> float:
    """First grid threshold maximising the accuracy of ``distance < threshold``."""
    accepted_same = np.searchsorted(np.sort(distances[issame]), grid, side="left")
    accepted_other = np.searchsorted(np.sort(distances[~issame]), grid, side="left")
    correct = accepted_same + (np.count_nonzero(~issame) - accepted_other)
    return float(grid[np.argmax(correct)])


def grid_verification_accuracy(
    distances: np.ndarray, issame: np.ndarray, folds: int = 10, grid: np.ndarray = INSIGHTFACE_DISTANCE_GRID
) -> AccuracyResult:
    """insightface's ``calculate_roc`` accuracy on squared L2 distances of normalised embeddings:
    the same folds, each scored at the first best grid threshold of the other folds."""
    distances, issame = _check_vectors(distances, issame)
    accuracies, thresholds = [], []
    for fold in kfold_slices(len(distances), folds):
        train = np.ones(len(distances), dtype=bool)
        train[fold] = False
        threshold = _grid_best(distances[train], issame[train], grid)
        accuracies.append(float(np.mean((distances[fold] < threshold) == issame[fold])))
        thresholds.append(1 - threshold / 2)
    return _summary(accuracies, thresholds, 1 - _grid_best(distances, issame, grid) / 2)


def strict_tar_at_far(
    positive: np.ndarray, negative: np.ndarray, fars: np.ndarray | list[float] | tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(TAR, threshold) at each FAR: share of positives with ``score > t``, where ``t`` admits at most
    ``floor(FAR x len(negative))`` negatives. NaN TAR without positives; ``t = -inf`` without negatives."""
    positive = np.sort(np.asarray(positive, dtype=np.float64))
    descending = np.sort(np.asarray(negative, dtype=np.float64))[::-1]
    fars = np.asarray(fars, dtype=np.float64)
    # The epsilon keeps e.g. 0.29 x 100 (28.999999999999996 in floating point) at 29 admitted negatives.
    admitted = np.floor(fars * len(descending) + 1e-9).astype(np.int64)
    thresholds = np.full(len(fars), -np.inf)
    within = admitted < len(descending)
    thresholds[within] = descending[admitted[within]]
    if not len(positive):
        return np.full(len(fars), np.nan), thresholds
    above = len(positive) - np.searchsorted(positive, thresholds, side="right")
    return above / len(positive), thresholds


def roc_curve_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, threshold) ascending, the points of sklearn's ``roc_curve`` with its default
    ``drop_intermediate=True``: a point is accepted at ``score >= threshold``; the first point
    (threshold +inf) accepts nothing; middle points of straight equal-step runs are dropped."""
    scores, labels = _check_vectors(scores, labels)
    if labels.all() or not labels.any():
        raise ValueError("a ROC needs both genuine and impostor pairs")
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels, dtype=np.float64)[last_of_value]
    false_positives = 1 + last_of_value - true_positives
    thresholds = scores[last_of_value]
    if len(false_positives) > 2:
        kept = np.flatnonzero(np.r_[True, np.logical_or(np.diff(false_positives, 2), np.diff(true_positives, 2)), True])
        true_positives, false_positives, thresholds = true_positives[kept], false_positives[kept], thresholds[kept]
    true_positives, false_positives = np.r_[0, true_positives], np.r_[0, false_positives]
    return false_positives / false_positives[-1], true_positives / true_positives[-1], np.r_[np.inf, thresholds]


@dataclass(frozen=True)
class RocReadout:
    """TAR at the ROC point nearest each target FAR: the FAR realised there and its threshold
    (pairs with ``score >= threshold`` are accepted)."""

    tar: np.ndarray
    far: np.ndarray
    threshold: np.ndarray


def roc_tar_at_far(
    scores: np.ndarray, labels: np.ndarray, fars: np.ndarray | list[float] | tuple[float, ...]
) -> RocReadout:
    """The literature's TAR@FAR, as ``eval_ijbc.py`` reads it: nearest FPR of the ROC, the highest point on ties."""
    fpr, tpr, thresholds = roc_curve_points(scores, labels)
    fars = np.asarray(fars, dtype=np.float64)
    distance = np.abs(fpr[None, :] - fars[:, None])
    # eval_ijbc.py scans the flipped curve and keeps the first minimum: the last one in ascending order.
    nearest = len(fpr) - 1 - np.argmin(distance[:, ::-1], axis=1)
    return RocReadout(tpr[nearest], fpr[nearest], thresholds[nearest])


def roc_far_grid(num_negatives: int, lowest: float = 1e-6) -> np.ndarray:
    """FAR values for a ROC curve: 10 per decade from ``lowest`` (or 1/negatives) to 1."""
    floor = max(lowest, 1.0 / max(num_negatives, 1))
    decades = math.ceil(-math.log10(floor) - 1e-9)
    return np.unique(np.clip(np.logspace(-decades, 0, 10 * decades + 1), floor, 1.0))
