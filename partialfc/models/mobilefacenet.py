"""MobileFaceNet (``mbf``, ``mbf_large``) with arcface_torch's ``state_dict`` layout.

Structure and module names follow insightface ``recognition/arcface_torch/backbones/
mobilefacenet.py`` (itself after cavaface), so its checkpoints load with ``strict=True``.
That includes upstream's naming quirk: a depthwise unit's ``groups`` argument is its
*expanded width* (the depthwise conv has that many groups). The head is a 7x7 global
depthwise conv (GDC) + bias-free FC + BatchNorm1d rather than the BN-Dropout-FC-BN head.
``fp16`` behaves as in :mod:`partialfc.models.iresnet`; ``conv_sep`` and the GDC head run in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
from torch import nn

from partialfc.models.precision import body_autocast, float32_embedding
from partialfc.models.registry import BackboneOptions, register_model


class ConvBlock(nn.Module):
    """Conv -> BN -> PReLU, or Conv -> BN for the linear bottleneck (``activation=False``).

    Submodules are ``layers.0`` (conv), ``layers.1`` (BN), ``layers.2`` (PReLU), as upstream names them.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            *([nn.PReLU(out_c)] if activation else []),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``width`` -> 3x3 depthwise (stride) -> 1x1 linear project."""

    def __init__(self, in_c: int, out_c: int, width: int, stride: int, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, width),
            ConvBlock(width, width, kernel=3, stride=stride, padding=1, groups=width),
            ConvBlock(width, out_c, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` stride-1 residual inverted bottlenecks at ``channels``."""

    def __init__(self, channels: int, num_block: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(channels, channels, width, 1, residual=True) for _ in range(num_block)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv + BN -> flatten -> (dropout) -> bias-free FC -> BatchNorm1d.

    The dropout is not in ``layers`` so that the parameter indices stay upstream's.
    """

    def __init__(self, embedding_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(512, 512, kernel=7, groups=512, activation=False),
            nn.Flatten(1),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gdc, flatten, fc, bn = self.layers
        return bn(fc(self.dropout(flatten(gdc(x)))))


class MobileFaceNet(nn.Module):
    """MobileFaceNet; ``blocks`` are the residual counts of the four stages, ``scale`` the width multiplier.

    Input stride 2 then three stride-2 bottlenecks take 112 to 7; ``conv_sep`` lifts to 512 channels.
    ``dropout`` (not in upstream, default off) acts on the 512-d GDC output before the FC.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        dropout: float = 0.0,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        self.fp16 = fp16
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList([ConvBlock(3, c1, kernel=3, stride=2, padding=1)])
        if blocks[0] == 1:
            # Upstream: a grouped (64 groups) 3x3 ConvBlock instead of a one-block Residual.
            self.layers.append(ConvBlock(c1, c1, kernel=3, stride=1, padding=1, groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], width=128))
        self.layers.extend(
            [
                DepthWise(c1, c1, width=128, stride=2),
                Residual(c1, blocks[1], width=128),
                DepthWise(c1, c2, width=256, stride=2),
                Residual(c2, blocks[2], width=256),
                DepthWise(c2, c2, width=512, stride=2),
                Residual(c2, blocks[3], width=256),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(embedding_size, dropout)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with body_autocast(x, self.fp16):
            for layer in self.layers:
                x = layer(x)
        with float32_embedding(x):
            return self.features(self.conv_sep(x.float()))


@register_model
def mbf(embedding_size: int = 512, **options: Unpack[BackboneOptions]) -> MobileFaceNet:
    """MobileFaceNet as arcface_torch ``mbf``: blocks (1, 4, 6, 2), width x2."""
    return MobileFaceNet(embedding_size, blocks=(1, 4, 6, 2), scale=2, **options)


@register_model
def mbf_large(embedding_size: int = 512, **options: Unpack[BackboneOptions]) -> MobileFaceNet:
    """MobileFaceNet as arcface_torch ``mbf_large``: blocks (2, 8, 12, 4), width x4."""
    return MobileFaceNet(embedding_size, blocks=(2, 8, 12, 4), scale=4, **options)
