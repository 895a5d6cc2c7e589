"""``benchmarks/study_stats.py`` on inputs whose answers are worked out by hand here.

With 2 degrees of freedom (n = 3) Student's t has a closed form, F(t) = 1/2 + t / (2·sqrt(t² + 2)),
so quantiles and p-values below are computed from it, not taken from the code under test.
"""

from __future__ import annotations

import math

import pytest
from study_stats import Equivalence, Estimate, t_half_width, t_interval, tost, verdict


def t2_quantile(p: float) -> float:
    """The p-quantile of t with 2 d.f. (F above, inverted)."""
    a = 2 * p - 1
    return a * math.sqrt(2 / (1 - a * a))


def t2_upper_tail(t: float) -> float:
    return 0.5 - t / (2 * math.sqrt(t * t + 2))


def test_t_interval_of_one_two_three() -> None:
    # mean 2, sample std 1; t(0.975, 2) = 4.302653, so the half-width is 4.302653 / sqrt(3) = 2.48414.
    assert math.isclose(t2_quantile(0.975), 4.302653, rel_tol=1e-6)
    estimate = t_interval([1.0, 2.0, 3.0])
    assert (estimate.n, estimate.mean, estimate.std) == (3, 2.0, 1.0)
    assert math.isclose(estimate.high - estimate.mean, 2.48414, abs_tol=5e-6)
    assert math.isclose(estimate.mean - estimate.low, 4.302653 / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(t_half_width([1.0, 2.0, 3.0]), 4.302653 / math.sqrt(3), rel_tol=1e-6)
    # 90%: t(0.95, 2) = 2.919986.
    assert math.isclose(t_half_width([1.0, 2.0, 3.0], confidence=0.90), t2_quantile(0.95) / math.sqrt(3))
    assert math.isclose(t2_quantile(0.95), 2.919986, rel_tol=1e-6)


def test_more_seeds_use_their_own_degrees_of_freedom() -> None:
    # n = 5 (4 d.f.): t(0.975, 4) = 2.776445; values 1..5 have std sqrt(2.5).
    assert math.isclose(t_half_width([1.0, 2.0, 3.0, 4.0, 5.0]), 2.776445 * math.sqrt(2.5) / math.sqrt(5), rel_tol=1e-6)


def test_one_value_has_no_interval() -> None:
    estimate = t_interval([0.7])
    assert estimate.n == 1 and estimate.mean == 0.7 and math.isnan(estimate.std)
    assert estimate == Estimate(1, 0.7, estimate.std, 0.7, 0.7)
    assert math.isnan(t_half_width([0.7]))
    one = tost([0.7], margin=1.0)
    assert math.isnan(one.p_value) and not one.equivalent
    assert verdict([0.7], margin=1.0) == "one seed"
    with pytest.raises(ValueError):
        t_interval([])


def test_tost_both_ways() -> None:
    # Differences 0.1, -0.1, 0: mean 0, std 0.1, standard error 0.1 / sqrt(3).
    se = 0.1 / math.sqrt(3)
    # Margin 1: t = 1 / se = 17.3205 on each side, p = 0.5 - t / (2 sqrt(t² + 2)) = 0.001658 < 0.05.
    wide = tost([0.1, -0.1, 0.0], margin=1.0)
    assert math.isclose(wide.p_value, t2_upper_tail(1.0 / se), rel_tol=1e-9)
    assert math.isclose(wide.p_value, 0.001658, abs_tol=1e-6)
    assert wide == Equivalence(1.0, wide.p_value, True)
    # Margin 0.1: t = sqrt(3), p = 0.5 - sqrt(3) / (2 sqrt(5)) = 0.112702 > 0.05: not shown equivalent.
    narrow = tost([0.1, -0.1, 0.0], margin=0.1)
    assert math.isclose(narrow.p_value, 0.5 - math.sqrt(3) / (2 * math.sqrt(5)), rel_tol=1e-9)
    assert not narrow.equivalent
    # Off-centre: the larger one-sided p-value decides (mean 0.5, margin 1: t = 0.5 / se on the upper side).
    shifted = tost([0.6, 0.4, 0.5], margin=1.0)
    assert math.isclose(shifted.p_value, t2_upper_tail(0.5 / se), rel_tol=1e-9)
    # A looser alpha accepts what 0.05 does not: p = 0.1127 < 0.2.
    assert tost([0.1, -0.1, 0.0], margin=0.1, alpha=0.2).equivalent


def test_tost_without_spread_is_decided_by_the_mean() -> None:
    assert tost([0.0, 0.0, 0.0], margin=0.5) == Equivalence(0.5, 0.0, True)
    assert tost([0.7, 0.7], margin=0.5) == Equivalence(0.5, 1.0, False)
    with pytest.raises(ValueError):
        tost([0.1, 0.2], margin=0.0)


def test_every_verdict() -> None:
    # [-3, -2.5, -2]: mean -2.5, std 0.5, half-width 4.302653 * 0.5 / sqrt(3) = 1.2421: interval [-3.74, -1.26].
    assert verdict([-3.0, -2.5, -2.0], margin=1.0) == "lower"
    assert verdict([2.0, 2.5, 3.0], margin=1.0) == "higher"
    assert verdict([0.1, -0.1, 0.0], margin=1.0) == "equivalent (±1)"
    assert verdict([0.1, -0.1, 0.0], margin=0.1) == "inconclusive"
    # [1, 2, 3]: the interval [-0.48, 4.48] holds 0, and the difference may be as large as 4: inconclusive.
    assert verdict([1.0, 2.0, 3.0], margin=1.0) == "inconclusive"
    # A clear difference smaller than the margin is still reported as a difference: direction first.
    assert verdict([-0.21, -0.2, -0.19], margin=1.0) == "lower"
    # Identical runs (every difference 0) are equivalent at any margin.
    assert verdict([0.0, 0.0, 0.0], margin=0.3) == "equivalent (±0.3)"
