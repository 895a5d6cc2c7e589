"""Seconds per step phase (forward, backward, optimizer), without a host sync per step.

On GPU each phase is bracketed by CUDA events, read when the log line collects them (after the GPU
caught up); on CPU, where work is synchronous, by the wall clock. The phase names are also the
label values of the step-phase metric (partialfc/metrics.py).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

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
