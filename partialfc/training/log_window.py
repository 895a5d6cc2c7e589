"""What the trainer accumulates between two log lines, without a host sync per step.

The trainer folds each step's :class:`~partialfc.training.train_step.StepReport` into a :class:`LogWindow`.
Device values (loss, gradient norm, non-finite flags) stay on the device until the log line reads
them; the step phases' seconds come from :class:`~partialfc.common.phase_timer.PhaseTimer`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from partialfc.training.train_step import StepReport


class LogWindow:
    """The step reports of one log interval, folded: loss sum, steps, data wait, last norm and LR."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loss_sum: torch.Tensor | float = 0.0
        self.micro_batches = self.steps = 0
        self.data_wait = 0.0
        self.grad_norm: torch.Tensor | None = None
        self.lr = 0.0

    def add(self, report: StepReport) -> None:
        """Fold one step's report in (no host sync: the loss stays on the device)."""
        for loss in report.micro_losses:
            self.loss_sum = self.loss_sum + loss
        self.micro_batches += report.micro_batches
        self.steps += 1
        self.data_wait += report.data_wait
        self.grad_norm, self.lr = report.grad_norm, report.lr

    def mean_loss(self) -> float:
        """The interval's mean loss per micro-batch (one host sync)."""
        return float(self.loss_sum) / max(self.micro_batches, 1)

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)
