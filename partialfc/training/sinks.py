"""The trainer's other sinks: TensorBoard scalars and Prometheus metrics, each made from the records."""

from __future__ import annotations

from pathlib import Path

import torch

from partialfc.metrics import TrainingMetrics
from partialfc.training.records import CheckpointRecord, EvaluationRecord, Record, StepRecord


class TensorBoardSink:
    """Loss, learning rate and throughput per log step (``train.tensorboard``; needs the tensorboard package)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: Record) -> None:
        if isinstance(record, StepRecord):
            for name, value in (("loss", record.loss), ("lr", record.lr), ("samples_per_s", record.samples_per_s)):
                self._writer.add_scalar(name, value, record.step)

    def close(self) -> None:
        self._writer.close()


class MetricsSink:
    """The records' figures as Prometheus metrics (:class:`~partialfc.metrics.TrainingMetrics`, every rank);
    the per-step counters are the trainer's own, as they come between log steps."""

    def __init__(self, metrics: TrainingMetrics, device: torch.device) -> None:
        self.metrics, self.device = metrics, device

    def write(self, record: Record) -> None:
        if isinstance(record, StepRecord):
            self.metrics.observe_log(
                loss=record.loss,
                lr=record.lr,
                grad_norm=record.grad_norm,
                loss_scale=record.loss_scale,
                skipped_steps_total=record.skipped_steps or 0,
            )
            self.metrics.observe_phases(record.phase_seconds)
            self.metrics.observe_memory(self.device)
        elif isinstance(record, EvaluationRecord):
            self.metrics.observe_evaluation(record.protocol, record.target, record.summary, record.seconds)
        elif isinstance(record, CheckpointRecord):
            self.metrics.observe_checkpoint(seconds=record.seconds, success=record.success)

    def close(self) -> None:
        self.metrics.close()
