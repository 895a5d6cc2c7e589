"""A tiny Face-ResNet for CPU runs: tests, examples and multi-rank smoke training on a laptop."""

from __future__ import annotations

from partialfc.models.face_resnet import FaceResNet
from partialfc.models.registry import register_model


@register_model
def tiny(embedding_size: int = 512, **kwargs: object) -> FaceResNet:
    """Tiny net: stages 16/32/64/128 wide with 0/1/1/1 residual units, 1x1 projection to 32, same head.

    TIMING_PLACEHOLDER
    """
    return FaceResNet((0, 0, 1, 1), embedding_size, widths=(8, 24, 48, 96), head_channels=32, **kwargs)
