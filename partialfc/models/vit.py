"""Vision Transformers (``vit_t`` .. ``vit_h``) with arcface_torch's exact ``state_dict`` layout.

Structure, names and shapes follow insightface ``recognition/arcface_torch/backbones/vit.py``
(``VisionTransformer`` with ``norm_layer="ln"``) and the presets of ``backbones/__init__.py``
``get_model``, so their released weights load with ``load_state_dict(strict=True)`` and embed
alike. The 112x112 image is cut into 9x9 patches (a 12x12 grid: the last 4 rows and columns are
never seen, as upstream), each projected to ``width`` and given a learned position; ``depth``
pre-norm blocks (multi-head attention without qkv bias, ReLU6 MLP of 4x width) follow; the
final LayerNorm's 144 tokens are flattened into the feature head
``Linear(144 * width -> width) -> BN -> Linear(width -> D) -> BN`` (bias-free, BN eps 2e-5).

Training only (identity in eval mode, so inference never depends on them):

* **Patch masking** (``mask_ratio``): each image keeps a random ``int(144 * (1 - mask_ratio))``
  of its tokens through the blocks; the dropped ones come back after the final norm as the learned
  ``mask_token``. Upstream's ``random_masking`` is called without the configured ratio and so
  drops its default 0.1 whenever masking is on: its ``vit_b_dp005_mask_005`` and
  ``vit_l_dp005_mask_005`` trained with 0.1. Here ``mask_ratio`` is the fraction dropped.
  Without masking the mask token takes no gradient (``requires_grad`` off, which DDP needs).
* **Stochastic depth** (``drop_path``): each residual branch of block ``i`` is dropped per sample
  with probability ``p = drop_path * i / (depth - 1)`` and the kept ones scaled by ``1 / (1 - p)``, as
  timm's ``DropPath`` (same random draws in the same order).

Differences, none of which touch the weights: the attention core runs as
``scaled_dot_product_attention`` in the autocast dtype (upstream forces float32 there and float16
autocast around it whatever the config says); ``fp16`` behaves as in :mod:`partialfc.models.iresnet`;
the final norm and the feature head always run in float32, as upstream's do. Upstream's gradient
checkpointing (``using_checkpoint``, on for vit_b/l/h) is not provided: ``--dry-run`` states the
activation memory that costs. ``dropout`` (not in upstream, default off) acts on the flattened
tokens before the feature head.

Upstream's WebFace42M variants (``vit_t_dp005_mask0``, ``vit_s_dp005_mask_0``,
``vit_b_dp005_mask_005``, ``vit_l_dp005_mask_005``) are these networks with other training
regularisation: ``model.drop_path`` and ``model.mask_ratio`` (the presets ``configs/wf42m_vit_*.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import nn

from partialfc.models.precision import body_autocast, float32_embedding
from partialfc.models.registry import BackboneOptions, register_model

IMAGE_SIZE = 112
PATCH_SIZE = 9
GRID = IMAGE_SIZE // PATCH_SIZE  # 12: the strided patch convolution ignores the last 112 - 108 pixels
TOKENS = GRID * GRID
MLP_RATIO = 4
HEAD_BN_EPS = 2e-5


class ViTOptions(BackboneOptions, total=False):
    """The ViT factories' keyword options (see :class:`VisionTransformer`); absent: the preset's value."""

    drop_path: float
    mask_ratio: float


@dataclass(frozen=True)
class ViTPreset:
    """One ``get_model`` entry of arcface_torch: token width, blocks, heads and its training regularisation."""

    width: int
    depth: int
    heads: int
    drop_path: float
    mask_ratio: float


# insightface recognition/arcface_torch/backbones/__init__.py, get_model. vit_l exists there only as
# vit_l_dp005_mask_005 (drop path 0.05; masking on, which drops 0.1 of the tokens: see the module docstring).
VIT_PRESETS = {
    "vit_t": ViTPreset(width=256, depth=12, heads=8, drop_path=0.1, mask_ratio=0.1),
    "vit_s": ViTPreset(width=512, depth=12, heads=8, drop_path=0.1, mask_ratio=0.1),
    "vit_b": ViTPreset(width=512, depth=24, heads=8, drop_path=0.1, mask_ratio=0.1),
    "vit_l": ViTPreset(width=768, depth=24, heads=8, drop_path=0.05, mask_ratio=0.1),
    "vit_h": ViTPreset(width=1024, depth=48, heads=8, drop_path=0.1, mask_ratio=0.0),
}


class DropPath(nn.Module):
    """Drop the whole residual branch of a random ``rate`` of the samples in training; scale the rest by
    ``1 / (1 - rate)`` so that the expectation is unchanged."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        keep = 1 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` (no bias) -> softmax(q k^T / sqrt(head width)) v -> ``proj``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"token width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """``fc1`` (width -> 4 width) -> ReLU6 -> ``fc2``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, MLP_RATIO * width)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, each branch under
    stochastic depth."""

    def __init__(self, width: int, heads: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """9x9 patches, stride 9, each linearly projected to the token width: ``[B, 3, 112, 112] -> [B, 144, width]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """arcface_torch's face ViT (see the module docstring).

    Args:
        width: token width (upstream ``embed_dim``).
        depth: transformer blocks.
        heads: attention heads.
        embedding_size: output dimension (upstream ``num_classes``).
        drop_path: stochastic-depth rate of the last block (upstream ``drop_path_rate``), training only.
        mask_ratio: fraction of patch tokens dropped per image, training only.
        dropout: dropout on the flattened tokens before the feature head (not in upstream).
        fp16: run the patch embedding and the blocks under float16 autocast.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        embedding_size: int = 512,
        drop_path: float = 0.0,
        mask_ratio: float = 0.0,
        dropout: float = 0.0,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0 <= drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.width, self.mask_ratio, self.fp16 = width, mask_ratio, fp16
        self.patch_embed = PatchEmbed(width)
        self.pos_embed = nn.Parameter(torch.zeros(1, TOKENS, width))
        # Rising linearly over the blocks, as upstream's linspace; plain floats, so that the model builds
        # on the meta device and under fake tensors (the --dry-run memory plan).
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(width, heads, rate) for rate in rates)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(p=dropout)
        self.feature = nn.Sequential(
            nn.Linear(TOKENS * width, width, bias=False),
            nn.BatchNorm1d(width, eps=HEAD_BN_EPS),
            nn.Linear(width, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=HEAD_BN_EPS),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width), requires_grad=mask_ratio > 0)

        # Upstream's initialisation: N(0, 0.02) mask token, positions and linear weights, zero biases, unit
        # LayerNorms; the patch convolution and BatchNorms keep PyTorch's. Upstream truncates its normals at
        # +-2, 100 standard deviations out: a plain normal draws the same (and builds under fake tensors,
        # where torch's truncated normal cannot loop on the values it drew).
        for parameter in (self.mask_token, self.pos_embed):
            nn.init.normal_(parameter, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _drop_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random ``1 - mask_ratio`` of each image's tokens, and the permutation that puts them back."""
        batch, count, width = tokens.shape
        kept = int(count * (1 - self.mask_ratio))
        shuffle = torch.argsort(torch.rand(batch, count, device=tokens.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        return torch.gather(tokens, 1, shuffle[:, :kept, None].expand(-1, -1, width)), restore

    def _restore_tokens(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """The kept tokens back in place, the mask token where one was dropped."""
        batch, kept, width = tokens.shape
        filler = self.mask_token.to(tokens.dtype).expand(batch, restore.shape[1] - kept, width)
        return torch.gather(torch.cat([tokens, filler], dim=1), 1, restore[:, :, None].expand(-1, -1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        restore = None
        with body_autocast(x, self.fp16):
            tokens = self.patch_embed(x) + self.pos_embed
            if self.training and self.mask_ratio > 0:
                tokens, restore = self._drop_tokens(tokens)
            for block in self.blocks:
                tokens = block(tokens)
        with float32_embedding(x):
            tokens = self.norm(tokens.float())
            if restore is not None:
                tokens = self._restore_tokens(tokens, restore)
            return self.feature(self.dropout(tokens.flatten(1)))


def _from_preset(name: str, embedding_size: int, options: ViTOptions) -> VisionTransformer:
    preset = VIT_PRESETS[name]
    return VisionTransformer(
        preset.width,
        preset.depth,
        preset.heads,
        embedding_size,
        drop_path=options.get("drop_path", preset.drop_path),
        mask_ratio=options.get("mask_ratio", preset.mask_ratio),
        dropout=options.get("dropout", 0.0),
        fp16=options.get("fp16", False),
    )


@register_model
def vit_t(embedding_size: int = 512, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-T (arcface_torch ``vit_t``): width 256, 12 blocks, 8 heads; drop path 0.1, mask 0.1."""
    return _from_preset("vit_t", embedding_size, options)


@register_model
def vit_s(embedding_size: int = 512, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-S (arcface_torch ``vit_s``): width 512, 12 blocks, 8 heads; drop path 0.1, mask 0.1."""
    return _from_preset("vit_s", embedding_size, options)


@register_model
def vit_b(embedding_size: int = 512, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-B (arcface_torch ``vit_b``): width 512, 24 blocks, 8 heads; drop path 0.1, mask 0.1."""
    return _from_preset("vit_b", embedding_size, options)


@register_model
def vit_l(embedding_size: int = 512, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-L (arcface_torch ``vit_l_dp005_mask_005``): width 768, 24 blocks, 8 heads; drop path 0.05, mask 0.1."""
    return _from_preset("vit_l", embedding_size, options)


@register_model
def vit_h(embedding_size: int = 512, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-H (arcface_torch ``vit_h``): width 1024, 48 blocks, 8 heads; drop path 0.1, no masking."""
    return _from_preset("vit_h", embedding_size, options)
