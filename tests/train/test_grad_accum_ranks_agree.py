"""Gradient accumulation on several ranks: DDP averages the accumulated gradient, so the ranks agree.

A step of ``train.grad_accum`` micro-batches runs the backward of all but the last under DDP's
``no_sync`` and lets the last one all-reduce: the bucket then carries every micro-batch's
gradient. All-reducing after any other micro-batch averages only part of it, and each rank adds
its own remainder locally: the ranks' backbones step apart and drift further every step, with a
loss that still falls, and the checkpoint (rank 0's weights) is not the model the others train.

Two ranks run a few accumulated steps of a small backbone (no batch norm, whose running statistics
are each rank's own by design) and a full-rate Partial FC; their backbones must be bit-identical,
and equal (to rounding) to the same steps taken as one micro-batch of both halves joined, which
syncs once per step whatever the accumulation code does.
"""

from __future__ import annotations

import torch
from dist_harness import run_distributed
from torch import nn

from partialfc import CombinedMargin, PartialFC
from partialfc.config import OptimConfig
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.train_step import StepConfig, TrainStep

STEPS, MICRO, BATCH, CLASSES = 3, 2, 6, 10


def make_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))


def backbone_after_steps(grad_accum: int, data: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> dict:
    """This rank's backbone parameters after one step per entry of ``data`` (its ``grad_accum`` batches)."""
    backbone = make_backbone()
    model = nn.parallel.DistributedDataParallel(backbone)
    config = OptimConfig(clip_grad_norm=5.0)
    pfc = PartialFC(8, CLASSES, 1.0, CombinedMargin(s=8.0), optimizer=config.build_centre_optimizer(), seed=0)
    step = TrainStep(model, pfc, TrainingOptimizer(config, backbone, pfc), StepConfig(grad_accum=grad_accum))
    for number, batches in enumerate(data, 1):
        report = step(iter(batches), lr=0.1, sample_rate=1.0, number=number)
        assert report.micro_batches == grad_accum and bool(report.applied)
    return {name: parameter.detach().clone() for name, parameter in backbone.named_parameters()}


def accumulated_and_joined(rank: int, world_size: int) -> dict:
    """Backbone parameters: at the start, after STEPS accumulated steps, after the same steps joined."""
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    data = [
        [
            (torch.randn(BATCH, 4, generator=generator), torch.randint(0, CLASSES, (BATCH,), generator=generator))
            for _ in range(MICRO)
        ]
        for _ in range(STEPS)
    ]
    joined = [[(torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro]))] for micro in data]
    return {
        "initial": {name: parameter.detach() for name, parameter in make_backbone().named_parameters()},
        "accumulated": backbone_after_steps(MICRO, data),
        "joined": backbone_after_steps(1, joined),
    }


def test_accumulated_steps_leave_every_rank_with_the_same_backbone():
    ranks = run_distributed(accumulated_and_joined, 2)
    names = ranks[0]["accumulated"].keys()
    assert names == ranks[1]["accumulated"].keys() == ranks[0]["initial"].keys()
    for name in names:
        mine, theirs = ranks[0]["accumulated"][name], ranks[1]["accumulated"][name]
        assert torch.equal(mine, theirs), f"{name}: the ranks' backbones differ by {float((mine - theirs).abs().max())}"
        assert not torch.equal(mine, ranks[0]["initial"][name]), f"{name} did not train"
        for rank in ranks:
            torch.testing.assert_close(rank["accumulated"][name], rank["joined"][name], rtol=1e-5, atol=1e-6)
