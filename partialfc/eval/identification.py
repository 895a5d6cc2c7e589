"""1:N identification: the IJB-C open-set protocol (CMC on mated probes, TPIR at FPIR with non-mated
probes) and insightface's closed-set read-out of ``ijb_1n.py``.

**Open set** (:func:`identification_metrics`, the IJB-B/C protocol): each gallery (IJB-C: G1 and G2,
disjoint subjects) is searched by every probe template of the mixed-media probe list; a probe is
*mated* when its subject is enrolled in that gallery, *non-mated* otherwise. Scores are cosine
similarities; a gallery subject with several templates scores the best of them. Conventions:

- **Rank** of a mated probe: 1 + the number of *other* gallery subjects scoring at least as high
  as its mate (ties count against the probe, so a collapsed model never looks good).
- **FPIR(t)**: share of non-mated probes whose best gallery score is ``> t``; the threshold for a
  target FPIR admits at most ``floor(FPIR x non-mated)`` of them (as the strict TAR@FAR in ``protocol``).
- **TPIR(t)** at rank 1: share of mated probes whose mate is ranked first *and* scores ``> t``.

**insightface's read-out** (:func:`pooled_closed_set_readout`, ``recognition/_evaluation_/ijb/ijb_1n.py``,
``evaluation``): G1 and G2 joined into one gallery, so every probe is mated (closed set); top-1/5/10
hit rates; its "TPIR at FAR f" is the share of probes whose mate scores above the
``ceil(f x probes)``-th highest of *all* non-mate probe-gallery scores, with no rank condition. It
is neither FPIR (no non-mated searches) nor comparable with the open-set figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from partialfc.eval.scores import strict_tar_at_far

__all__ = ["IdentificationResult", "PooledReadout", "identification_metrics", "pooled_closed_set_readout"]


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
    _, thresholds = strict_tar_at_far(np.empty(0), non_mated_best, list(fpirs))
    tpir = {
        fpir: (float(np.mean((rank == 1) & (mate_score > t))) if len(rank) and len(non_mated_best) else math.nan)
        for fpir, t in zip(fpirs, thresholds)
    }
    return IdentificationResult(
        cmc, tpir, dict(zip(fpirs, thresholds.tolist())), int(mated.sum()), int((~mated).sum()), len(subjects)
    )


@dataclass(frozen=True)
class PooledReadout:
    """insightface ``ijb_1n.py``: top-k hit rates and its pooled "TPIR" per FAR, over ``num_probes`` probes."""

    top_k: dict[int, float]
    tpir_at_far: dict[float, float]
    thresholds: dict[float, float]
    num_probes: int


def pooled_closed_set_readout(
    probe_features: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_features: np.ndarray,
    gallery_subjects: np.ndarray,
    fars: tuple[float, ...] = (1e-2, 1e-1),
    ranks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 1024,
) -> PooledReadout:
    """Every probe subject must have exactly one gallery template (as ``ijb_1n.py``'s ``gen_mask`` demands).
    Probes are scored ``chunk`` at a time, keeping only the highest non-mate scores needed."""
    subjects, counts = np.unique(gallery_subjects, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"gallery subject {int(subjects[counts > 1][0])} has {int(counts.max())} templates; "
            "insightface's read-out needs one per subject"
        )
    column_of = dict(zip(np.asarray(gallery_subjects).tolist(), range(len(gallery_subjects))))
    missing = [int(s) for s in np.unique(probe_subjects) if int(s) not in column_of]
    if missing:
        raise ValueError(f"{len(missing)} probe subjects are in no gallery (first: {missing[:5]})")
    mates = np.array([column_of[int(s)] for s in probe_subjects], dtype=np.int64)
    needed = [max(1, math.ceil(len(mates) * far)) for far in fars]
    keep = min(max(needed), max(len(mates) * (len(gallery_subjects) - 1), 1))
    gallery = np.asarray(gallery_features, np.float64)
    mate_scores, best_negatives, hits = [], [], {k: 0 for k in ranks}
    for start in range(0, len(mates), chunk):
        scores = np.asarray(probe_features[start : start + chunk], np.float64) @ gallery.T
        rows = np.arange(len(scores))
        mate = scores[rows, mates[start : start + chunk]]
        rank = 1 + (scores > mate[:, None]).sum(axis=1)
        for k in ranks:
            hits[k] += int((rank <= k).sum())
        scores[rows, mates[start : start + chunk]] = -np.inf
        negatives = scores.reshape(-1)
        negatives = negatives[np.isfinite(negatives)]
        best_negatives.append(
            np.partition(negatives, len(negatives) - keep)[len(negatives) - keep :]
            if len(negatives) > keep
            else negatives
        )
        mate_scores.append(mate)
    positives = np.concatenate(mate_scores)
    pooled = np.sort(np.concatenate(best_negatives))[::-1]
    thresholds = {far: float(pooled[min(k, len(pooled)) - 1]) for far, k in zip(fars, needed)}
    return PooledReadout(
        {k: hits[k] / len(mates) for k in ranks},
        {far: float(np.mean(positives > t)) for far, t in thresholds.items()},
        thresholds,
        len(mates),
    )
