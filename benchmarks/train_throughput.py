"""End-to-end training throughput and where a step's time goes.

    torchrun --nproc_per_node 2 benchmarks/train_throughput.py --backbone tiny --num-classes 1000000
    torchrun --nproc_per_node 1 benchmarks/train_throughput.py --backbone r50 --amp bf16 --data-backend torch  # 1 GPU
    torchrun --nproc_per_node 1 benchmarks/train_throughput.py --backbone vit_b --optimizer adamw --batch 384

Every rank times, median over ``--steps`` after ``--warmup``:

- **step**: a full training step, the trainer's own :class:`~partialfc.training.train_step.TrainStep` (DDP
  backbone under autocast, channels_last on GPU, Partial FC, backward, the global gradient norm with
  its all-reduce, the on-device skip test, both optimizer steps) on batches from the real input pipeline;
- **resident step**: the same step on one batch already on the device (compute bound: what the
  step costs when input keeps up);
- **data**: fetching one batch from the loader alone (DALI, or the PyTorch fallback);
- **backbone**: forward + backward + the step's optimizer step of the backbone alone on a fixed batch (no DDP);
- **partial fc**: forward + backward + centre update of Partial FC alone on fixed embeddings;
- **comm**: the step's collectives alone: the backbone's gradient all-reduce (one flat buffer, as
  DDP buckets it) plus Partial FC's all-gathers, three N-sized all-reduces and reduce-scatter.

Shares are each part's time over the resident step's; they need not add up to 100% (data loading
overlaps with compute, and DDP overlaps its all-reduce with the backward pass). The input is a synthetic
InsightFace-layout dataset written to ``--data-dir`` once (112×112 JPEGs), and labels are drawn
uniformly over the ``--num-classes`` classes so that the classifier has its real size.
``--json`` writes every figure to a file as well (``benchmarks/gpu_suite.sh`` collects it).
``--optimizer`` picks the optimizer family of backbone and centres with the settings of the presets
that use it: SGD as the IResNet presets (lr 0.1, momentum 0.9, weight decay 5e-4), AdamW as the
ViT ones (``configs/wf42m_vit_*.yaml``: lr 0.001, weight decay 0.1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from partialfc import CombinedMargin, PartialFC
from partialfc.common.distributed import all_gather_into, init_distributed, reduce_scatter_into
from partialfc.config import ModelConfig, OptimConfig
from partialfc.data import RecordDataset
from partialfc.data.loaders import LoaderParams, build_loader
from partialfc.data.synth import generate_synthetic_dataset
from partialfc.models import InputConfig
from partialfc.models.precision import autocast_dtype
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.train_step import Batch, StepConfig, TrainStep

# The optimizer settings of the presets that train with each family (configs/ms1mv3_r50.yaml, wf42m_vit_b.yaml).
OPTIMIZERS = {
    "sgd": OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adamw": OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="r50", help="registry name of the backbone")
    parser.add_argument("--num-classes", type=int, default=1_000_000, help="classes C")
    parser.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC r")
    parser.add_argument("--batch", type=int, default=128, help="images per rank")
    parser.add_argument("--embedding-size", type=int, default=512, help="D")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="bf16", help="backbone autocast dtype")
    parser.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default="sgd",
        help="optimizer of backbone and centres: sgd (the IResNet presets') or adamw (the ViT presets')",
    )
    parser.add_argument("--data-backend", choices=["auto", "dali", "torch"], default="auto", help="input pipeline")
    parser.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="DALI threads / DataLoader workers per rank (default: this machine's cores / local ranks)",
    )
    parser.add_argument("--data-dir", default="/tmp/partialfc-bench-data", help="synthetic dataset location")
    parser.add_argument(
        "--synthetic-identities",
        type=int,
        default=500,
        help="identities (8 images each) of the synthetic dataset, when --data-dir has none",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--json", type=Path, help="also write the figures to this file (rank 0)")
    return parser.parse_args()


def timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    info = init_distributed()
    device = info.device
    amp = autocast_dtype(args.amp)
    data_dir = Path(args.data_dir)
    if info.is_main and not (data_dir / "property").exists():
        generate_synthetic_dataset(data_dir, args.synthetic_identities, 8, seed=0, shards=1)
    if dist.is_initialized():
        dist.barrier()
    dataset = RecordDataset(data_dir)
    input_config = InputConfig()
    params = LoaderParams(args.batch, input_config, rank=info.rank, world_size=info.world_size, seed=0)
    workers = args.data_workers or max(1, len(os.sched_getaffinity(0)) // info.local_world_size)
    loader = build_loader(
        dataset,
        params,
        backend=args.data_backend,
        device_id=info.local_rank if device.type == "cuda" else None,
        num_workers=workers,
    )

    def batches():
        while True:
            yield from loader

    stream = batches()
    generator = torch.Generator(device=device).manual_seed(info.rank)

    def random_labels() -> torch.Tensor:
        return torch.randint(0, args.num_classes, (args.batch,), generator=generator, device=device)

    torch.manual_seed(0)
    model_config = ModelConfig(backbone=args.backbone, embedding_size=args.embedding_size)
    backbone = model_config.build(device)  # as the trainer builds it: channels_last on GPU
    channels_last = model_config.channels_last_on(device)
    model = backbone
    if dist.is_initialized():
        device_ids = [info.local_rank] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(backbone, device_ids=device_ids)
    optim_config = OPTIMIZERS[args.optimizer]
    pfc = PartialFC(
        args.embedding_size,
        args.num_classes,
        args.sample_rate,
        CombinedMargin(),
        optimizer=optim_config.build_centre_optimizer(),
        device=device,
    )
    optimizer = TrainingOptimizer(optim_config, backbone, pfc)
    train_step = TrainStep(model, pfc, optimizer, StepConfig(amp_dtype=amp, channels_last=channels_last))
    step_numbers = itertools.count(1)
    autocast = torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def run_step(batches: Iterator[Batch]) -> None:
        train_step(batches, lr=optim_config.lr, sample_rate=args.sample_rate, number=next(step_numbers))

    loader_batches = ((images, random_labels()) for images, _ in stream)
    fixed_images = next(stream)[0].to(device)
    resident_images = fixed_images
    if channels_last:
        resident_images = fixed_images.contiguous(memory_format=torch.channels_last)
    resident_batches = ((resident_images, random_labels()) for _ in itertools.count())

    def backbone_step() -> None:
        with autocast:
            embeddings = backbone(fixed_images)
        embeddings.float().square().mean().backward()
        optimizer.backbone_optimizer.step()
        optimizer.backbone_optimizer.zero_grad(set_to_none=True)

    fixed_embeddings = torch.randn(args.batch, args.embedding_size, device=device, requires_grad=True)

    def pfc_step() -> None:
        pfc(fixed_embeddings, random_labels()).backward()
        pfc.step()

    flat_grads = torch.zeros(sum(p.numel() for p in backbone.parameters()), device=device)
    n = args.batch * info.world_size
    gathered = torch.empty(n, args.embedding_size, device=device)
    scalars = torch.zeros(n, device=device)
    labels_gathered = torch.empty(n, dtype=torch.long, device=device)
    local_labels = torch.zeros(args.batch, dtype=torch.long, device=device)

    def comm_step() -> None:
        if not dist.is_initialized():
            return
        dist.all_reduce(flat_grads)
        all_gather_into(gathered, fixed_embeddings.detach())
        all_gather_into(labels_gathered, local_labels)
        for _ in range(3):
            dist.all_reduce(scalars)
        reduce_scatter_into(fixed_embeddings.detach().clone(), gathered)

    results = {
        "step": timed(lambda: run_step(loader_batches), args.steps, args.warmup, device),
        "resident step": timed(lambda: run_step(resident_batches), args.steps, args.warmup, device),
        "data": timed(lambda: next(stream), args.steps, args.warmup, device),
        "backbone": timed(backbone_step, args.steps, args.warmup, device),
        "partial fc": timed(pfc_step, args.steps, args.warmup, device),
        "comm": timed(comm_step, args.steps, args.warmup, device),
    }
    values = torch.tensor(list(results.values()), dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    if info.is_main:
        seconds = dict(zip(results, values.tolist()))
        global_batch = args.batch * info.world_size
        resident = seconds["resident step"]
        print(
            f"device={device.type} W={info.world_size} backbone={args.backbone} amp={args.amp} "
            f"optimizer={optim_config.name} C={args.num_classes} "
            f"r={args.sample_rate} B/rank={args.batch} loader={loader.backend} workers/rank={workers} "
            f"threads/rank={torch.get_num_threads()}"
        )
        print(
            f"end-to-end through the loader: {global_batch / seconds['step']:,.0f} img/s; "
            f"batch on the device: {global_batch / resident:,.0f} img/s ({resident * 1e3:.1f} ms/step)"
        )
        print(f"{'part':<14} {'ms':>9} {'share of resident step':>23}")
        for name, value in seconds.items():
            print(f"{name:<14} {value * 1e3:>9.1f} {100 * value / resident:>22.0f}%")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "world_size": info.world_size,
                        "backbone": args.backbone,
                        "amp": args.amp,
                        "optimizer": optim_config.name,
                        "num_classes": args.num_classes,
                        "sample_rate": args.sample_rate,
                        "batch_per_rank": args.batch,
                        "loader": loader.backend,
                        "workers_per_rank": workers,
                        "ms": {name: round(value * 1e3, 3) for name, value in seconds.items()},
                        "images_per_s": {"loader": global_batch / seconds["step"], "resident": global_batch / resident},
                        "partial_fc_share": seconds["partial fc"] / resident,
                    },
                    indent=2,
                )
                + "\n"
            )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
