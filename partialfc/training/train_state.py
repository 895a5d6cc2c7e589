"""Small pieces of trainer state: progress, the data epoch and the global RNGs, which survive a
restart.

The first three offer ``state_dict``/``load_state_dict`` like every other checkpointed component, so
the checkpointer can save a dict of components without knowing what is inside.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainProgress:
    """Where the run is: optimizer steps and samples trained, the run's plan, the best headline number
    of each evaluation (``protocol/target``, e.g. ``verify/lfw``).

    The plan is ``plan_steps`` steps of ``plan_batch`` samples, fixed when the run starts: a restart
    on another world size (another global batch) trains the plan's remaining samples, and the LR and
    sample-rate schedules follow the samples, so the run means the same whatever it ran on.
    """

    step: int = 0
    samples: int = 0
    plan_steps: int = 0  # 0: no plan recorded (a new run, or a checkpoint written before plans were)
    plan_batch: int = 0
    best: dict[str, float] = field(default_factory=dict)

    def record_best(self, key: str, score: float) -> bool:
        """Keep the best score of evaluation ``key``; True when ``score`` improves on it."""
        improved = score > self.best.get(key, -math.inf)
        if improved:
            self.best[key] = score
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "samples": self.samples,
            "plan_steps": self.plan_steps,
            "plan_batch": self.plan_batch,
            "best": dict(self.best),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        # An earlier release kept the best .bin accuracy by set name alone: it is "verify/<set>" now.
        self.best = {(k if "/" in k else f"verify/{k}"): float(v) for k, v in state["best"].items()}
        self.samples, self.plan_steps, self.plan_batch = (
            int(state.get(key, 0)) for key in ("samples", "plan_steps", "plan_batch")
        )

    def set_plan(self, steps: int, global_batch: int) -> None:
        self.plan_steps, self.plan_batch = steps, global_batch

    @property
    def position(self) -> float:
        """Where the run is in the plan's steps (equals ``step`` while the global batch is the plan's)."""
        return self.samples / self.plan_batch

    @property
    def finished(self) -> bool:
        return self.plan_batch > 0 and self.samples >= self.plan_steps * self.plan_batch

    def steps_to_finish(self, global_batch: int) -> int:
        """This start's total steps: those done plus what the plan's remaining samples take at ``global_batch``."""
        return self.step + math.ceil(max(0, self.plan_steps * self.plan_batch - self.samples) / global_batch)


class LoaderEpoch:
    """The data loader's epoch as a shared component: a job on another world size, whose per-rank
    loader positions do not apply, restarts the saved epoch instead of epoch 0.

    Saved on an epoch's last step, the loader has handed out every batch of epoch E but not yet
    moved on; what the run trains next is E + 1, so that is what is saved (else a resume on
    another world size would train the finished epoch again).
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def state_dict(self) -> dict[str, Any]:
        finished = self.loader.position >= len(self.loader)
        return {"epoch": self.loader.epoch + int(finished)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.set_epoch(int(state["epoch"]))


class RNGState:
    """The process-global generators (torch CPU + CUDA, numpy, random) of one rank.

    Nothing in the default step draws from them after setup, but dropout and user code do; a
    resume must continue their streams, not restart them.
    """

    def state_dict(self) -> dict[str, Any]:
        legacy = np.random.get_state(legacy=True)
        assert isinstance(legacy, tuple)  # legacy=True: the (kind, keys, position, has_gauss, cached) tuple
        kind, keys, position, has_gauss, cached = legacy
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "position": position,
                "has_gauss": has_gauss,
                "cached_gaussian": cached,
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        saved = state["numpy"]
        np.random.set_state(
            (
                saved["kind"],
                saved["keys"].numpy().astype(np.uint32),
                saved["position"],
                saved["has_gauss"],
                saved["cached_gaussian"],
            )
        )
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
