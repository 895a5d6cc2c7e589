"""Score-level metrics shared by every evaluation: 1:1 verification accuracy, TAR@FAR, ROC points.

Conventions, chosen to match insightface's ``eval/verification.py`` and the LFW protocol:

- A pair is accepted when ``score > threshold`` (strict).
- **Folds** follow sklearn's ``KFold(n_splits=10, shuffle=False)``: contiguous, and the first
  ``P mod 10`` folds take one extra pair, so figures compare with published ones for any pair count.
- **Best threshold**: only cuts between *distinct* scores are scored (a strict threshold cannot
  split a group of tied scores); interior cuts sit midway between neighbours, the outer ones just
  below the smallest score (accept all) and at the largest (reject all). Among equally good cuts
  the lowest threshold wins, so a collapsed model (all scores equal) that sees mostly positives
  accepts everything and scores the positive fraction.
- **TAR@FAR**: the threshold lets at most ``floor(FAR x negatives)`` negatives score above it; when
  that is zero (FAR below the resolution of the negatives) no negative is accepted at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AccuracyResult",
    "best_threshold",
    "kfold_slices",
    "roc_far_grid",
    "tar_at_far",
    "verification_accuracy",
]


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
    """The threshold ``t`` maximising the accuracy of ``score > t`` over cuts between distinct scores."""
    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    if scores.size == 0:
        return -math.inf
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], issame[order]
    # Rejecting the k lowest scores is correct on the negatives among them and the positives above.
    correct = np.concatenate([[0], np.cumsum(~sorted_same)]) + sorted_same.sum() - np.concatenate([[0], np.cumsum(sorted_same)])
    cut = np.ones(len(scores) + 1, dtype=bool)
    cut[1:-1] = sorted_scores[1:] > sorted_scores[:-1]  # a cut inside a tied group is not realisable
    candidates = np.flatnonzero(cut)
    k = int(candidates[np.argmax(correct[candidates])])  # first maximum: the lowest threshold
    if k == 0:
        return float(np.nextafter(sorted_scores[0], -np.inf))
    if k == len(scores):
        return float(sorted_scores[-1])
    return float((sorted_scores[k - 1] + sorted_scores[k]) / 2)


@dataclass(frozen=True)
class AccuracyResult:
    """10-fold accuracy: mean and std over folds, the per-fold thresholds and the one fitted on all pairs."""

    mean: float
    std: float
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    threshold: float


def verification_accuracy(scores: np.ndarray, issame: np.ndarray, folds: int = 10) -> AccuracyResult:
    """Each fold is scored with the best threshold of the *other* folds (the held-out fold never fits)."""
    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    if scores.shape != issame.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {issame.shape} must be equal-length vectors")
    accuracies, thresholds = [], []
    for fold in kfold_slices(len(scores), folds):
        train = np.ones(len(scores), dtype=bool)
        train[fold] = False
        threshold = best_threshold(scores[train], issame[train])
        accuracies.append(float(np.mean((scores[fold] > threshold) == issame[fold])))
        thresholds.append(threshold)
    return AccuracyResult(
        mean=float(np.mean(accuracies)) if accuracies else math.nan,
        std=float(np.std(accuracies)) if accuracies else math.nan,
        fold_accuracies=tuple(accuracies),
        fold_thresholds=tuple(thresholds),
        threshold=best_threshold(scores, issame),
    )


def tar_at_far(positive: np.ndarray, negative: np.ndarray, fars: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
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


def roc_far_grid(num_negatives: int, lowest: float = 1e-6) -> np.ndarray:
    """FAR values for a ROC curve: 10 per decade from ``lowest`` (or 1/negatives) to 1."""
    floor = max(lowest, 1.0 / max(num_negatives, 1))
    decades = math.ceil(-math.log10(floor) - 1e-9)
    return np.unique(np.clip(np.logspace(-decades, 0, 10 * decades + 1), floor, 1.0))
