"""The BN-Dropout-FC-BN embedding projection of ArcFace-style backbones (the backbones keep it as `.head`)."""

from __future__ import annotations

import torch
from torch import nn

from partialfc.models.precision import float32_embedding


def frozen_scale_bn1d(embedding_size: int) -> nn.BatchNorm1d:
    """Final embedding BatchNorm with its scale fixed at 1 (arcface_torch's ``features``).

    A learnable scale would only rescale embeddings that the margin loss normalises anyway;
    fixing it removes that degree of freedom while the shift stays trainable.
    """
    bn = nn.BatchNorm1d(embedding_size, eps=1e-5)
    nn.init.constant_(bn.weight, 1.0)
    bn.weight.requires_grad = False
    return bn


class EmbeddingProjection(nn.Module):
    """BN2d -> flatten -> Dropout -> FC -> BN1d: keeps the spatial layout in the embedding.

    Unlike global pooling, the FC over the whole ``C x 7 x 7`` map keeps where features are on
    the aligned face, which is what makes this projection strong for face recognition. The flatten
    is in logical ``(C, H, W)`` order, so ``channels_last`` inputs give the same result.
    """

    def __init__(self, channels: int, spatial: int, embedding_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial, embedding_size)
        self.features = frozen_scale_bn1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.bn(x), 1))
        with float32_embedding(x):
            return self.features(self.fc(x.float()))
