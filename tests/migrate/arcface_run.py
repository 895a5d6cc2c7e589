"""A run of insightface arcface_torch's train_v2.py as it lies on disk: ``checkpoint_gpu_{rank}.pt`` of W ranks.

Each file is the dict train_v2.py saves at an epoch's end (recognition/arcface_torch/train_v2.py:
``epoch`` = the next epoch, ``global_step`` in batches, ``state_dict_backbone``, ``state_dict_softmax_fc``,
``state_optimizer``, ``state_lr_scheduler``), built here with their key names from a model of ours (our
backbones keep arcface_torch's key names). The centre shard of rank r is the block of classes
partial_fc_v2.py gives it: ``num_classes // W`` plus one on the first ``num_classes % W`` ranks,
starting after the blocks of the ranks before it. The optimizer is a real torch SGD or AdamW over
train_v2.py's two groups (the backbone's parameters, then the shard), with known state put in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class ArcfaceRun:
    """What was saved, by global class id and by backbone parameter name: the truth a migration must keep."""

    centres: torch.Tensor  # [C, D]
    centre_state: dict[str, torch.Tensor]  # torch optimizer key -> [C, D]
    backbone: dict[str, torch.Tensor]
    backbone_state: dict[str, dict[str, torch.Tensor]]  # parameter name -> torch optimizer state
    centre_step: float | None  # AdamW's step count of the centres
    epoch: int
    global_step: int
    total_iters: int
    last_lr: float


def their_split(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    """partial_fc_v2.py's (class_start, num_local) of every rank."""
    base, extra = divmod(num_classes, world_size)
    return [(base * rank + min(rank, extra), base + int(rank < extra)) for rank in range(world_size)]


def polynomial_lr(base_lr: float, step: int, warmup: int, total: int, power: float = 1.0) -> float:
    """PolynomialLRWarmup's LR after ``step`` scheduler steps (its closed form; train_v2.py passes no power)."""
    if step <= warmup:
        return base_lr * step / warmup
    return base_lr * (1.0 - (min(total, step) - warmup) / (total - warmup)) ** power


def write_arcface_run(
    directory: Path,
    backbone: nn.Module,
    *,
    world_size: int,
    num_classes: int,
    dim: int,
    epoch: int,
    global_step: int,
    total_iters: int,
    optimizer: str = "sgd",
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    warmup_iters: int = 0,
    seed: int = 11,
) -> ArcfaceRun:
    generator = torch.Generator().manual_seed(seed)
    params = dict(backbone.named_parameters())
    centres = torch.randn(num_classes, dim, generator=generator)
    moments = ["exp_avg", "exp_avg_sq"] if optimizer == "adamw" else ["momentum_buffer"]
    centre_state = {key: torch.rand(num_classes, dim, generator=generator) for key in moments}
    backbone_state = {
        name: {key: torch.rand(p.shape, generator=generator) for key in moments} for name, p in params.items()
    }
    step_count = float(global_step) if optimizer == "adamw" else None
    if step_count is not None:
        for state in backbone_state.values():
            state["step"] = torch.tensor(step_count)
    last_lr = polynomial_lr(lr, global_step, warmup_iters, total_iters)
    directory.mkdir(parents=True, exist_ok=True)
    for rank, (start, rows) in enumerate(their_split(num_classes, world_size)):
        weight = nn.Parameter(centres[start : start + rows].clone())
        groups = [{"params": list(params.values())}, {"params": [weight]}]
        if optimizer == "adamw":
            torch_optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        else:
            torch_optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
        for name, param in params.items():
            torch_optimizer.state[param] = dict(backbone_state[name])
        torch_optimizer.state[weight] = {key: value[start : start + rows] for key, value in centre_state.items()}
        if step_count is not None:
            torch_optimizer.state[weight]["step"] = torch.tensor(step_count)
        scheduler = {
            "base_lrs": [lr, lr],
            "last_epoch": global_step,
            "_step_count": global_step + 1,
            "verbose": False,
            "_get_lr_called_within_step": False,
            "_last_lr": [last_lr, last_lr],
            "total_iters": total_iters,
            "power": 1.0,
            "warmup_iters": warmup_iters,
        }
        torch.save(
            {
                "epoch": epoch,
                "global_step": global_step,
                "state_dict_backbone": backbone.state_dict(),
                "state_dict_softmax_fc": {"weight": weight.detach()},
                "state_optimizer": torch_optimizer.state_dict(),
                "state_lr_scheduler": scheduler,
            },
            directory / f"checkpoint_gpu_{rank}.pt",
        )
    return ArcfaceRun(
        centres,
        centre_state,
        {name: value.clone() for name, value in backbone.state_dict().items()},
        backbone_state,
        step_count,
        epoch,
        global_step,
        total_iters,
        last_lr,
    )
