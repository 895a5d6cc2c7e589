"""SIGTERM (pre-emption, Kubernetes eviction) turned into a stop that every rank agrees on.

Signals reach ranks at different moments (and inside collectives), so each rank only notes it; a
MAX all-reduce at the next log step, where the host syncs anyway, makes every rank stop after the
same step. A second SIGTERM gets the default action (terminate) if saving takes too long.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist


class SigtermFlag:
    def __init__(self, enabled: bool) -> None:
        self.received = False
        if enabled and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def agreed(self, device: torch.device) -> bool:
        """Collective: True on every rank when any rank received SIGTERM."""
        if not dist.is_initialized():
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
