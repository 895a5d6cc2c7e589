"""TrainStep, the step the trainer runs and the benchmarks time, and the log window its reports fold into."""

from __future__ import annotations

import copy

import torch
from torch import nn

from partialfc import CombinedMargin, PartialFC
from partialfc.config import OptimConfig
from partialfc.training.ema import WeightAverage
from partialfc.training.log_window import LogWindow
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.train_step import StepConfig, TrainStep


def parts(seed: int = 0) -> tuple[nn.Module, PartialFC, TrainingOptimizer]:
    torch.manual_seed(seed)
    backbone = nn.Linear(4, 8)
    config = OptimConfig(clip_grad_norm=1.0)
    pfc = PartialFC(8, 10, 1.0, CombinedMargin(s=8.0), optimizer=config.build_centre_optimizer(), seed=seed)
    return backbone, pfc, TrainingOptimizer(config, backbone, pfc)


def batches(count: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 4, generator=generator), torch.randint(0, 10, (6,), generator=generator)) for _ in range(count)
    ]


def test_a_step_accumulates_micro_batches_and_reports_them():
    backbone, pfc, optimizer = parts()
    reference_backbone, reference_pfc = copy.deepcopy(backbone), copy.deepcopy(pfc)
    reference_optimizer = TrainingOptimizer(optimizer.config, reference_backbone, reference_pfc)
    heard: list[str] = []
    step = TrainStep(backbone, pfc, optimizer, StepConfig(grad_accum=2), on_phase=heard.append)
    data = batches(2)
    report = step(iter(data), lr=0.05, sample_rate=0.5, number=1)

    assert heard == ["data", "forward", "backward", "data", "forward", "backward", "optimizer"]
    assert optimizer.backbone_optimizer.param_groups[0]["lr"] == 0.05 and pfc.optimizer.lr == 0.05
    assert pfc.num_sample == report.sampled_centres == 5
    # The same step written out: each micro-batch's loss divided by the accumulation, one optimizer step.
    reference_pfc.set_sample_rate(0.5)
    reference_optimizer.set_lr(0.05)
    losses = []
    for images, labels in data:
        losses.append(reference_pfc(reference_backbone(images), labels))
        (losses[-1] / 2).backward()
    outcome = reference_optimizer.step(losses[0].detach() + losses[1].detach(), step_number=1)
    assert torch.equal(report.loss, losses[0].detach() + losses[1].detach()) and report.micro_batches == 2
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(report.micro_losses, losses, strict=True))
    assert torch.equal(report.grad_norm, outcome.grad_norm) and bool(report.applied)
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, reference_backbone.state_dict()[name]), name
    assert torch.equal(pfc.weight, reference_pfc.weight)
    assert report.lr == 0.05 and 0.0 <= report.data_wait <= report.seconds
    assert all(seconds > 0 for seconds in step.phases.collect().values())


def test_a_non_finite_step_is_dropped_and_the_average_keeps_its_weights():
    backbone, pfc, optimizer = parts()
    average = WeightAverage(backbone, decay=0.5)
    step = TrainStep(backbone, pfc, optimizer, StepConfig(), ema=average)
    before = copy.deepcopy(backbone.state_dict()), copy.deepcopy(average.module.state_dict())
    images, labels = batches(1)[0]
    report = step(iter([(images * float("nan"), labels)]), lr=0.1, sample_rate=1.0, number=1)
    assert not bool(report.applied) and not torch.isfinite(report.loss)
    for expected, actual in zip(before, (backbone.state_dict(), average.module.state_dict())):
        assert all(torch.equal(expected[name], actual[name]) for name in expected)
    report = step(iter(batches(1)), lr=0.1, sample_rate=1.0, number=2)
    assert bool(report.applied) and not torch.equal(average.module.weight, before[1]["weight"])


def test_the_log_window_folds_the_step_reports():
    backbone, pfc, optimizer = parts()
    step = TrainStep(backbone, pfc, optimizer, StepConfig(grad_accum=2))
    window, data = LogWindow(), iter(batches(4))
    reports = [step(data, lr=lr, sample_rate=1.0, number=n) for n, lr in ((1, 0.1), (2, 0.05))]
    for report in reports:
        window.add(report)
    assert window.steps == 2 and window.micro_batches == 4
    in_order = torch.zeros(())  # the micro-batches' losses summed as they came, as before steps reported them
    for loss in (loss for report in reports for loss in report.micro_losses):
        in_order = in_order + loss
    assert window.mean_loss() == float(in_order) / 4
    assert window.grad_norm is reports[1].grad_norm and window.lr == 0.05
    assert window.data_wait == reports[0].data_wait + reports[1].data_wait
