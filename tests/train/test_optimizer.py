"""TrainingOptimizer: one LR, one global norm, unscaling and clipping over backbone + centres."""

from __future__ import annotations

import copy

import pytest
import torch
from dist_harness import run_distributed
from torch import nn

from partialfc import CombinedMargin, PartialFC
from partialfc.config import OptimConfig
from partialfc.training.optimizer import TrainingOptimizer

CLASSES, DIM = 10, 8


def make(config: OptimConfig, fp16: bool = False) -> tuple[nn.Module, PartialFC, TrainingOptimizer]:
    torch.manual_seed(0)
    backbone = nn.Linear(4, DIM)
    pfc = PartialFC(DIM, CLASSES, 1.0, CombinedMargin(s=8.0, m2=0.3), optimizer=config.build_centre_optimizer())
    return backbone, pfc, TrainingOptimizer(config, backbone, pfc, fp16=fp16)


def backward(backbone: nn.Module, pfc: PartialFC, optimizer: TrainingOptimizer) -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=generator), torch.randint(0, CLASSES, (6,), generator=generator)
    (pfc(backbone(x), y) * optimizer.loss_multiplier).backward()


def reference_norm(backbone: nn.Module, pfc: PartialFC) -> float:
    squares = sum(float(p.grad.square().sum()) for p in backbone.parameters()) + float(pfc.grad_sq_norm())
    return squares**0.5


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_one_learning_rate_for_both_halves(name):
    _, pfc, optimizer = make(OptimConfig(name=name))
    optimizer.set_lr(0.0375)
    assert [group["lr"] for group in optimizer.backbone_optimizer.param_groups] == [0.0375]
    assert pfc.optimizer.lr == 0.0375
    assert type(optimizer.backbone_optimizer).__name__.lower() == name
    assert type(pfc.optimizer).__name__ == {"sgd": "LazySGD", "adamw": "LazyAdamW"}[name]


def test_fp16_unscales_before_the_norm_and_the_update():
    config = OptimConfig(lr=0.1, momentum=0.9)
    plain = make(config)
    backward(*plain)
    expected_norm = reference_norm(*plain[:2])
    expected = plain[2].step()

    scaled = make(config, fp16=True)
    assert scaled[2].loss_multiplier == 2.0**16
    backward(*scaled)
    outcome = scaled[2].step()
    assert not outcome.skipped
    assert float(outcome.grad_norm) == pytest.approx(expected_norm, rel=1e-5)
    assert float(outcome.grad_norm) == pytest.approx(float(expected.grad_norm), rel=1e-5)
    assert torch.allclose(scaled[0].weight, plain[0].weight, rtol=1e-5, atol=1e-7)
    assert torch.allclose(scaled[1].weight, plain[1].weight, rtol=1e-5, atol=1e-7)


def test_clipping_scales_backbone_and_centre_gradients_to_the_global_norm():
    config = OptimConfig(lr=1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=0.01)
    backbone, pfc, optimizer = make(config)
    before = (copy.deepcopy(backbone.state_dict()), pfc.weight.clone())
    backward(backbone, pfc, optimizer)
    norm = float(optimizer.step().grad_norm)
    assert norm > 0.1  # clipping is active
    # lr 1, plain SGD: the update is minus the clipped gradient, so its norm is the clip value.
    backbone_update = sum(float((backbone.state_dict()[k] - v).square().sum()) for k, v in before[0].items())
    centre_update = float((pfc.weight - before[1]).square().sum())
    assert centre_update > 0
    assert (backbone_update + centre_update) ** 0.5 == pytest.approx(0.01, rel=1e-4)


def test_a_clip_above_the_norm_leaves_the_step_unscaled():
    """Planted bug: the clip coefficient not clamped at 1 (small gradients scaled up to the clip value)."""
    updated = {}
    for clip in (0.0, 1000.0):  # 0: no clipping; 1000: far above the norm, so the coefficient must be exactly 1
        config = OptimConfig(lr=1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=clip)
        backbone, pfc, optimizer = make(config)
        backward(backbone, pfc, optimizer)
        norm = float(optimizer.step().grad_norm)
        updated[clip] = (backbone.weight.detach().clone(), backbone.bias.detach().clone(), pfc.weight.clone())
    assert norm < 1000.0
    for plain, clipped in zip(updated[0.0], updated[1000.0]):
        assert torch.equal(plain, clipped)


def clipped_ddp_steps(rank: int, world_size: int, clip: float) -> dict:
    """Three clipped steps of a DDP backbone + a 2-shard PartialFC, each rank on its own batches."""
    torch.manual_seed(0)
    backbone = nn.parallel.DistributedDataParallel(nn.Linear(4, DIM))
    config = OptimConfig(lr=0.5, momentum=0.9, weight_decay=0.0, clip_grad_norm=clip)
    pfc = PartialFC(DIM, CLASSES, 1.0, CombinedMargin(s=8.0, m2=0.3), optimizer=config.build_centre_optimizer())
    optimizer = TrainingOptimizer(config, backbone, pfc)
    generator = torch.Generator().manual_seed(10 + rank)
    centre_sq, norms = [], []
    for step in range(1, 4):
        x, y = torch.randn(6, 4, generator=generator), torch.randint(0, CLASSES, (6,), generator=generator)
        pfc(backbone(x), y).backward()
        centre_sq.append(float(pfc.grad_sq_norm()))
        norms.append(float(optimizer.step(step_number=step).grad_norm))
    return {
        "backbone": {k: v.clone() for k, v in backbone.module.state_dict().items()},
        "centre_sq": centre_sq,
        "norms": norms,
    }


