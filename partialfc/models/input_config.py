"""What a backbone expects as input, carried by the model (``model.input_config``) as timm models do.

Loaders, evaluation and export read the normalisation from here instead of repeating constants,
so a backbone trained on one normalisation is never fed another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputConfig:
    """Input size ``(height, width)``, channel order and per-channel ``x = (pixel - mean) / std``.

    The defaults (mean = std = 127.5) map pixels ``[0, 255]`` to ``[-1, 1]``, as arcface_torch does.
    Only RGB exists because every decoder of this project (simplejpeg, DALI) produces RGB.
    """

    size: tuple[int, int] = (112, 112)
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)

    def __post_init__(self) -> None:
        if self.channel_order != "RGB":
            raise ValueError(f"channel_order must be 'RGB' (the decoders' output), got {self.channel_order!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) with positive sides, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need one value per channel, got mean={self.mean!r} std={self.std!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")

    def normalize(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` pixels in ``channel_order`` -> float32 ``[B, 3, H, W]`` model input.

        ``out`` (float32, ``[B, 3, H, W]``) receives the result in place, e.g. a shared-memory batch.
        """
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected uint8 pixels [B, H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        chw = pixels.permute(0, 3, 1, 2)
        if out is None:
            return (chw.float() - mean).div_(std)
        return torch.sub(chw, mean, out=out).div_(std)
