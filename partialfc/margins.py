"""Margins: how a sample's target logit is formed from its cosine.

Every margin maps the cosine ``cos θ_ij`` between embedding ``x_i`` and centre ``w_j`` to a logit.
Non-target logits are ``s · cos θ_ij``; the target logit of sample ``i`` (class ``y_i``) is

    ψ(θ) = s · (cos(m1·θ + m2) − m3),          θ = arccos(cos θ_{i,y_i})

which covers the margin family in one formula:

    ================================  ====  ====  ====
    family                             m1    m2    m3
    ================================  ====  ====  ====
    normalised softmax (NormFace)      1     0     0
    SphereFace (multiplicative)        >1    0     0
    ArcFace (additive angular)         1     0.5   0
    CosFace (additive cosine)          1     0     0.35
    combined (InsightFace)             1     0.3   0.2
    ================================  ====  ====  ====

Gradients are the exact derivative of ψ (no straight-through trick):
``dψ/d cos θ = s · m1 · sin(m1·θ + m2) / sin θ``.

**Beyond θ* = (π − m2) / m1** the angle ``m1·θ + m2`` passes π and ``cos(m1·θ + m2)`` turns back
up, which would reward pushing a sample *away* from its centre. Past θ* we continue ψ with the
cosine itself, shifted so that ψ is continuous at θ*:

    ψ(θ) = s · (cos θ − cos θ* − 1 − m3)       for θ > θ*

This is the ArcFace paper's fallback ``cos θ − m·sin m`` made continuous: ψ stays strictly
decreasing in θ over [0, π] and its gradient there is ``s`` (finite, never zero).

**Endpoints.** At ``cos θ = 1`` the exact derivative of ``cos(m1·θ + m2)`` is unbounded (``sin θ``
in the denominator). Above ``1 − ε`` ψ continues linearly with its slope at ``1 − ε``, so it stays
strictly monotonic with a finite gradient; ``ε`` is 1e-6 (fp32) or 1e-7 (fp64). Near ``cos θ = −1``
the continuation above applies, which is linear in ``cos θ`` already.

:class:`Softmax` is the unnormalised baseline: ``logit = x · w`` with no scale and no margin.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

__all__ = ["Margin", "CombinedMargin", "Softmax"]


class Margin(Protocol):
    """What :class:`~partialfc.PartialFC` asks of a margin family."""

    normalize: bool
    """True: logits are ``scale · cos θ`` (embeddings and centres normalised); False: raw ``x · w``."""
    scale: float
    """Multiplier of the non-target cosines (``s``)."""

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """The target logit for a vector of target cosines, differentiable with its exact gradient."""
        ...


class CombinedMargin:
    """Normalised margin with target logit ``s · (cos(m1·θ + m2) − m3)``; see the module docstring."""

    normalize = True

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        if not s > 0:
            raise ValueError(f"CombinedMargin: scale s must be > 0, got s={s}")
        if not m1 >= 1.0:
            raise ValueError(f"CombinedMargin: m1 must be >= 1 (SphereFace multiplier), got m1={m1}")
        if not 0.0 <= m2 < math.pi:
            raise ValueError(f"CombinedMargin: m2 must be in [0, pi), got m2={m2}")
        if not m3 >= 0.0:
            raise ValueError(f"CombinedMargin: m3 must be >= 0, got m3={m3}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.theta_star = (math.pi - self.m2) / self.m1
        # Offset of the linear-in-cos continuation past θ*, fixed so that ψ is continuous there.
        self._tail_offset = math.cos(self.theta_star) + 1.0 + self.m3

    @property
    def scale(self) -> float:
        """Multiplier of non-target cosines."""
        return self.s

    @property
    def is_identity(self) -> bool:
        """True when the target logit is just ``s · cos θ`` (normalised softmax)."""
        return self.m1 == 1.0 and self.m2 == 0.0 and self.m3 == 0.0

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """ψ for a vector of target cosines; differentiable with the exact gradient."""
        if self.is_identity:
            return cos_theta * self.s
        if self.m1 == 1.0 and self.m2 == 0.0:  # CosFace: no angle needed, exact everywhere
            return (cos_theta - self.m3) * self.s
        eps = _clamp_eps(cos_theta.dtype)
        clamped = cos_theta.clamp(-1.0 + eps, 1.0 - eps)
        theta = torch.acos(clamped)
        # Above 1 − ε, continue linearly with the slope at 1 − ε: strictly monotonic, finite gradient.
        # (Below −1 + ε the tail branch applies whenever m1·θ + m2 can reach π.)
        overshoot = (cos_theta - clamped).clamp_min(0.0)
        margin_branch = torch.cos(theta * self.m1 + self.m2) - self.m3 + overshoot * self._top_slope(eps)
        if self.theta_star >= math.pi:
            return margin_branch * self.s
        tail_branch = cos_theta - self._tail_offset
        return torch.where(theta <= self.theta_star, margin_branch, tail_branch) * self.s

    def _top_slope(self, eps: float) -> float:
        """d cos(m1·θ + m2) / d cos θ at cos θ = 1 − ε, i.e. m1·sin(m1·θ0 + m2) / sin θ0."""
        theta0 = math.acos(1.0 - eps)
        return self.m1 * math.sin(self.m1 * theta0 + self.m2) / math.sin(theta0)

    def __repr__(self) -> str:
        return f"CombinedMargin(s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3})"


class Softmax:
    """Unnormalised softmax baseline: logits are raw dot products ``x · w``."""

    normalize = False
    scale = 1.0
    is_identity = True

    def target_logit(self, logit: torch.Tensor) -> torch.Tensor:
        return logit

    def __repr__(self) -> str:
        return "Softmax()"



def _clamp_eps(dtype: torch.dtype) -> float:
    # 1 − ε must stay representable below 1, and ε large enough that 1/sqrt(1 − (1−ε)²) is modest.
    return 1e-7 if dtype == torch.float64 else 1e-6
