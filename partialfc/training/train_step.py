"""One training step: the one the trainer runs and the one the benchmarks time.

Per micro-batch the backbone embeds under autocast (DDP all-reduces its gradients after the last
micro-batch only), Partial FC computes the margin loss and backward runs; then
:class:`~partialfc.training.optimizer.TrainingOptimizer` takes one global gradient norm over the backbone and
every rank's centre shard, clips, and steps both halves or drops the step on every rank; the EMA of
the weights follows an applied step. Nothing here syncs the host with the device: the report's loss,
norm and ``applied`` flag stay device scalars until a log line reads them, and the phases are timed
by :class:`~partialfc.common.phase_timer.PhaseTimer` (CUDA events on GPU).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from partialfc.common.phase_timer import PhaseTimer
from partialfc.core.partial_fc import PartialFC
from partialfc.training.ema import WeightAverage
from partialfc.training.optimizer import TrainingOptimizer

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StepConfig:
    """How a step runs; the trainer fills it from ``train.*``, ``loss.bf16_gemm`` and ``model.channels_last``."""

    grad_accum: int = 1
    amp_dtype: torch.dtype | None = None
    """The backbone's autocast dtype (None: full precision)."""
    bf16_gemm: bool = False
    """Partial FC's matmuls under bf16 autocast."""
    channels_last: bool = False
    """Images enter the backbone in channels_last layout (GPU)."""


@dataclass
class StepReport:
    """What one step leaves for the log window and the metrics; device values are not read here."""

    micro_losses: list[torch.Tensor]
    """Each micro-batch's loss (device scalars), in order: the log window sums them as they came."""
    loss: torch.Tensor
    """Their sum, the step's loss that joins the finiteness test (device scalar)."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping (device scalar)."""
    applied: torch.Tensor
    """Whether the update was applied (device bool scalar)."""
    skipped: bool | None
    """Whether the step was dropped, when the host knows (fp16); else None."""
    lr: float
    data_wait: float
    """Seconds spent waiting for the loader."""
    seconds: float
    """Host seconds of the whole step, data wait included (on GPU: until the last launch, not the last kernel)."""
    sampled_centres: int
    """Centres this rank sampled per micro-batch."""

    @property
    def micro_batches(self) -> int:
        return len(self.micro_losses)


class TrainStep:
    """``step(batches, lr=..., sample_rate=..., number=...)`` runs one optimizer step on the next
    ``grad_accum`` batches of ``batches``.

    ``model`` is the backbone, possibly wrapped in DDP; ``on_phase`` hears each phase's name
    ("data", "forward", "backward", "optimizer") as it begins (the trainer's stall watchdog).
    """

    def __init__(
        self,
        model: nn.Module,
        pfc: PartialFC,
        optimizer: TrainingOptimizer,
        config: StepConfig,
        *,
        ema: WeightAverage | None = None,
        on_phase: Callable[[str], None] = lambda phase: None,
    ) -> None:
        self.model, self.pfc, self.optimizer, self.config = model, pfc, optimizer, config
        self.backbone = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.ema, self.on_phase = ema, on_phase
        self.device = pfc.weight.device
        self.phases = PhaseTimer(self.device)

    def __call__(self, batches: Iterator[Batch], *, lr: float, sample_rate: float, number: int) -> StepReport:
        """Step ``number`` (1-based; names the step in non-finite reports) at ``lr`` and ``sample_rate``."""
        start, data_wait = time.perf_counter(), 0.0
        self.optimizer.set_lr(lr)
        self.pfc.set_sample_rate(sample_rate)
        accum, amp_dtype = self.config.grad_accum, self.config.amp_dtype
        step_loss = torch.zeros((), device=self.device)
        micro_losses: list[torch.Tensor] = []
        for micro in range(accum):
            self.on_phase("data")
            wait_start = time.perf_counter()
            images, labels = next(batches)
            data_wait += time.perf_counter() - wait_start
            images, labels = self._to_device(images, labels)
            with self._gradient_sync(last_micro=micro == accum - 1):
                with self._phase("forward"):
                    with torch.autocast(
                        self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                    ):
                        embeddings = self.model(images)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16_gemm):
                        loss = self.pfc(embeddings, labels)
                with self._phase("backward"):
                    (loss * (self.optimizer.loss_multiplier / accum)).backward()
            micro_losses.append(loss.detach())
            step_loss += micro_losses[-1]
        with self._phase("optimizer"):
            outcome = self.optimizer.step(step_loss, step_number=number)
            if self.ema:
                self.ema.update(self.backbone, outcome.applied)
        return StepReport(
            micro_losses=micro_losses,
            loss=step_loss,
            grad_norm=outcome.grad_norm,
            applied=outcome.applied,
            skipped=outcome.skipped,
            lr=lr,
            data_wait=data_wait,
            seconds=time.perf_counter() - start,
            sampled_centres=self.pfc.num_sample,
        )

    def _phase(self, name: str) -> contextlib.AbstractContextManager:
        self.on_phase(name)
        return self.phases.phase(name)

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def _gradient_sync(self, last_micro: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces backbone gradients only after the last micro-batch of a step."""
        if last_micro or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()
