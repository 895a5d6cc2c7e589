"""Learning rate as a function of the optimizer step: linear warm-up, then poly or cosine decay.

A pure function of the step, so resuming needs nothing but the step count, and every rank computes
the same value without communication. Linear scaling rule: for SGD the peak LR is
``0.1 × global batch / 1024`` (global batch = batch_size × world size × grad_accum); the
presets in ``configs/`` are written for 8 GPUs × 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    peak_lr: float
    warmup_steps: int
    total_steps: int
    decay: str = "poly"  # "poly", "cosine" or "constant"
    power: float = 2.0

    def __call__(self, step: float) -> float:
        """LR for optimizer step ``step`` (0-based; a fraction once a restart changed the global batch)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return self.peak_lr
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.decay == "cosine":
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak_lr * (1.0 - progress) ** self.power
