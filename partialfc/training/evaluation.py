"""Evaluation during training: the protocols ``eval.protocols`` lists, each on its sources at its interval.

Built once from the config, before the first step: the ``.bin`` sets are read and the IJB release's
lists parsed, so a missing file stops the start, not step 20,000. At a step where a protocol is due
(every ``every_steps`` steps, and at the last step) every rank runs it on the inference weights in
eval mode: each rank embeds a block of the images, one all-gather, and every rank computes the same
:class:`~partialfc.eval.protocols.EvalResult`. The IJB protocols share one embedding pass per step.
The first listed protocol that has a source decides the run's best model, by its headline number
on its first source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from partialfc.config import Config
from partialfc.data import VerificationSet
from partialfc.eval.embedder import TorchEmbedder, evaluating
from partialfc.eval.ijb_protocols import IdentifyProtocol, IJBSource, PairsProtocol
from partialfc.eval.protocols import EvalProtocol, EvalResult
from partialfc.eval.verification import VerifyProtocol
from partialfc.training.prepare import resolve_ijb_release, resolve_val_targets

__all__ = ["Evaluation", "ScheduledProtocol"]


@dataclass
class ScheduledProtocol:
    """A protocol, what it evaluates and how often (0: only at the last step)."""

    protocol: EvalProtocol[Any]
    sources: list[Any]
    every_steps: int

    def due(self, step: int, total_steps: int) -> bool:
        return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)


class Evaluation:
    """The run's scheduled protocols; :meth:`run` is collective."""

    def __init__(
        self,
        scheduled: list[ScheduledProtocol],
        embedding_size: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.scheduled = [entry for entry in scheduled if entry.sources]
        self.embedding_size, self.device, self.amp_dtype = embedding_size, device, amp_dtype

    @classmethod
    def from_config(cls, config: Config, device: torch.device, amp_dtype: torch.dtype | None) -> Evaluation:
        """The protocols of ``eval.protocols`` in their order, with their sources opened."""
        section = config.eval
        ijb: list[IJBSource] = []
        if {"pairs", "identify"} & set(section.protocols):
            release = resolve_ijb_release(config.data, section.ijb.release)
            ijb = [IJBSource.open(release, section.ijb.set or None)]
        verify_sources = [VerificationSet(path) for path in resolve_val_targets(config.data)]
        built = {
            "verify": lambda: ScheduledProtocol(
                VerifyProtocol(section.batch_size, (section.verify.far,)), verify_sources, section.verify.every_steps
            ),
            "pairs": lambda: ScheduledProtocol(PairsProtocol(section.batch_size), ijb, section.ijb.every_steps),
            "identify": lambda: ScheduledProtocol(IdentifyProtocol(section.batch_size), ijb, section.ijb.every_steps),
        }
        return cls([built[name]() for name in section.protocols], config.model.embedding_size, device, amp_dtype)

    def due(self, step: int, total_steps: int) -> bool:
        return any(entry.due(step, total_steps) for entry in self.scheduled)

    def decides_best(self, result: EvalResult) -> bool:
        """Whether ``result`` is the one the best model is chosen by."""
        first = self.scheduled[0] if self.scheduled else None
        return first is not None and (result.protocol, result.target) == (first.protocol.name, first.sources[0].name)

    def run(
        self, backbone: nn.Module, step: int, total_steps: int, on_batch: Callable[[], None] | None = None
    ) -> list[EvalResult]:
        """Collective: every protocol due at ``step`` on each of its sources, ``backbone`` in eval mode;
        ``on_batch`` after each embedded batch (the stall watchdog's progress)."""
        if dist.is_initialized():
            # Each rank's batch-norm statistics moved with its own last batch; evaluate what model.pt
            # holds, rank 0's (DDP broadcasts them again before the next training forward anyway).
            for buffer in backbone.buffers():
                dist.broadcast(buffer, 0)
        with evaluating(backbone):
            embedder = TorchEmbedder(
                backbone, self.device, self.embedding_size, self.amp_dtype, "the trained weights", on_batch
            )
            return [
                entry.protocol.run(embedder, source)
                for entry in self.scheduled
                if entry.due(step, total_steps)
                for source in entry.sources
            ]
