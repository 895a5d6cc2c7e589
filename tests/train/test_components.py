"""Direct tests of the small trainer components: LR schedule, loss scaler, progress, RNG state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from partialfc.training.amp import LossScaler
from partialfc.training.lr_schedule import LRSchedule
from partialfc.training.train_state import RNGState, TrainProgress


def test_warmup_is_linear_from_one_step_to_the_peak():
    schedule = LRSchedule(peak_lr=0.4, warmup_steps=4, total_steps=20)
    assert [schedule(s) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize(("decay", "middle"), [("poly", 0.25), ("cosine", 0.5), ("constant", 1.0)])
def test_decay_after_warmup(decay, middle):
    schedule = LRSchedule(peak_lr=1.0, warmup_steps=2, total_steps=12, decay=decay, power=2.0)
    assert schedule(2) == pytest.approx(1.0)  # decay starts at the peak
    assert schedule(7) == pytest.approx(middle)  # halfway through the 10 decay steps
    assert schedule(12) == pytest.approx(1.0 if decay == "constant" else 0.0, abs=1e-12)
    assert schedule(50) == schedule(12)  # past the end it stays at the final value


def test_loss_scaler_halves_on_overflow_grows_after_a_run_and_round_trips():
    scaler = LossScaler(scale=8.0, growth_interval=3)
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0 and scaler.factor == 4.0
    for _ in range(2):
        scaler.update(found_inf=False)
    assert scaler.scale == 4.0  # two good steps are not yet a run of three
    scaler.update(found_inf=False)
    assert scaler.scale == 8.0 and scaler.good_steps == 0
    scaler.update(found_inf=False)
    restored = LossScaler(scale=1.0)
    restored.load_state_dict(scaler.state_dict())
    assert (restored.scale, restored.good_steps) == (8.0, 1)
    for _ in range(10):
        restored.update(found_inf=True)
    assert restored.scale == 1.0  # never below 1


def test_disabled_scaler_does_not_scale():
    scaler = LossScaler(enabled=False)
    scaler.update(found_inf=True)
    assert scaler.factor == 1.0 and scaler.scale == 2.0**16


def test_progress_keeps_the_best_score_per_evaluation():
    progress = TrainProgress()
    assert progress.record_best("verify/lfw", 0.9)
    assert not progress.record_best("verify/lfw", 0.8)
    assert progress.record_best("verify/cfp", 0.7)
    progress.step = 7
    restored = TrainProgress()
    restored.load_state_dict(progress.state_dict())
    assert restored == TrainProgress(step=7, best={"verify/lfw": 0.9, "verify/cfp": 0.7})
    # An earlier release's checkpoint kept the best .bin accuracy by set name alone.
    earlier = TrainProgress()
    earlier.load_state_dict({"step": 7, "best": {"lfw": 0.9}})
    assert earlier.best == {"verify/lfw": 0.9}


def test_rng_state_continues_every_global_stream():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(3), np.random.normal(), random.random()  # a cached gaussian is part of numpy's state
    state = RNGState().state_dict()
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    RNGState().load_state_dict(state)
    actual = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], actual[0])
    assert np.array_equal(expected[1], actual[1])
    assert expected[2] == actual[2]
