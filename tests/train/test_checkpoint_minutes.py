"""checkpoint.every_minutes: a time bound on what an eviction without SIGTERM loses.

Clocks are injected: each rank's clock reads ``seconds_per_step x its trainer's step``, so "minutes
passed" falls on known steps and two ranks' clocks can disagree. The timer is asked at log steps
only (train.log_every 2 here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dist_harness import run_distributed
from training_run import make_trainer

from partialfc.common.exit_codes import ExitCode
from partialfc.config import ConfigError, load_config
from partialfc.train import main


class StepClock:
    """Seconds = ``seconds_per_step`` x the bound trainer's step (0 until a trainer is bound)."""

    def __init__(self, seconds_per_step: float) -> None:
        self.seconds_per_step, self.trainer = seconds_per_step, None

    def __call__(self) -> float:
        return self.seconds_per_step * (self.trainer.progress.step if self.trainer else 0)


def train(dataset: Path, output: Path, seconds_per_step: float, **settings: object) -> list[int]:
    """Train with a step clock (small batches, no verification); the steps at which this rank saved."""
    clock = StepClock(seconds_per_step)
    fast = {"data.batch_size": 4, "data.val_targets": [], "checkpoint.keep": 10}
    trainer = clock.trainer = make_trainer(dataset, output, clock, **{**fast, **settings})
    saved, save = [], trainer.checkpointer.save

    def recording_save(step: int) -> Path:
        saved.append(step)
        return save(step)

    trainer.checkpointer.save = recording_save
    assert trainer.fit() == ExitCode.FINISHED
    return saved


def test_every_steps_and_every_minutes_combine_at_log_steps_and_each_save_restarts_the_timer(tiny_dataset, tmp_path):
    """25 s a step, a minute, every 8 steps, a log line every 2: a minute is up at step 3 (75 s) and
    saved at the log step 4; then the step save at 8 and the end at 12. Broken, it would also save at
    3 (checked outside log steps), 6 (no restart after the time save) or 10 (none after the step save)."""
    settings = {"train.max_steps": 12, "checkpoint.every_steps": 8, "checkpoint.every_minutes": 1}
    assert train(tiny_dataset, tmp_path / "run", 25.0, **settings) == [4, 8, 12]


def test_zero_minutes_is_off_and_a_resume_restarts_the_timer(tiny_dataset, tmp_path):
    """A first run with every_minutes 0, on a clock that passes days a step, saves by steps only (4 and
    the end). Resumed at step 4 (100 s on a 25 s-a-step clock) with a minute: at step 6 (150 s) only
    50 s passed since the resume, so the next save is the end; a timer counting from the trainer's
    construction (step 0) would save at 6."""
    first = {"train.max_steps": 8, "checkpoint.every_steps": 4, "checkpoint.every_minutes": 0}
    assert train(tiny_dataset, tmp_path / "first", 1e6, **first) == [4, 8]
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "first" / "checkpoints" / "step-00000004", resumed / "checkpoints" / "step-00000004")
    again = {**first, "checkpoint.every_steps": 0, "checkpoint.every_minutes": 1}
    assert train(tiny_dataset, resumed, 25.0, **again) == [8]
    assert "resumed from" in (resumed / "train.log").read_text()


def _train_with_own_clock(rank: int, world_size: int, dataset: Path, output: Path) -> list[int]:
    """Rank 1's clock runs 25 s a step (a minute is up at the log step 4), rank 0's 1 s a step (never)."""
    settings = {
        "train.max_steps": 6,
        "checkpoint.every_steps": 0,
        "checkpoint.every_minutes": 1,
        "train.stall_timeout_s": 60,  # ranks that disagreed would block each other: fail instead of hanging
    }
    return train(dataset, output, 25.0 if rank == 1 else 1.0, **settings)


def test_ranks_whose_clocks_disagree_save_the_same_steps(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    assert run_distributed(_train_with_own_clock, 2, tiny_dataset, output) == [[4, 6], [4, 6]]
    path = output / "checkpoints" / "step-00000004"  # the time-triggered save: every rank's part is of its step
    manifest = json.loads((path / "meta.json").read_text())
    assert manifest["step"] == 4 and manifest["world_size"] == 2
    parts = [f"{kind}-{rank:05d}-of-00002.pt" for kind in ("centres", "rank") for rank in (0, 1)]
    assert sorted(manifest["files"]) == sorted(["trainer.pt", *parts])
    assert torch.load(path / "trainer.pt", weights_only=True)["progress"]["step"] == 4
    for rank in (0, 1):
        shard = torch.load(path / f"centres-{rank:05d}-of-00002.pt", weights_only=True)
        assert shard["state"]["_extra_state"]["step_count"] == 4, rank


def test_every_minutes_domain(capsys):
    assert load_config(None, {"checkpoint.every_minutes": "0"}).checkpoint.every_minutes == 0
    assert load_config(None, {"checkpoint.every_minutes": "2.5"}).checkpoint.every_minutes == 2.5
    with pytest.raises(ConfigError, match=r"checkpoint\.every_minutes"):
        load_config(None, {"checkpoint.every_minutes": "-1"})
    assert main(["--dry-run", "--checkpoint.every_minutes", "-0.5"]) == 2
    assert "checkpoint.every_minutes=-0.5 must be >= 0" in capsys.readouterr().err
