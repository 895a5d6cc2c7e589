"""Small pieces of trainer state that must survive a restart: progress and the global RNGs.

Each offers ``state_dict``/``load_state_dict`` like every other checkpointed component, so the
checkpointer can save a dict of components without knowing what is inside.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainProgress:
    """Where the run is: optimizer steps taken and the best verification accuracy per set."""

    step: int = 0
    best: dict[str, float] = field(default_factory=dict)

    def record_accuracy(self, name: str, accuracy: float) -> bool:
        """Keep the best accuracy of ``name``; True when ``accuracy`` improves on it."""
        improved = accuracy > self.best.get(name, -1.0)
        if improved:
            self.best[name] = accuracy
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.best = int(state["step"]), {k: float(v) for k, v in state["best"].items()}


class RNGState:
    """The process-global generators (torch CPU + CUDA, numpy, random) of one rank.

    Nothing in the default step draws from them after setup, but dropout and user code do; a
    resume must continue their streams, not restart them.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                      "has_gauss": has_gauss, "cached_gaussian": cached},
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        saved = state["numpy"]
        np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                             saved["has_gauss"], saved["cached_gaussian"]))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
