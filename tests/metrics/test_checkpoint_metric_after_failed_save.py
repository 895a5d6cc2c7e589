"""A failed checkpoint save leaves the last-success timestamp where the last good save put it.

``partialfc_checkpoint_last_success_timestamp_seconds`` is what the CheckpointStale alert and the
dashboard's "time since checkpoint" panel read: it must move only when a checkpoint was written.
A save that fails (a full disk, a dead filesystem) and still moved it would tell the operator the
job's work is safe while the newest checkpoint on disk grows older; the failure is counted in
``partialfc_checkpoint_saves_total{result="failure"}`` instead. The metrics' wall clock is a fake
one here, set to a known value while each save runs, so the timestamp names the save that set it.
"""

from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import pytest
import torch
from dist_harness import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from training_run import make_trainer

from partialfc.training.checkpoint import Checkpointer, CheckpointError

STARTED = 500.0  # the metrics' wall clock when the trainer starts
WANTED = {
    "partialfc_checkpoint_last_success_timestamp_seconds",
    "partialfc_checkpoint_saves_total",
    "partialfc_checkpoint_save_duration_seconds_count",
}


def saved_at(step: int) -> float:
    """The metrics' wall clock while the checkpoint of ``step`` is being saved."""
    return 1000.0 + step


def checkpoint_metrics(run_dir: Path) -> dict[str, float]:
    """The node's checkpoint metrics, merged from the job's multiprocess files as a scrape serves them."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_dir / "prometheus-0"))
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in WANTED:
                result = sample.labels.get("result")
                found[sample.name + (f'{{result="{result}"}}' if result else "")] = sample.value
    return found


@pytest.mark.parametrize("failing_step", [1, 2])
def test_a_failed_save_keeps_the_last_success_timestamp(tiny_dataset, tmp_path, monkeypatch, failing_step):
    clock = types.SimpleNamespace(now=STARTED, saving=0)
    monkeypatch.setattr("partialfc.metrics.time", types.SimpleNamespace(time=lambda: clock.now))
    save, write = Checkpointer.save, torch.save

    def timed_save(checkpointer: Checkpointer, step: int) -> Path:
        clock.now, clock.saving = saved_at(step), step
        return save(checkpointer, step)

    def write_unless_full(obj, f, *args, **kwargs):
        if clock.saving == failing_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(obj, f, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", timed_save)
    monkeypatch.setattr("partialfc.training.checkpoint.torch.save", write_unless_full)
    output = tmp_path / "run"
    trainer = make_trainer(
        tiny_dataset,
        output,
        **{
            "train.max_steps": 3,
            "checkpoint.every_steps": 1,
            "metrics.port": free_port(),
            "metrics.address": "127.0.0.1",
        },
    )
    with pytest.raises(CheckpointError, match="No space left on device"):
        trainer.fit()
    assert trainer.progress.step == failing_step

    good = failing_step - 1  # saves before the failing one succeeded; none when the first save fails
    assert checkpoint_metrics(output) == {
        "partialfc_checkpoint_last_success_timestamp_seconds": saved_at(good) if good else STARTED,
        'partialfc_checkpoint_saves_total{result="success"}': float(good),
        'partialfc_checkpoint_saves_total{result="failure"}': 1.0,
        "partialfc_checkpoint_save_duration_seconds_count": float(good + 1),
    }
