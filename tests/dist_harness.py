"""Run a function on W gloo ranks in fresh processes and collect what each rank returns.

The ranks start from a fork server that has imported torch once (``forkserver`` with torch preloaded):
a fresh interpreter per rank would pay torch's import (~1.5 CPU-s) again for every rank of every
test, a fifth of the suite's CPU time on a 2-core machine. Each rank is still a fresh process
with no process group, no threads and none of the test process's state.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

mp.set_forkserver_preload(["torch", "torch.distributed"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """``[fn(rank, world_size, *args) for each rank]``, each rank in its own process group member.

    ``fn`` must be importable (module level). A failure on any rank raises here with its traceback.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _entry,
            args=(world_size, free_port(), out_dir, fn, args),
            nprocs=world_size,
            join=True,
            start_method="forkserver",
        )
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