def test_clipped_steps_keep_the_ddp_backbones_bit_equal_across_ranks():
    """Planted bug: the centre part of the global norm not all-reduced (each rank clips by its own norm)."""
    clip = 1e-3
    first, second = run_distributed(clipped_ddp_steps, 2, clip)
    assert all(a != b for a, b in zip(first["centre_sq"], second["centre_sq"]))  # the shards' norms differ
    assert min(first["norms"] + second["norms"]) > 10 * clip  # clipping is active on every step
    for key, value in first["backbone"].items():
        assert torch.equal(value, second["backbone"][key]), key
    assert first["norms"] == second["norms"]  # one global norm


def test_a_non_finite_norm_under_fp16_skips_both_halves_and_halves_the_scale():
    backbone, pfc, optimizer = make(OptimConfig(), fp16=True)
    before = (backbone.weight.clone(), pfc.weight.clone(), pfc.step_count)
    backward(backbone, pfc, optimizer)
    backbone.weight.grad[0, 0] = float("inf")
    outcome = optimizer.step()
    assert outcome.skipped and not torch.isfinite(outcome.grad_norm)
    assert torch.equal(backbone.weight, before[0]) and torch.equal(pfc.weight, before[1])
    assert pfc.step_count == before[2] + 1  # the sampling stream still advances
    assert optimizer.scaler.scale == 2.0**15 and optimizer.skipped_steps == 1
    assert backbone.weight.grad is None  # gradients are dropped with the step


def test_each_fp16_overflow_counts_once_in_skipped_steps():
    """Planted bug: the skipped-steps counter adding its running total (1, 3, 7 instead of 1, 2, 3)."""
    backbone, pfc, optimizer = make(OptimConfig(), fp16=True)
    counts = []
    for _ in range(3):
        backward(backbone, pfc, optimizer)
        backbone.weight.grad[0, 0] = float("inf")
        assert optimizer.step().skipped
        counts.append(optimizer.skipped_steps)
    assert counts == [1, 2, 3]


def test_state_dict_round_trip_continues_identically():
    config = OptimConfig(name="adamw", lr=0.01)
    first = make(config, fp16=True)
    backward(*first)
    first[2].step()
    second = make(config, fp16=True)
    second[0].load_state_dict(first[0].state_dict())
    second[1].load_state_dict(first[1].state_dict())
    second[2].load_state_dict(copy.deepcopy(first[2].state_dict()))  # as from disk: no shared tensors
    for backbone, pfc, optimizer in (first, second):
        backward(backbone, pfc, optimizer)
        optimizer.step()
    assert torch.equal(first[0].weight, second[0].weight)
    assert torch.equal(first[1].weight, second[1].weight)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_non_finite_step_is_dropped_on_the_device_and_counted(name):
    """bf16/fp32: no host decision; torch's fused optimizers and the centre optimizers skip on found_inf."""
    backbone, pfc, optimizer = make(OptimConfig(name=name, lr=0.1))
    backward(backbone, pfc, optimizer)
    optimizer.step(step_number=1)  # one good step first: momentum / moments exist
    before = (
        {k: v.clone() for k, v in backbone.state_dict().items()},
        {k: v.clone() for k, v in pfc.state_dict().items() if isinstance(v, torch.Tensor)},
        copy.deepcopy(optimizer.backbone_optimizer.state_dict()["state"]),
    )
    for step in (2, 3):
        backward(backbone, pfc, optimizer)
        outcome = optimizer.step(torch.tensor(float("nan")), step_number=step)  # a non-finite loss
        assert outcome.skipped is None and torch.isfinite(outcome.grad_norm)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[0][key]), key
    for key, value in before[1].items():
        assert torch.equal(pfc.state_dict()[key], value), key
    after = optimizer.backbone_optimizer.state_dict()["state"]
    for index, state in before[2].items():
        for key, value in state.items():
            assert torch.equal(after[index][key], value), (index, key)
    report = optimizer.nonfinite.report(reset=False)
    assert (report.steps, report.longest_run, report.first_step, report.latest_finite) == (2, 2, 2, False)
    backward(backbone, pfc, optimizer)
    optimizer.step(step_number=4)  # finite again: applied, the run of bad steps ends
    assert not torch.equal(backbone.weight, before[0]["weight"])
    report = optimizer.nonfinite.report()
    assert (report.steps, report.longest_run, report.latest_finite) == (2, 2, True)
    assert optimizer.nonfinite.report() == type(report)(0, 0, None, True)  # a new interval
