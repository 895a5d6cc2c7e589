"""Process-group setup: torchrun (env://) or a single process, backend chosen by device."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the job described by torchrun's environment, or run as a single process without it.

    The device is the local GPU when CUDA is available, else the CPU; ``backend="auto"`` picks NCCL
    for GPUs and gloo for CPUs. A single process (no ``WORLD_SIZE``) creates no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        chosen = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
        dist.init_process_group(
            chosen,
            init_method="env://",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if chosen == "nccl" else None,
        )
    return DistInfo(rank, world_size, local_rank, local_world_size, int(os.environ.get("GROUP_RANK", "0")), device)


def all_gather_into(output: torch.Tensor, local: torch.Tensor, group: dist.ProcessGroup | None = None) -> None:
    """Concatenate every rank's ``local`` (equal shapes) into ``output`` along dim 0."""
    # torch 2.13 renamed all_gather_into_tensor; older releases have only the old name.
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(output, local, group=group)


def reduce_scatter_into(output: torch.Tensor, full: torch.Tensor, group: dist.ProcessGroup | None = None) -> None:
    """Sum ``full`` over ranks and keep this rank's block of rows in ``output``."""
    (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(output, full, op=dist.ReduceOp.SUM, group=group)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
