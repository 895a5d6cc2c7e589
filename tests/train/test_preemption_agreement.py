"""A SIGTERM that reaches one rank only (a node drain evicts one pod; torchrun forwards the signal to
its own workers) still stops every rank after the same step."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist
from dist_harness import run_distributed

from partialfc.training.preemption import SigtermFlag
from partialfc.training.trainer import any_rank


def _last_rank_signalled(rank: int, world_size: int) -> tuple[bool, bool, bool]:
    flag = SigtermFlag(enabled=True)
    (before,) = any_rank(torch.device("cpu"), flag.received)
    if rank == world_size - 1:
        os.kill(os.getpid(), signal.SIGTERM)
    dist.barrier()
    return before, flag.received, *any_rank(torch.device("cpu"), flag.received)


def test_a_sigterm_on_one_rank_is_agreed_by_every_rank():
    assert run_distributed(_last_rank_signalled, 2) == [(False, False, True), (False, True, True)]
