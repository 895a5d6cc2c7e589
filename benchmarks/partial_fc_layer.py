"""Partial FC layer benchmark: step time against the GEMM floor, and peak memory per rank.

Run under torchrun (gloo on CPU, NCCL on GPU), or as a plain script for W = 1:

    torchrun --nproc_per_node 2 benchmarks/partial_fc_layer.py --num-classes 1000000 --sample-rate 0.1 1.0
    python benchmarks/partial_fc_layer.py --device cuda --num-classes 1000000 8000000 --param-dtype bf16

Per configuration, every rank times ``forward + backward + centre update`` (median over
``--steps`` after ``--warmup``), then the *GEMM floor*: the three matmuls of the same shapes
(logits N×D·D×S, embedding gradient N×S·S×D, centre gradient S×N·N×D) in the same dtype,
timed the same way into preallocated outputs. Peak memory is the process's peak RSS on CPU (``VmHWM``, reset before each
configuration) or ``max_memory_allocated`` on GPU. "centre mem" is the peak growth over the
memory before the layer was built, in units of the fp32 shard (num_local × K × D × 4 bytes).
Rank 0 prints one row per configuration (the slowest rank's times, the largest rank's memory).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from partialfc import LazySGD, PartialFC
from partialfc.config import LossConfig
from partialfc.core.margins import MARGIN_FAMILIES
from partialfc.models.precision import DTYPES


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, nargs="+", default=[1_000_000], help="C values to run")
    parser.add_argument("--sample-rate", type=float, nargs="+", default=[0.1, 1.0], help="r values to run")
    parser.add_argument("--dim", type=int, default=512, help="embedding size D")
    parser.add_argument("--batch", type=int, default=128, help="local batch B per rank")
    parser.add_argument(
        "--gemm-dtype", choices=["fp32", "bf16"], default="fp32", help="logits GEMM dtype (bf16 = autocast)"
    )
    parser.add_argument("--param-dtype", choices=["fp32", "bf16"], default="fp32", help="storage of centres + momentum")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: gloo, cuda: NCCL")
    parser.add_argument(
        "--family",
        nargs="+",
        default=["combined"],
        choices=MARGIN_FAMILIES,
        help="margin families to run (loss.family values, default parameters; combined = ArcFace)",
    )
    parser.add_argument(
        "--sub-centers",
        type=int,
        nargs="+",
        default=[1],
        help="K values to run (loss.sub_centers; the GEMM floor then has S·K centre rows)",
    )
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()


def median_time(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> int:
    """Reset the peak counter; returns current usage in bytes."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux)
        f.write("5")
    return _proc_status_bytes("VmRSS")


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_bytes("VmHWM")


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_config(
    args, family: str, sub_centers: int, num_classes: int, sample_rate: float, device: torch.device, world_size: int
) -> list[float]:
    step_time, peak, num_local, num_sample = time_layer(args, family, sub_centers, num_classes, sample_rate, device)
    gc.collect()  # the layer's buffers are gone before the GEMM floor allocates its operands
    floor = time_gemm_floor(args, args.batch * world_size, num_sample * sub_centers, device)
    shard_fp32_bytes = num_local * sub_centers * args.dim * 4
    return [step_time, floor, peak, peak / shard_fp32_bytes, num_sample]


def time_layer(
    args, family: str, sub_centers: int, num_classes: int, sample_rate: float, device: torch.device
) -> tuple[float, int, int, int]:
    """Median step time and peak memory of the layer, with its shard size and per-rank sample count."""
    gemm_dtype, param_dtype = DTYPES[args.gemm_dtype], DTYPES[args.param_dtype]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gemm_dtype == torch.bfloat16)
    before = reset_peak_memory(device)
    pfc = PartialFC(
        args.dim,
        num_classes,
        sample_rate,
        LossConfig(family=family).build_margin(),
        optimizer=LazySGD(),
        param_dtype=param_dtype,
        device=device,
        sub_centers=sub_centers,
    )
    generator = torch.Generator(device="cpu").manual_seed(pfc.rank)
    # Norms spread over [5, 120]: the norm-reading families (AdaFace, MagFace) see varied magnitudes.
    embeddings = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=generator), dim=1)
    embeddings = (
        (embeddings * (5.0 + 115.0 * torch.rand(args.batch, 1, generator=generator))).to(device).requires_grad_()
    )
    labels = torch.randint(0, num_classes, (args.batch,), generator=generator).to(device)

    def train_step() -> None:
        with autocast:
            loss = pfc(embeddings, labels)
        loss.backward()
        pfc.step()
        embeddings.grad = None

    step_time = median_time(train_step, args.steps, args.warmup, device)
    return step_time, peak_memory(device) - before, pfc.num_local, pfc.num_sample


def time_gemm_floor(args, n: int, rows: int, device: torch.device) -> float:
    """Median time of the layer's three GEMMs alone (``n`` embeddings against ``rows`` centres)."""
    gemm_dtype = DTYPES[args.gemm_dtype]
    x = torch.randn(n, args.dim, device=device, dtype=gemm_dtype)
    w = torch.randn(rows, args.dim, device=device, dtype=gemm_dtype)
    g = torch.randn(n, rows, device=device, dtype=gemm_dtype)
    outputs = (torch.empty_like(g), torch.empty_like(x), torch.empty_like(w))  # pure GEMM time, no allocation

    def gemms() -> None:
        torch.mm(x, w.t(), out=outputs[0])
        torch.mm(g, w, out=outputs[1])
        torch.mm(g.t(), x, out=outputs[2])

    return median_time(gemms, args.steps, args.warmup, device)


def main() -> None:
    args = parse_args()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0

    header = (
        f"{'family':>14} {'K':>2} {'C':>10} {'D':>4} {'B/rank':>6} {'W':>2} {'r':>5} {'S/rank':>8} "
        f"{'gemm':>5} {'param':>5} "
        f"{'step ms':>9} {'floor ms':>9} {'ratio':>6} {'peak GiB/rank':>13} {'centre mem':>10}"
    )
    if rank == 0:
        print(f"device={device.type} threads/rank={torch.get_num_threads()} torch={torch.__version__}")
        print(header)
    configs = itertools.product(args.family, args.sub_centers, args.num_classes, args.sample_rate)
    for family, sub_centers, num_classes, sample_rate in configs:
        result = torch.tensor(
            run_config(args, family, sub_centers, num_classes, sample_rate, device, world_size), dtype=torch.float64
        )
        if dist.is_initialized():
            dist.all_reduce(result, op=dist.ReduceOp.MAX)  # slowest rank, largest memory
        step_time, floor, peak, centre_ratio, num_sample = result.tolist()
        if rank == 0:
            print(
                f"{family:>14} {sub_centers:>2} {num_classes:>10} {args.dim:>4} {args.batch:>6} {world_size:>2} "
                f"{sample_rate:>5} {int(num_sample):>8} "
                f"{args.gemm_dtype:>5} {args.param_dtype:>5} {step_time * 1e3:>9.1f} {floor * 1e3:>9.1f} "
                f"{step_time / floor:>6.2f} {peak / 2**30:>13.2f} {centre_ratio:>9.2f}x",
                flush=True,
            )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
