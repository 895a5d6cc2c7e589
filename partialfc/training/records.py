"""What the trainer reports, as typed records, and the sinks that turn each record into one output.

The trainer makes a record of each event (a start, a log step, an evaluation, a checkpoint) and
hands it to every sink in its list: the run log (``train_log.jsonl``, the console and train.log
line, ``summary.json``; :mod:`partialfc.training.run_log`), TensorBoard and Prometheus
(:mod:`partialfc.training.sinks`). Adding an output is one class with ``write`` and ``close``.

The run record ``train_log.jsonl`` holds the start, step and evaluation records as JSON objects:
the dataclass's fields (an optional field only when set) plus ``event`` and ``time`` (Unix seconds).
``partialfc.report`` reads them back into the same classes (:func:`from_json`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class StartRecord:
    """One start of the job (a restart is another start)."""

    event: ClassVar[str] = "start"
    version: str
    backbone: str
    num_classes: int
    world_size: int
    device: str
    images: int
    global_batch: int
    total_steps: int
    steps_per_epoch: int
    loader: str
    start_step: int
    restart: int  # torchrun's restart count
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class StepRecord:
    """One log interval, read at its last step."""

    event: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float | None  # None when not measured
    samples_per_s: float
    data_wait: float  # the fraction of the interval spent waiting for data
    memory_bytes: int  # the device's peak allocation (CPU: resident set)
    eta_s: float
    phase_seconds: dict[str, float]  # the interval's forward/backward/optimizer seconds
    loss_scale: float | None = None  # fp16 runs
    skipped_steps: int | None = None  # fp16 runs: steps the loss scaler dropped, in all
    nonfinite_steps: int | None = None  # after dropped non-finite steps: how many in the interval
    first_nonfinite_step: int | None = None
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation protocol's result on one source at a step (:class:`partialfc.eval.protocols.EvalResult`)."""

    event: ClassVar[str] = "evaluation"
    protocol: str  # verify, pairs, identify
    target: str  # the .bin set's or the IJB release's name
    step: int
    summary: dict[str, float]  # the protocol's numbers by name
    headline: str  # the summary entry that ranks models
    seconds: float  # wall time of the evaluation
    best: float = field(default=0.0, metadata={"run_record": False})  # the run's best headline on it so far
    time: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """``protocol/target``: the name of this evaluation in summary.json and the best-model record."""
        return f"{self.protocol}/{self.target}"

    @property
    def score(self) -> float:
        return self.summary[self.headline]


@dataclass(frozen=True)
class VerificationRecordV1:
    """A ``.bin`` verification as run records before the evaluation record held it; read as one."""

    event: ClassVar[str] = "verification"
    name: str
    step: int
    accuracy: float
    accuracy_std: float
    far: float
    tar_at_far: float
    time: float = field(default_factory=time.time)

    def upgrade(self) -> EvaluationRecord:
        summary = {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            f"TAR@FAR={self.far:g}": self.tar_at_far,
        }
        return EvaluationRecord("verify", self.name, self.step, summary, "accuracy", math.nan, time=self.time)


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint save, written or failed (not in the run record: the console line, summary and metrics)."""

    event: ClassVar[str] = "checkpoint"
    step: int
    path: str | None  # None when the save failed
    seconds: float
    time: float = field(default_factory=time.time)

    @property
    def success(self) -> bool:
        return self.path is not None


Record = StartRecord | StepRecord | EvaluationRecord | CheckpointRecord
RunRecord = StartRecord | StepRecord | EvaluationRecord
RUN_RECORD_TYPES: dict[
    str, type[StartRecord] | type[StepRecord] | type[EvaluationRecord] | type[VerificationRecordV1]
] = {kind.event: kind for kind in (StartRecord, StepRecord, EvaluationRecord, VerificationRecordV1)}
"""The events of the run record (``train_log.jsonl``), by name; ``verification`` is an earlier release's."""


def required_fields(kind: type) -> tuple[str, ...]:
    """The fields a run record of ``kind`` must hold (those without a default), ``time`` first."""
    fields = dataclasses.fields(kind)
    return (
        "time",
        *(f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING),
    )


def to_json(record: RunRecord) -> dict[str, Any]:
    """The run record's JSON object of ``record``: ``event``, ``time``, then its fields in order."""
    values: dict[str, Any] = {"event": record.event, "time": record.time}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == "time" or not f.metadata.get("run_record", True):
            continue
        if value is None and f.default is None:  # an optional part left out
            continue
        values[f.name] = value
    return values


def from_json(values: dict[str, Any]) -> RunRecord:
    """The record a run record's JSON object holds; KeyError or TypeError when it is not one."""
    kind = RUN_RECORD_TYPES[values["event"]]
    names = {f.name for f in dataclasses.fields(kind)}
    record = kind(**{name: value for name, value in values.items() if name in names})
    return record.upgrade() if isinstance(record, VerificationRecordV1) else record


class Sink(Protocol):
    """One output of the trainer's records."""

    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...
