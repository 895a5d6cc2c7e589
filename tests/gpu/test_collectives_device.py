"""The collectives Partial FC is built on, through a real process group of one rank: NCCL on CUDA,
gloo on the CPU. The trainer creates no group at world size 1, so on a one-GPU machine this is
the only place NCCL runs: it checks that the backend initialises with ``device_id`` and that the
helpers find the installed torch's collective names (renamed in torch 2.13)."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from partialfc.common.distributed import all_gather_into, reduce_scatter_into


@pytest.fixture
def one_rank_group(device, tmp_path):
    backend = "nccl" if device == "cuda" else "gloo"
    torch_device = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(torch_device)
    dist.init_process_group(
        backend,
        store=dist.FileStore(str(tmp_path / "store"), 1),
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=60),
        device_id=torch_device if device == "cuda" else None,
    )
    try:
        yield torch_device
    finally:
        dist.destroy_process_group()


def test_collectives_at_world_size_one(one_rank_group):
    device = one_rank_group
    local = torch.arange(12.0, device=device).view(3, 4)
    gathered = torch.empty_like(local)
    all_gather_into(gathered, local)
    assert torch.equal(gathered, local)
    scattered = torch.empty_like(local)
    reduce_scatter_into(scattered, local * 2)
    assert torch.equal(scattered, local * 2)
    row_max, row_sum = local.amax(dim=1), local.sum(dim=1)
    dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
    dist.all_reduce(row_sum, op=dist.ReduceOp.SUM)
    assert row_max.tolist() == [3.0, 7.0, 11.0] and row_sum.tolist() == [6.0, 22.0, 38.0]
