"""Exponential moving average of the backbone weights, for verification and export.

``ema = decay·ema + (1 − decay)·weights`` after every *applied* optimizer step, one fused
``_foreach_lerp_`` over the parameters; buffers (batch-norm running statistics) are copied, as
timm's ``ModelEmaV3`` does by default. A step the optimizer dropped (non-finite loss or gradient
norm) leaves the average untouched; the decision stays on the device (a lerp weight of 0 and a
``where`` for the buffers), so the update adds no host sync. The average is a checkpointed
component: a resumed run continues it bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """An EMA copy of ``model`` (same architecture, same device, eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"WeightAverage: decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current weights (e.g. after loading pretrained ones)."""
        self.module.load_state_dict(model.state_dict())

    @torch.no_grad()
    def update(self, model: nn.Module, applied: torch.Tensor) -> None:
        """Move towards ``model`` when ``applied`` (a device bool scalar: the step was taken)."""
        averages, weights = _floating(self.module.parameters()), _floating(model.parameters())
        if averages:  # a dropped step left the weights as they were (finite), so a lerp by 0 is exact
            step = (1.0 - self.decay) * applied.to(averages[0].dtype)
            torch._foreach_lerp_(averages, weights, [step] * len(averages))
        for average, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            average.copy_(torch.where(applied, buffer, average))  # where, not lerp: a dropped step's NaN stays out

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state)


def _floating(tensors: Any) -> list[torch.Tensor]:
    return [t for t in tensors if t.is_floating_point()]
