"""RunPlan: the run's length and schedules for one start, from the config or the plan a checkpoint saved."""

from __future__ import annotations

from partialfc.config import load_config
from partialfc.training.run_plan import RunPlan
from partialfc.training.train_state import TrainProgress

CONFIG = load_config(
    overrides={
        "train.epochs": 2,
        "schedule.warmup_epochs": 1.0,
        "loss.sample_rate": 0.1,
        "loss.sample_rate_schedule": ["0.5:1.0"],
    }
)


def test_a_new_run_plans_its_configs_epochs_at_its_global_batch() -> None:
    plan = RunPlan.for_start(CONFIG, steps_per_epoch=50, global_batch=256, progress=TrainProgress())
    assert (plan.steps, plan.batch, plan.total_steps) == (100, 256, 100)
    assert plan.lr.warmup_steps == 50
    assert plan.sample_rate(49) == 0.1 and plan.sample_rate(50) == 1.0
    assert plan.learning_rate(49) == CONFIG.optim.lr  # the end of the warm-up


def test_another_global_batch_trains_the_plans_remaining_samples_on_the_plans_schedules() -> None:
    """Saved at step 40 of a 100 x 256 plan; restarted at half the world size (global batch 128)."""
    progress = TrainProgress(step=40, samples=40 * 256, plan_steps=100, plan_batch=256)
    plan = RunPlan.for_start(CONFIG, steps_per_epoch=100, global_batch=128, progress=progress)
    assert (plan.steps, plan.batch) == (100, 256)
    assert plan.total_steps == 40 + 60 * 2  # 60 plan steps of 256 samples are 120 steps of 128
    assert plan.lr.warmup_steps == 50  # one epoch, in plan steps
    assert plan.sample_rate(49.5) == 0.1 and plan.sample_rate(50.0) == 1.0  # by position, not by step


def test_a_progress_without_a_plan_takes_the_configs_counted_from_the_step_reached() -> None:
    progress = TrainProgress(step=30, samples=30 * 256)
    plan = RunPlan.for_start(CONFIG, steps_per_epoch=50, global_batch=256, progress=progress)
    assert (plan.steps, plan.batch, plan.total_steps) == (100, 256, 100)
