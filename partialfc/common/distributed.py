"""Process groups and the collectives built on them; how work and random streams split by rank.

Setup: torchrun (env://) or a single process, backend chosen by device. The collective helpers
take the world size explicitly and do nothing at W = 1, so single-process code needs no group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from partialfc.common.device_check import worker_device


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


def init_distributed(backend: str = "auto", timeout_s: int = 1800, device: torch.device | None = None) -> DistInfo:
    """Join the job described by torchrun's environment, or run as a single process without it.

    ``device`` is this worker's (:func:`partialfc.common.device_check.worker_device`, which refuses
    ``dist.device cuda`` on a node without the GPUs); None: the local GPU when torch sees one, else
    the CPU. ``backend="auto"`` picks NCCL for GPUs and gloo for CPUs. A single process (no
    ``WORLD_SIZE``) creates no process group; under torchrun one is created even at world size 1,
    so one GPU runs the same NCCL + DDP path as eight.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = worker_device("auto") if device is None else device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
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
    (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(
        output, full, op=dist.ReduceOp.SUM, group=group
    )


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, count)`` of ``rank``'s contiguous block when ``num_items`` are split over ranks.

    The first ``num_items mod world_size`` ranks get one item more (uneven splits allowed).
    """
    base, remainder = divmod(num_items, world_size)
    return rank * base + min(rank, remainder), base + (1 if rank < remainder else 0)


def all_gather_shards(local: torch.Tensor, num_items: int) -> torch.Tensor:
    """Collective: every rank's :func:`shard_range` block of ``num_items`` rows, in rank order, on every rank.

    The blocks differ by at most one row: each is padded to the largest, gathered once and trimmed.
    Gathered on the backend's device (NCCL: this rank's GPU), returned on the CPU.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    world_size = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    longest = shard_range(num_items, 0, world_size)[1]
    padded = torch.zeros(longest, *local.shape[1:], dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    gathered = torch.empty(world_size * longest, *local.shape[1:], dtype=local.dtype, device=device)
    all_gather_into(gathered, padded)
    blocks = [gathered[r * longest : r * longest + shard_range(num_items, r, world_size)[1]] for r in range(world_size)]
    return torch.cat(blocks).cpu()


def derive_seed(*parts: int, bits: int = 63) -> int:
    """A non-negative seed for the random stream named by ``parts`` (e.g. seed, purpose, step, rank).

    Streams of different ``parts`` are statistically independent (numpy's ``SeedSequence`` hash).
    ``bits=63`` suits ``torch.Generator``; ``bits=31`` the non-negative int32 seeds DALI takes.
    The two widths take different bits of the 64-bit hash (top 63, low 31): that is how every
    stream was seeded before this helper existed, kept so that runs and checkpoints reproduce.
    """
    state = int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0])
    if bits == 63:
        return state >> 1
    if bits == 31:
        return state & 0x7FFFFFFF
    raise ValueError(f"derive_seed: bits must be 31 or 63, got {bits}")


def all_reduce(
    tensor: torch.Tensor, op: dist.ReduceOp.RedOpType, group: dist.ProcessGroup | None, world_size: int
) -> None:
    """In-place all-reduce; nothing at W = 1."""
    if world_size > 1:
        dist.all_reduce(tensor, op=op, group=group)


def all_reduce_sum_pair(a: torch.Tensor, b: torch.Tensor, group: dist.ProcessGroup | None, world_size: int) -> None:
    """Two SUM all-reduces in flight together (independent, so their latencies overlap)."""
    if world_size > 1:
        works = [dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group, async_op=True) for t in (a, b)]
        for work in works:
            work.wait()


def all_gather_rows(local: torch.Tensor, group: dist.ProcessGroup | None, world_size: int) -> torch.Tensor:
    """Every rank's ``local`` (equal shapes) concatenated along dim 0, rank order; no gradient."""
    if world_size == 1:
        return local
    gathered = local.new_empty(world_size * local.shape[0], *local.shape[1:])
    all_gather_into(gathered, local.contiguous(), group)
    return gathered


def all_gather_with_grad(local: torch.Tensor, group: dist.ProcessGroup | None, world_size: int) -> torch.Tensor:
    """:func:`all_gather_rows` whose backward reduce-scatters (sums) the gradient and multiplies it by W.

    The ×W is the DDP convention of :mod:`partialfc.core.partial_fc`: the gathered rows feed a loss
    averaged over the global batch, and DDP divides backbone gradients by W again.
    """
    if world_size == 1:
        return local
    return _AllGatherWithGrad.apply(local, group, world_size)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, group: dist.ProcessGroup | None, world_size: int) -> torch.Tensor:
        ctx.group, ctx.world_size = group, world_size
        return all_gather_rows(local, group, world_size)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor):
        local_grad = grad_gathered.new_empty(grad_gathered.shape[0] // ctx.world_size, *grad_gathered.shape[1:])
        reduce_scatter_into(local_grad, grad_gathered.contiguous(), ctx.group)
        return local_grad.mul_(ctx.world_size), None, None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
