"""The --dry-run estimate of activation memory is what a real forward keeps for backward."""

from __future__ import annotations

import pytest
import torch

from partialfc.models import create_model
from partialfc.models.activation_memory import activation_bytes, saved_bytes


@pytest.mark.parametrize("backbone, amp", [("tiny", "none"), ("tiny", "bf16"), ("r18", "bf16")])
def test_fake_tensor_estimate_equals_a_real_forward(backbone, amp):
    """Measured on real CPU tensors with the same hook, at a batch the estimate extrapolates to."""
    torch.manual_seed(0)
    model = create_model(backbone, embedding_size=128)
    real = saved_bytes(model, torch.randn(6, 3, *model.input_config.size), amp)
    estimate = activation_bytes(backbone, 128, amp, 6)
    assert abs(estimate - real) <= 1e-3 * real, (estimate, real)  # r18 bf16: 27 KB of 161 MB apart


def test_activations_scale_with_the_batch_and_halve_under_bf16():
    fp32, bf16 = (activation_bytes("r50", 512, amp, 128) for amp in ("none", "bf16"))
    assert 0.45 < bf16 / fp32 < 0.55
    assert activation_bytes("r50", 512, "bf16", 256) - bf16 == bf16 - activation_bytes("r50", 512, "bf16", 0)
