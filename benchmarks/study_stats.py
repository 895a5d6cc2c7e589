"""The studies' statistics: t-intervals over a few seeds, and paired verdicts with an equivalence test.

A study repeats each cell over a handful of training seeds (n = 3 to 5), so an interval of a mean
uses Student's t with n − 1 degrees of freedom (with n = 3 the normal 1.96 would be 2.2× too narrow).
A cell is judged against its reference from the per-seed *differences* (the same seed gives both the
same initialisation and data order), never from whether two unpaired intervals overlap; and "no
difference" is only claimed when a two one-sided test (TOST) puts the difference inside a margin
stated in advance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats  # type: ignore[import-untyped]


@dataclass(frozen=True)
class Estimate:
    """A mean with its two-sided t-interval; with n < 2 the std is nan and the interval is the mean itself."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def _sample(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"need a non-empty sequence of numbers, got shape {data.shape}")
    return data


def t_half_width(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the two-sided t-interval of the mean (t with n − 1 d.f.): an error bar; nan if n < 2."""
    data = _sample(values)
    if data.size < 2:
        return math.nan
    quantile = float(stats.t.ppf((1.0 + confidence) / 2.0, data.size - 1))
    return quantile * float(np.std(data, ddof=1)) / math.sqrt(data.size)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean, sample std and the two-sided t-interval of the mean of ``values``."""
    data = _sample(values)
    mean = float(np.mean(data))
    if data.size < 2:
        return Estimate(1, mean, math.nan, mean, mean)
    half = t_half_width(values, confidence)
    return Estimate(int(data.size), mean, float(np.std(data, ddof=1)), mean - half, mean + half)


@dataclass(frozen=True)
class Equivalence:
    """TOST on paired differences: ``p_value`` is the larger of the two one-sided p-values (nan if n < 2);
    ``equivalent`` when both nulls (difference ≤ −margin, difference ≥ +margin) are rejected."""

    margin: float
    p_value: float
    equivalent: bool


def tost(differences: Sequence[float], margin: float, alpha: float = 0.05) -> Equivalence:
    """Two one-sided t-tests that the mean difference lies inside (−margin, +margin), each at level ``alpha``
    (equivalently: the 1 − 2·alpha t-interval lies inside the margins)."""
    if margin <= 0:
        raise ValueError(f"the equivalence margin must be positive, got {margin}")
    data = _sample(differences)
    if data.size < 2:
        return Equivalence(margin, math.nan, False)
    if np.ptp(data) == 0.0:  # no spread: t is ±inf, so each one-sided test is decided by the mean alone
        p_value = 0.0 if -margin < data[0] < margin else 1.0
    else:
        above_lower = stats.ttest_1samp(data, -margin, alternative="greater").pvalue
        below_upper = stats.ttest_1samp(data, margin, alternative="less").pvalue
        p_value = float(max(above_lower, below_upper))
    return Equivalence(margin, p_value, p_value < alpha)


def verdict(differences: Sequence[float], margin: float, confidence: float = 0.95) -> str:
    """Label a cell against its reference from the paired per-seed differences (cell minus reference).

    "lower" / "higher" when the paired t-interval at ``confidence`` lies wholly below / above 0;
    else "equivalent (±margin)" when TOST at level 1 − confidence puts the difference inside the
    margin; else "inconclusive". With fewer than two seeds there is no interval: "one seed".
    """
    estimate = t_interval(differences, confidence)
    if estimate.n < 2:
        return "one seed"
    if estimate.high < 0:
        return "lower"
    if estimate.low > 0:
        return "higher"
    if tost(differences, margin, alpha=1.0 - confidence).equivalent:
        return f"equivalent (±{margin:g})"
    return "inconclusive"
