"""Dynamic loss scaling for fp16 that also sees the class-centre gradients.

``torch.amp.GradScaler`` finds infs only in the gradients of the ``torch.optim`` optimizers it
steps; the centre gradients live outside autograd and outside any such optimizer, and they differ
per rank. Here the decision comes from the global gradient norm (backbone + every centre shard,
all-reduced), so all ranks skip or step together. bf16 and fp32 need no scaling.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossScaler:
    scale: float = 2.0**16
    growth_interval: int = 2000
    """Double the scale after this many consecutive finite steps."""
    enabled: bool = True
    good_steps: int = 0

    def update(self, found_inf: bool) -> None:
        """Halve on overflow (the step is skipped by the caller), grow after a run of good steps."""
        if not self.enabled:
            return
        if found_inf:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= 2.0
            self.good_steps = 0

    @property
    def factor(self) -> float:
        """Multiplier of the loss before backward (1 when disabled)."""
        return self.scale if self.enabled else 1.0

    def state_dict(self) -> dict[str, float | int | bool]:
        return {"scale": self.scale, "good_steps": self.good_steps, "enabled": self.enabled}

    def load_state_dict(self, state: dict[str, float | int | bool]) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
