"""Dense single-process float64 reference of margin softmax training, written independently."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# (name, s, m1, m2, m3); s=None means the unnormalised softmax head.
HEADS = [
    ("softmax", None, 1.0, 0.0, 0.0),
    ("sphereface", 64.0, 1.35, 0.0, 0.0),
    ("arcface", 64.0, 1.0, 0.5, 0.0),
    ("cosface", 64.0, 1.0, 0.0, 0.35),
    ("combined", 64.0, 1.1, 0.3, 0.2),
]


def make_head(spec):
    from partialfc import CombinedMargin, Softmax

    _, s, m1, m2, m3 = spec
    return Softmax() if s is None else CombinedMargin(s=s, m1=m1, m2=m2, m3=m3)


def reference_psi(cos: torch.Tensor, s: float, m1: float, m2: float, m3: float) -> torch.Tensor:
    """s·(cos(m1·θ+m2) − m3) for θ ≤ (π−m2)/m1, continued as s·(cos θ − cos θ* − 1 − m3) beyond."""
    theta = torch.acos(cos)
    theta_star = (math.pi - m2) / m1
    inside = s * (torch.cos(m1 * theta + m2) - m3)
    beyond = s * (cos - math.cos(theta_star) - 1.0 - m3)
    return torch.where(theta <= theta_star, inside, beyond)


def reference_loss(spec, embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _, s, m1, m2, m3 = spec
    if s is None:
        logits = embeddings @ weight.t()
    else:
        cos = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).t()
        target = reference_psi(cos.gather(1, labels[:, None]).squeeze(1), s, m1, m2, m3)
        logits = (s * cos).scatter(1, labels[:, None], target[:, None])
    return F.cross_entropy(logits, labels)


def batch(step: int, num_samples: int, dim: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step (float64 embeddings, int64 labels), the same in every process."""
    generator = torch.Generator().manual_seed(1000 + step)
    embeddings = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return embeddings, labels


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error ‖actual − expected‖ / ‖expected‖ (Frobenius)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected).clamp_min(1e-30))
