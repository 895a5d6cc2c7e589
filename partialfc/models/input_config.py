"""What a backbone expects as input, carried by the model (``model.input_config``) as timm models do.

Loaders, evaluation and export read the normalisation from here instead of repeating constants,
so a backbone trained on one normalisation is never fed another.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


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

    @functools.cached_property
    def _shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``mean`` and ``1 / std``, shaped ``[1, 3, 1, 1]`` to broadcast over NCHW."""
        mean = np.array(self.mean, np.float32).reshape(1, 3, 1, 1)
        return mean, np.float32(1) / np.array(self.std, np.float32).reshape(1, 3, 1, 1)

    def normalize(self, pixels: torch.Tensor | np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` pixels in ``channel_order`` -> float32 ``[B, 3, H, W]`` model input.

        Computed as ``(pixel - mean) * (1 / std)``, bit-identical for tensors (on their device) and
        numpy arrays. A numpy array may have any strides (a mirrored view): the PyTorch loader
        normalises each decoded image in one fused transpose-convert pass this way, which a
        flipped copy into a batch tensor would make several times slower. ``out`` (float32,
        ``[B, 3, H, W]``, on CPU for numpy input) receives the result in place.
        """
        if pixels.dtype not in (torch.uint8, np.uint8) or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected uint8 pixels [B, H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}")
        shift, scale = self._shift_scale
        if isinstance(pixels, np.ndarray):
            if out is None:
                out = torch.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=torch.float32)
            out_array = out.numpy()
            out_array[...] = pixels.transpose(0, 3, 1, 2)
            out_array -= shift
            out_array *= scale
            return out
        chw = pixels.permute(0, 3, 1, 2)
        shift_t, scale_t = (torch.from_numpy(a).to(pixels.device) for a in (shift, scale))
        if out is None:
            return (chw.float() - shift_t).mul_(scale_t)
        return torch.sub(chw, shift_t, out=out).mul_(scale_t)


def input_config_of(model: nn.Module) -> InputConfig:
    """``model.input_config`` as an :class:`InputConfig`: torch types a module's attributes as ``Tensor | Module``."""
    config = model.input_config
    if not isinstance(config, InputConfig):
        raise TypeError(f"{type(model).__name__}.input_config is a {type(config).__name__}, not an InputConfig")
    return config
