"""A step's data wait is the sum of its micro-batches' waits for the loader.

With ``train.grad_accum`` > 1 a step asks the loader for several batches; the wait it reports
feeds the log line's ``data_wait`` share and ``partialfc_data_wait_seconds_total``, and the step
duration histogram is the step's seconds less that wait. Counting only one micro-batch's wait
would hide an input-bound job behind a low data wait and charge the rest to compute. The loader
here advances a fake clock by a known amount per batch, so the expected sum is exact.
"""

from __future__ import annotations

import types
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from partialfc import CombinedMargin, PartialFC
from partialfc.config import OptimConfig
from partialfc.training.log_window import LogWindow
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.train_step import StepConfig, TrainStep


class FakeClock:
    """``perf_counter`` for the step: it stands still except while the loader hands over a batch."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def slow_batches(clock: FakeClock, waits: list[float]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a loader that keeps the step waiting ``waits[k]`` seconds for batch ``k``."""
    generator = torch.Generator().manual_seed(1)
    for wait in waits:
        clock.now += wait
        yield torch.randn(6, 4, generator=generator), torch.randint(0, 10, (6,), generator=generator)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("partialfc.training.train_step.time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def make_step(grad_accum: int) -> TrainStep:
    torch.manual_seed(0)
    backbone = nn.Linear(4, 8)
    config = OptimConfig(clip_grad_norm=1.0)
    pfc = PartialFC(8, 10, 1.0, CombinedMargin(s=8.0), optimizer=config.build_centre_optimizer(), seed=0)
    return TrainStep(backbone, pfc, TrainingOptimizer(config, backbone, pfc), StepConfig(grad_accum=grad_accum))


@pytest.mark.parametrize("waits", [[0.25, 0.5], [0.5, 0.0, 2.0, 0.125]])
def test_the_step_reports_the_sum_of_its_micro_batch_waits(clock, waits):
    step = make_step(len(waits))
    report = step(slow_batches(clock, waits), lr=0.1, sample_rate=1.0, number=1)
    assert report.micro_batches == len(waits)
    assert report.data_wait == sum(waits)  # exact: the waits are binary fractions
    assert report.seconds == sum(waits)  # the fake clock moved only while the step waited for data


def test_the_log_window_adds_the_steps_whole_waits(clock):
    step, window = make_step(2), LogWindow()
    batches = slow_batches(clock, [0.25, 0.5, 1.0, 0.125])
    for number in (1, 2):
        window.add(step(batches, lr=0.1, sample_rate=1.0, number=number))
    assert window.data_wait == 1.875
