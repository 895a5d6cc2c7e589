"""IResNet (ArcFace "improved ResNet") with arcface_torch's exact ``state_dict`` layout.

Module names, shapes, BatchNorm eps (1e-5) and momentum (PyTorch default 0.1) follow
insightface ``recognition/arcface_torch/backbones/iresnet.py``, so its released checkpoints
load with ``load_state_dict(strict=True)``. Differences, none of which touch the weights:

* ``fp16=True`` runs the body under float16 autocast like upstream, but ``fp16=False`` leaves
  a caller's ``torch.autocast`` in force (upstream disables it); the FC and ``features`` always
  run in float32, so embeddings are float32.
* Dropout is not in-place (upstream's in-place dropout overwrites ``bn2``'s output view).
* Gradient checkpointing and dilation options are not provided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
from torch import nn

from partialfc.models.precision import body_autocast, float32_embedding
from partialfc.models.projection import frozen_scale_bn1d
from partialfc.models.registry import BackboneOptions, register_model

FEATURE_MAP = 7  # 112 / 2**4: stride 2 in each of the four stages


class IResNetOptions(BackboneOptions, total=False):
    """The IResNet factories' keyword options (see :class:`IResNet`)."""

    zero_init_residual: bool


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style unit ``BN -> conv -> BN -> PReLU -> conv(stride) -> BN`` plus shortcut.

    The stride sits on the second conv, as upstream; ``downsample`` is a strided 1x1 conv + BN.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """Stem ``conv(3->64) -> BN -> PReLU``, four strided stages (64, 128, 256, 512), BN-Dropout-FC-BN head.

    Args:
        layers: blocks per stage (``layer1`` .. ``layer4``).
        embedding_size: output dimension (upstream ``num_features``).
        dropout: dropout before the FC (upstream uses 0 for all released models).
        zero_init_residual: zero each block's ``bn2`` scale so every residual branch starts at
            zero (the block is the identity); same choice of BN as upstream.
        fp16: run the convolutional body under float16 autocast (see module docstring).
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {list(layers)}")
        self.fp16 = fp16
        self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, 64, layers[0])
        self.layer2 = self._make_layer(64, 128, layers[1])
        self.layer3 = self._make_layer(128, 256, layers[2])
        self.layer4 = self._make_layer(256, 512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * FEATURE_MAP * FEATURE_MAP, embedding_size)
        self.features = frozen_scale_bn1d(embedding_size)

        # Upstream's initialisation: N(0, 0.1) convs, unit-scale BNs, PyTorch-default FC.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    @staticmethod
    def _make_layer(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
        """One stage: a stride-2 block with a projection shortcut, then ``blocks - 1`` plain ones."""
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5),
        )
        units = [IBasicBlock(in_channels, channels, stride=2, downsample=downsample)]
        units += [IBasicBlock(channels, channels) for _ in range(1, blocks)]
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with body_autocast(x, self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        with float32_embedding(x):
            return self.features(self.fc(x.float()))


@register_model
def r18(embedding_size: int = 512, **options: Unpack[IResNetOptions]) -> IResNet:
    """IResNet-18 (arcface_torch ``r18``)."""
    return IResNet([2, 2, 2, 2], embedding_size, **options)


@register_model
def r34(embedding_size: int = 512, **options: Unpack[IResNetOptions]) -> IResNet:
    """IResNet-34 (arcface_torch ``r34``)."""
    return IResNet([3, 4, 6, 3], embedding_size, **options)


@register_model
def r50(embedding_size: int = 512, **options: Unpack[IResNetOptions]) -> IResNet:
    """IResNet-50 (arcface_torch ``r50``), the usual large-scale baseline."""
    return IResNet([3, 4, 14, 3], embedding_size, **options)


@register_model
def r100(embedding_size: int = 512, **options: Unpack[IResNetOptions]) -> IResNet:
    """IResNet-100 (arcface_torch ``r100``)."""
    return IResNet([3, 13, 30, 3], embedding_size, **options)


@register_model
def r200(embedding_size: int = 512, **options: Unpack[IResNetOptions]) -> IResNet:
    """IResNet-200 (arcface_torch ``r200``)."""
    return IResNet([6, 26, 60, 6], embedding_size, **options)
