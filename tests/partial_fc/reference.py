"""Dense single-process float64 reference of margin softmax training, written independently."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def reference_loss(
    spec, embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, sub_centers: int = 1, threshold=0.0
) -> torch.Tensor:
    _, s, m1, m2, m3 = spec
    if s is None:
        logits = class_scores(embeddings @ weight.t(), sub_centers)
    else:
        cos = interclass_filtered(cosines(embeddings, weight, sub_centers), labels, threshold)
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


def spread_norms(embeddings: torch.Tensor, step: int, low: float = 5.0, high: float = 120.0) -> torch.Tensor:
    """Rescale rows to norms spread over [low, high]: margins that read the feature norm need variety."""
    generator = torch.Generator().manual_seed(2000 + step)
    norms = low + (high - low) * torch.rand(embeddings.shape[0], 1, generator=generator, dtype=torch.float64)
    return F.normalize(embeddings, dim=1) * norms


def class_scores(scores: torch.Tensor, sub_centers: int) -> torch.Tensor:
    """Sub-center ArcFace: a class's score is the max over its K rows (rows K·c … K·c + K − 1)."""
    return scores if sub_centers == 1 else scores.view(scores.shape[0], -1, sub_centers).amax(dim=2)


def cosines(embeddings: torch.Tensor, weight: torch.Tensor, sub_centers: int = 1) -> torch.Tensor:
    return class_scores(F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).t(), sub_centers)


