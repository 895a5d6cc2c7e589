"""Margin heads: formula, exact gradient, the θ·m1 + m2 > π region, endpoints, validation."""

from __future__ import annotations

import math

import pytest
import torch
from reference import reference_psi

from partialfc import CombinedMargin, PartialFC

MARGINS = [
    (64.0, 1.0, 0.5, 0.0),
    (64.0, 1.35, 0.0, 0.0),
    (64.0, 4.0, 0.0, 0.0),
    (64.0, 1.0, 0.0, 0.35),
    (30.0, 1.2, 0.5, 0.2),
    (64.0, 1.0, 0.0, 0.0),
]


@pytest.mark.parametrize("params", MARGINS)
def test_value_matches_formula(params):
    cos = torch.linspace(-0.999, 0.999, 2001, dtype=torch.float64)
    torch.testing.assert_close(CombinedMargin(*params).target_logit(cos), reference_psi(cos, *params))


@pytest.mark.parametrize("params", MARGINS)
def test_gradient_is_exact_derivative(params):
    cos = torch.linspace(-0.99, 0.99, 41, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(CombinedMargin(*params).target_logit, (cos,))


@pytest.mark.parametrize("params", MARGINS)
def test_monotonic_and_continuous_over_whole_angle_range(params):
    margin = CombinedMargin(*params)
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    psi = margin.target_logit(torch.cos(theta))
    steps = psi[1:] - psi[:-1]
    assert (steps < 0).all(), "ψ must decrease strictly as θ grows"
    # Continuity: no jump larger than the local slope allows (the ArcFace fallback jumps).
    max_slope = params[0] * params[1] * (math.pi / 20000) * 1.01 + 1e-9
    assert steps.abs().max() <= max_slope


def test_fallback_region_is_used_and_has_finite_nonzero_gradient():
    margin = CombinedMargin(64.0, 1.0, 0.5, 0.0)
    assert margin.theta_star == pytest.approx(math.pi - 0.5)
    cos = torch.tensor([math.cos(math.pi - 0.3), -0.999], dtype=torch.float64, requires_grad=True)
    margin.target_logit(cos).sum().backward()
    torch.testing.assert_close(cos.grad, torch.full_like(cos, 64.0))


@pytest.mark.parametrize("params", MARGINS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_endpoints_are_finite(params, dtype):
    cos = torch.tensor([-1.0, 1.0, -1.0 + 1e-7, 1.0 - 1e-7], dtype=dtype, requires_grad=True)
    psi = CombinedMargin(*params).target_logit(cos)
    psi.sum().backward()
    assert torch.isfinite(psi).all() and torch.isfinite(cos.grad).all()


def test_partial_fc_gradient_finite_when_embedding_opposes_its_centre():
    pfc = PartialFC(4, 3, 1.0, CombinedMargin(64.0, 1.0, 0.5, 0.0), init_std=1.0)
    embeddings = (-pfc.weight.detach()[:2]).clone().requires_grad_()  # θ = π exactly
    loss = pfc(embeddings, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(s=0.0), "s="), (dict(m1=0.5), "m1="), (dict(m2=-0.1), "m2="), (dict(m2=4.0), "m2="), (dict(m3=-1.0), "m3=")],
)
def test_invalid_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CombinedMargin(**kwargs)
