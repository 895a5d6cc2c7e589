"""Seconds per checkpoint save through the trainer's Checkpointer, at given class counts, on the ranks of torchrun.

    torchrun --nproc_per_node 8 benchmarks/checkpoint_save.py --num-classes 1000000 --backbone r50
    torchrun --nproc_per_node 16 benchmarks/checkpoint_save.py --num-classes 93431 --backbone r50

Every rank (gloo on CPU) holds what the trainer checkpoints: its Partial-FC centre shard with the
centre optimizer's state (SGD momentum, fp32), the backbone with its SGD momentum, the run's progress
and the RNG states; :class:`~partialfc.training.checkpoint.Checkpointer` writes them as in training (centre
shard and per-rank file on every rank, the backbone, its optimizer and the rest in ``trainer.pt`` on
rank 0, each file hashed while written and fsynced, then the manifest, the rename and the rotation
to ``--keep``). A save is timed on rank 0 from a barrier before it to its return (the save ends in a
barrier, so that is the slowest rank's time too); ``--saves`` saves are timed after one untimed save,
and rank 0 prints their median, min and max, one table row per class count. It is not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from partialfc import PartialFC
from partialfc.common.distributed import DistInfo, barrier, init_distributed, shutdown
from partialfc.config import LossConfig, OptimConfig
from partialfc.models import create_model
from partialfc.training.checkpoint import Checkpointer, Component
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.train_state import RNGState, TrainProgress


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, nargs="+", default=[1_000_000], help="C values to run")
    parser.add_argument("--backbone", default="r50", help="backbone whose replicated state rank 0 saves")
    parser.add_argument("--embedding-size", type=int, default=512, help="embedding size D")
    parser.add_argument("--saves", type=int, default=3, help="timed saves per configuration (after one untimed)")
    parser.add_argument("--keep", type=int, default=3, help="checkpoint.keep: rotation as in training")
    parser.add_argument(
        "--dir",
        default=str(Path(tempfile.gettempdir()) / "partialfc-checkpoint-save"),
        help="where checkpoints are written (emptied first, removed afterwards)",
    )
    return parser.parse_args()


def _reset_peak_rss() -> None:
    gc.collect()  # the previous class count's state is gone
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux)
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def time_saves(args: argparse.Namespace, info: DistInfo, num_classes: int, root: Path) -> str:
    """Save ``args.saves + 1`` checkpoints under ``root``; the table row (on rank 0; "" elsewhere)."""
    _reset_peak_rss()
    optim = OptimConfig()
    backbone = create_model(args.backbone, embedding_size=args.embedding_size)
    pfc = PartialFC(
        args.embedding_size, num_classes, 1.0, LossConfig().build_margin(), optimizer=optim.build_centre_optimizer()
    )
    optimizer = TrainingOptimizer(optim, backbone, pfc)
    for param in backbone.parameters():  # one step on zero gradients: the momentum buffers exist, as in training
        param.grad = torch.zeros_like(param)
    optimizer.backbone_optimizer.step()
    backbone.zero_grad(set_to_none=True)
    progress = TrainProgress()
    checkpointer = Checkpointer(
        root,
        info,
        args.keep,
        {
            "model": Component(backbone, "shared"),
            "optimizer": Component(optimizer, "shared"),
            "progress": Component(progress, "shared"),
            "rng": Component(RNGState(), "per_rank"),
            "centres": Component(pfc, "sharded"),
        },
        config={"benchmark": "checkpoint_save"},
    )
    seconds = []
    for step in range(args.saves + 1):
        progress.step = pfc.step_count = step
        barrier()
        start = time.perf_counter()
        path = checkpointer.save(step)
        if step:  # the first save warms the allocator and creates the directory tree
            seconds.append(time.perf_counter() - start)
    peak = torch.tensor([_peak_rss_bytes()], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if not info.is_main:
        return ""
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    rank0 = sum(size for name, size in sizes.items() if "-00000-of-" in name or name == "trainer.pt")
    other = sum(size for name, size in sizes.items() if "-00001-of-" in name)
    total, median, mib = sum(sizes.values()), statistics.median(seconds), 1 << 20
    return (
        f"| {num_classes:,} | {args.embedding_size} | {args.backbone} | {info.world_size} | {total / mib:,.0f} "
        f"| {rank0 / mib:,.0f} | {other / mib:,.0f} | {median:.2f} | {min(seconds):.2f} | {max(seconds):.2f} "
        f"| {total / mib / median:,.0f} | {peak.item() / mib:,.0f} |"
    )


def main() -> None:
    args = parse_args()
    info = init_distributed("gloo")  # the ranks of torchrun (env://); a plain python run is one rank
    root = Path(args.dir)
    if info.is_main:
        shutil.rmtree(root, ignore_errors=True)
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} thread(s) per rank, {root}")
        print(
            "| C | D | backbone | W | checkpoint MiB | rank 0 MiB | other rank MiB | save s (median) | min | max "
            f"| MiB/s | peak RSS MiB/rank |\n|{'---:|' * 12}",
            flush=True,
        )
    for num_classes in args.num_classes:
        row = time_saves(args, info, num_classes, root / f"classes-{num_classes}")
        if row:
            print(row, flush=True)
    barrier()
    if info.is_main:
        shutil.rmtree(root, ignore_errors=True)
    shutdown()


if __name__ == "__main__":
    main()
