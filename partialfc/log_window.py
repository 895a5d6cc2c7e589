"""What the trainer accumulates between two log lines, without a host sync per step.

The trainer folds each step's :class:`~partialfc.train_step.StepReport` into a :class:`LogWindow`.
Device values (loss, gradient norm, non-finite flags) stay on the device until the log line reads
them; step phases are timed with CUDA events on GPU (read at the log line, after the GPU caught
up) and with the wall clock on CPU, where work is synchronous.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from partialfc.train_step import StepReport

PHASES = ("forward", "backward", "optimizer")


class PhaseTimer:
    """Seconds spent per step phase since the last :meth:`collect`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._seconds: defaultdict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            began = time.perf_counter()
            yield
            self._seconds[name] += time.perf_counter() - began

    def collect(self) -> dict[str, float]:
        """Per-phase seconds since the previous call (waits for the GPU's last recorded event)."""
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                self._seconds[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        seconds = {name: self._seconds.get(name, 0.0) for name in PHASES}
        self._seconds.clear()
        return seconds


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
