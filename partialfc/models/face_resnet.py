"""Face-ResNet (SphereFace / Center-loss style): strided conv stages with PReLU residual units.

The classic nets use plain conv + PReLU; this version puts a BatchNorm after every conv so
that deep variants train from scratch at large learning rates without SphereFace's loss
annealing, and ends in the BN-Dropout-FC-BN embedding projection
(:class:`~partialfc.models.projection.EmbeddingProjection`) instead of a bare FC. Stage depths (units
per stage) follow SphereFace-20/36/64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
from torch import nn

from partialfc.models.precision import body_autocast
from partialfc.models.projection import EmbeddingProjection
from partialfc.models.registry import BackboneOptions, register_model

FEATURE_MAP = 7  # 112 / 2**4


def conv_bn_prelu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias; BN follows) -> BN -> PReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=1e-5),
        nn.PReLU(out_channels),
    )


class ResidualUnit(nn.Module):
    """``x + (conv-BN-PReLU -> conv-BN-PReLU)(x)`` at constant width and resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_prelu(channels, channels), conv_bn_prelu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FaceResNet(nn.Module):
    """Four stages, each a stride-2 conv-BN-PReLU then ``depths[i]`` residual units, and the embedding head.

    Args:
        depths: residual units per stage.
        embedding_size: output dimension.
        widths: channels of the four stages.
        head_channels: if set, a 1x1 conv-BN-PReLU projects the 7x7 map to this many channels
            before the head, shrinking the FC (``C * 49 * E`` weights) for small models.
        dropout: dropout before the FC.
        fp16: run the convolutional body under float16 autocast (the head stays float32).
    """

    def __init__(
        self,
        depths: Sequence[int],
        embedding_size: int = 512,
        widths: Sequence[int] = (64, 128, 256, 512),
        head_channels: int | None = None,
        dropout: float = 0.0,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"FaceResNet needs 4 stages, got depths={list(depths)} widths={list(widths)}")
        self.fp16 = fp16
        stages = []
        in_channels = 3
        for width, depth in zip(widths, depths, strict=True):
            units = [conv_bn_prelu(in_channels, width, stride=2)] + [ResidualUnit(width) for _ in range(depth)]
            stages.append(nn.Sequential(*units))
            in_channels = width
        if head_channels is not None:
            stages.append(conv_bn_prelu(in_channels, head_channels, kernel=1))
            in_channels = head_channels
        self.body = nn.Sequential(*stages)
        self.head = EmbeddingProjection(in_channels, FEATURE_MAP * FEATURE_MAP, embedding_size, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with body_autocast(x, self.fp16):
            x = self.body(x)
        return self.head(x)


@register_model
def face_resnet20(embedding_size: int = 512, **options: Unpack[BackboneOptions]) -> FaceResNet:
    """Face-ResNet-20 (SphereFace-20 depths 1, 2, 4, 1)."""
    return FaceResNet((1, 2, 4, 1), embedding_size, **options)


@register_model
def face_resnet36(embedding_size: int = 512, **options: Unpack[BackboneOptions]) -> FaceResNet:
    """Face-ResNet-36 (SphereFace-36 depths 2, 4, 8, 2)."""
    return FaceResNet((2, 4, 8, 2), embedding_size, **options)


@register_model
def face_resnet64(embedding_size: int = 512, **options: Unpack[BackboneOptions]) -> FaceResNet:
    """Face-ResNet-64 (SphereFace-64 depths 3, 8, 16, 3)."""
    return FaceResNet((3, 8, 16, 3), embedding_size, **options)