def interclass_filtered(cos: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """insightface recognition/arcface_torch losses.py (CombinedMarginLoss), dense: with a threshold > 0,
    each cosine strictly above it, but a sample's own class, is replaced by the constant 0; the mask is
    taken without gradient, so a filtered cosine passes none."""
    if threshold <= 0:
        return cos
    with torch.no_grad():
        above = cos > threshold
        above.scatter_(1, labels[:, None], False)
    return torch.where(above, torch.zeros_like(cos), cos)


def adaface_loss(
    embeddings, weight, labels, state: dict, s=64.0, m=0.4, h=0.333, t_alpha=0.01, sub_centers=1, threshold=0.0
) -> torch.Tensor:
    """mk-minchul/AdaFace head.py, dense; ``state`` holds batch_mean / batch_std and is updated."""
    eps = 1e-3
    norms = embeddings.norm(dim=1).clip(0.001, 100).detach()
    state["batch_mean"] = norms.mean() * t_alpha + (1 - t_alpha) * state["batch_mean"]
    state["batch_std"] = norms.std() * t_alpha + (1 - t_alpha) * state["batch_std"]
    scaler = ((norms - state["batch_mean"]) / (state["batch_std"] + eps) * h).clip(-1, 1)
    cos = interclass_filtered(cosines(embeddings, weight, sub_centers), labels, threshold).clamp(-1 + eps, 1 - eps)
    onehot = F.one_hot(labels, cos.shape[1]).double()
    theta = (cos.acos() + onehot * (-m * scaler[:, None])).clip(eps, math.pi - eps)
    logits = (theta.cos() - onehot * (m + m * scaler)[:, None]) * s
    return F.cross_entropy(logits, labels)


def curricularface_loss(
    embeddings, weight, labels, state: dict, s=64.0, m=0.5, sub_centers=1, threshold=0.0
) -> torch.Tensor:
    """HuangYG123/CurricularFace head, dense; ``state["t"]`` is updated."""
    cos = interclass_filtered(cosines(embeddings, weight, sub_centers), labels, threshold).clamp(-1, 1)
    target = cos.gather(1, labels[:, None])
    sin = (1.0 - target**2).sqrt()
    target_m = target * math.cos(m) - sin * math.sin(m)
    hard = cos > target_m
    final_target = torch.where(target > math.cos(math.pi - m), target_m, target - math.sin(math.pi - m) * m)
    state["t"] = target.detach().mean() * 0.01 + 0.99 * state["t"]
    cos = torch.where(hard, cos * (state["t"] + cos), cos)
    logits = cos.scatter(1, labels[:, None], final_target) * s
    return F.cross_entropy(logits, labels)


def magface_loss(
    embeddings,
    weight,
    labels,
    state: dict,
    s=64.0,
    l_a=10.0,
    u_a=110.0,
    l_m=0.45,
    u_m=0.8,
    lambda_g=35.0,
    sub_centers=1,
    threshold=0.0,
) -> torch.Tensor:
    """IrvingMeng/MagFace MagLinear (easy_margin) + MagLoss + lambda_g·loss_g, dense."""
    x_norm = embeddings.norm(dim=1, keepdim=True).clamp(l_a, u_a)
    margin = (u_m - l_m) / (u_a - l_a) * (x_norm - l_a) + l_m
    cos = interclass_filtered(cosines(embeddings, weight, sub_centers), labels, threshold).clamp(-1, 1)
    sin = (1.0 - cos**2).sqrt()
    cos_m = torch.where(cos > 0, cos * torch.cos(margin) - sin * torch.sin(margin), cos)
    onehot = F.one_hot(labels, cos.shape[1]).double()
    logits = s * (onehot * cos_m + (1.0 - onehot) * cos)
    loss_g = (x_norm / u_a**2 + 1.0 / x_norm).mean()
    return F.cross_entropy(logits, labels) + lambda_g * loss_g


def elasticface_loss(
    embeddings, weight, labels, margins: torch.Tensor, s=64.0, kind="arc", sub_centers=1, threshold=0.0
) -> torch.Tensor:
    """fdbtrs/ElasticFace ElasticArcFace / ElasticCosFace, dense, with the given per-sample margins."""
    cos = interclass_filtered(cosines(embeddings, weight, sub_centers), labels, threshold).clamp(-1, 1)
    m_hot = F.one_hot(labels, cos.shape[1]).double() * margins[:, None]
    logits = (cos.acos() + m_hot).cos() if kind == "arc" else cos - m_hot
    return F.cross_entropy(logits * s, labels)


@dataclass(frozen=True)
class Case:
    """One margin under test: how to build it, and its independent dense reference."""

    make_margin: Callable[[], Any]
    loss: Callable[..., torch.Tensor]  # (embeddings, weight, labels, state, drawn inputs, sub_centers, threshold)
    initial_state: dict
    spread_norms: bool  # feed embeddings with norms spread over [5, 120] (the norm-reading families)


def _combined_case(spec) -> Case:
    return Case(
        lambda: make_head(spec),
        lambda e, w, y, state, drawn, k=1, t=0.0: reference_loss(spec, e, w, y, k, t),
        {},
        False,
    )


def _families() -> dict[str, Case]:
    from partialfc import AdaFace, CurricularFace, ElasticFace, MagFace

    return {
        "adaface": Case(
            lambda: AdaFace(s=64.0, m=0.4, h=0.333, t_alpha=0.01),
            lambda e, w, y, state, drawn, k=1, t=0.0: adaface_loss(e, w, y, state, sub_centers=k, threshold=t),
            {
                "batch_mean": torch.tensor(20.0, dtype=torch.float64),
                "batch_std": torch.tensor(100.0, dtype=torch.float64),
            },
            True,
        ),
        "curricularface": Case(
            lambda: CurricularFace(s=64.0, m=0.5),
            lambda e, w, y, state, drawn, k=1, t=0.0: curricularface_loss(e, w, y, state, sub_centers=k, threshold=t),
            {"t": torch.tensor(0.0, dtype=torch.float64)},
            True,
        ),
        "magface": Case(
            lambda: MagFace(s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0),
            lambda e, w, y, state, drawn, k=1, t=0.0: magface_loss(e, w, y, state, sub_centers=k, threshold=t),
            {},
            True,
        ),
        "elasticface_arc": Case(
            lambda: ElasticFace(s=64.0, m=0.5, std=0.05, kind="arc"),
            lambda e, w, y, state, drawn, k=1, t=0.0: elasticface_loss(
                e, w, y, drawn, kind="arc", sub_centers=k, threshold=t
            ),
            {},
            True,
        ),
        "elasticface_cos": Case(
            lambda: ElasticFace(s=64.0, m=0.35, std=0.05, kind="cos"),
            lambda e, w, y, state, drawn, k=1, t=0.0: elasticface_loss(
                e, w, y, drawn, kind="cos", sub_centers=k, threshold=t
            ),
            {},
            True,
        ),
    }


CASES: dict[str, Case] = {spec[0]: _combined_case(spec) for spec in HEADS} | _families()


def record_sample_inputs(pfc) -> list:
    """Make ``pfc``'s margin append its per-sample inputs of every forward pass to the returned list."""
    drawn, original = [], pfc.margin.sample_inputs

    def recording(embeddings, step):
        inputs = original(embeddings, step)
        drawn.append(None if inputs is None else inputs.detach().clone())
        return inputs

    pfc.margin.sample_inputs = recording
    return drawn
