"""1:N open-set identification: CMC (rank-k) on mated probes, TPIR at FPIR with non-mated probes.

A probe is *mated* when its subject is enrolled in the gallery. Scores are cosine similarities;
a gallery subject with several templates scores the best of them. Conventions:

- **Rank** of a mated probe: 1 + the number of *other* gallery subjects scoring at least as high
  as its mate (ties count against the probe, so a collapsed model never looks good).
- **FPIR(t)**: share of non-mated probes whose best gallery score is ``> t``; the threshold for a
  target FPIR admits at most ``floor(FPIR x non-mated)`` of them (as TAR@FAR in ``protocol``).
- **TPIR(t)** at rank 1: share of mated probes whose mate is ranked first *and* scores ``> t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from partialfc.eval.protocol import tar_at_far

__all__ = ["IdentificationResult", "identification_metrics"]


@dataclass(frozen=True)
class IdentificationResult:
    cmc: np.ndarray  # cmc[k - 1]: share of mated probes with rank <= k
    tpir_at_fpir: dict[float, float]
    thresholds: dict[float, float]
    num_mated: int
    num_non_mated: int
    num_gallery_subjects: int

    def rank(self, k: int) -> float:
        """Rank-k identification rate (NaN without mated probes)."""
        if not self.num_mated:
            return math.nan
        return float(self.cmc[min(k, len(self.cmc)) - 1])


def identification_metrics(
    probe_features: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_features: np.ndarray,
    gallery_subjects: np.ndarray,
    fpirs: tuple[float, ...] = (1e-2, 1e-1),
) -> IdentificationResult:
    """Features are L2-normalised rows; subjects are integer ids."""
    subjects, gallery_column = np.unique(gallery_subjects, return_inverse=True)
    scores = np.asarray(probe_features, np.float64) @ np.asarray(gallery_features, np.float64).T
    by_subject = np.full((len(scores), len(subjects)), -np.inf)
    np.maximum.at(by_subject.T, gallery_column.reshape(-1), scores.T)
    mate = np.searchsorted(subjects, probe_subjects)
    mated = (mate < len(subjects)) & (subjects[np.minimum(mate, len(subjects) - 1)] == probe_subjects)
    mated_scores = by_subject[mated]
    mate_score = mated_scores[np.arange(len(mated_scores)), mate[mated]]
    rank = (mated_scores >= mate_score[:, None]).sum(axis=1)  # includes the mate itself
    cmc = np.array([np.mean(rank <= k) for k in range(1, len(subjects) + 1)]) if len(rank) else np.zeros(len(subjects))
    non_mated_best = by_subject[~mated].max(axis=1) if (~mated).any() else np.empty(0)
    _, thresholds = tar_at_far(np.empty(0), non_mated_best, list(fpirs))
    tpir = {
        fpir: (float(np.mean((rank == 1) & (mate_score > t))) if len(rank) and len(non_mated_best) else math.nan)
        for fpir, t in zip(fpirs, thresholds)
    }
    return IdentificationResult(cmc, tpir, dict(zip(fpirs, thresholds.tolist())), int(mated.sum()),
                                int((~mated).sum()), len(subjects))
