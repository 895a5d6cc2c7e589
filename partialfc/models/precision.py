"""Precision: the dtype names of configs and command lines, and the backbones' contexts (optional
float16 body, float32 embedding layers)."""

from __future__ import annotations

import contextlib

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Every precision name a config field (``train.amp``, ``loss.param_dtype``) or a benchmark flag takes."""


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` names; None for "none" (float32, autocast off)."""
    return None if amp == "none" else DTYPES[amp]


def body_autocast(x: torch.Tensor, fp16: bool) -> contextlib.AbstractContextManager:
    """Autocast to float16 on ``x``'s device when ``fp16``; otherwise leave any caller autocast alone.

    Mirrors arcface_torch's ``fp16`` option, except that ``fp16=False`` does not switch off an
    autocast the caller opened (upstream's ``autocast(False)`` does), so external bf16 works.
    """
    if fp16:
        return torch.autocast(device_type=x.device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def float32_embedding(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast so the embedding layers run in float32, as in arcface_torch.

    The FC and final BatchNorm are a tiny share of the FLOPs; keeping them in float32 gives
    float32 embeddings whatever precision the body ran in.
    """
    return torch.autocast(device_type=x.device.type, enabled=False)
