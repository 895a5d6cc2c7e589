"""A stand-in trainer for the Prometheus integration test: run under torchrun, it calls TrainingMetrics
the way partialfc.train does (a small data-parallel model on gloo, host-side timings only).

    torchrun --standalone --nproc_per_node 2 tests/metrics/train_driver.py --output DIR --port P --steps N

At the end every rank meets in a barrier and closes its metrics; local rank 0 keeps the endpoint up
until Prometheus has scraped it once more (``final_scrape_timeout``), so the last values are recorded.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from partialfc.metrics import MetricsConfig, TrainingMetrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--final-scrape-timeout", type=float, default=60.0)
    args = parser.parse_args()

    dist.init_process_group("gloo", init_method="env://")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank, node = int(os.environ["LOCAL_RANK"]), int(os.environ["GROUP_RANK"])
    metrics = TrainingMetrics(
        MetricsConfig(port=args.port, address="127.0.0.1", final_scrape_timeout=args.final_scrape_timeout),
        output_dir=args.output,
        rank=rank,
        local_rank=local_rank,
        node=node,
        world_size=world_size,
        info={"version": "test", "backbone": "linear", "num_classes": "10", "world_size": str(world_size)},
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        started = time.perf_counter()
        inputs = torch.randn(args.batch, 64, generator=generator)
        labels = torch.randint(0, 10, (args.batch,), generator=generator)
        loaded = time.perf_counter()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        forward_done = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        for parameter in model.parameters():
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.AVG)
        backward_done = time.perf_counter()
        optimizer.step()
        finished = time.perf_counter()
        metrics.observe_step(
            samples=args.batch,
            step_seconds=finished - loaded,
            data_wait_seconds=loaded - started,
            epoch=step // 10,
            sampled_centres=10,
            forward_seconds=forward_done - loaded,
            backward_seconds=backward_done - forward_done,
            optimizer_seconds=finished - backward_done,
        )
        if step % 10 == 9:
            metrics.observe_log(loss=loss.item(), lr=0.1, grad_norm=None, loss_scale=None, skipped_steps_total=0)
            metrics.observe_memory(torch.device("cpu"))
    metrics.observe_checkpoint(seconds=0.01, success=True)
    metrics.observe_verification("lfw", 0.5)
    dist.barrier()
    metrics.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
