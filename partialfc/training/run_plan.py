"""The run's plan: how long it trains, and the learning rate and sample rate at each point of it.

A run's length is fixed at its first start, as ``steps`` optimizer steps of ``batch`` samples (that
start's global batch), and saved with its progress (:class:`~partialfc.training.train_state.TrainProgress`).
A later start on another world size trains the plan's remaining samples at its own global batch;
both schedules are functions of the *position* in the plan (samples trained / plan batch), so they
end where they would have, whatever the run ran on. A plan is built once per start, from the config,
the loader's length and the progress a checkpoint restored, and never changed afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from partialfc.config import Config, SampleRateSchedule
from partialfc.training.lr_schedule import LRSchedule
from partialfc.training.train_state import TrainProgress


@dataclass(frozen=True)
class RunPlan:
    steps: int  # the run's length, in steps of `batch` samples
    batch: int  # the global batch the plan counts in: the run's first start's
    total_steps: int  # the step this start ends at: steps done + the plan's remaining samples at global_batch
    lr: LRSchedule  # by position in the plan
    sample_rates: SampleRateSchedule  # by position in the plan

    @classmethod
    def for_start(cls, config: Config, steps_per_epoch: int, global_batch: int, progress: TrainProgress) -> RunPlan:
        """The plan ``progress`` carries, or, when it carries none (a new run, a checkpoint from before
        plans were saved, an allowed change of length), this config's at this global batch."""
        if progress.plan_batch:
            steps, batch = progress.plan_steps, progress.plan_batch
        else:
            steps = config.train.max_steps or math.ceil(config.train.epochs * steps_per_epoch)
            batch = global_batch
        remaining = max(0, steps * batch - progress.samples)
        warmup = round(config.schedule.warmup_epochs * steps_per_epoch * global_batch / batch)
        return cls(
            steps=steps,
            batch=batch,
            total_steps=progress.step + math.ceil(remaining / global_batch),
            lr=LRSchedule(config.optim.lr, warmup, steps, config.schedule.decay, config.schedule.power),
            sample_rates=config.loss.sample_rates,
        )

    def learning_rate(self, position: float) -> float:
        return self.lr(position)

    def sample_rate(self, position: float) -> float:
        return self.sample_rates.rate(position, self.steps)
