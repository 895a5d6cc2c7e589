"""Checkpoint/resume: bit-identical continuation, and re-sharding to another world size."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
from dist_harness import run_distributed
from training_run import (
    final_state,
    kill_job,
    make_trainer,
    run_training,
    start_job,
    train_args,
    training_command,
    wait_for,
)

from partialfc import CombinedMargin, PartialFC
from partialfc.common.distributed import DistInfo
from partialfc.common.exit_codes import ExitCode
from partialfc.training.checkpoint import Checkpointer, Component

STEPS = 12  # the dataset has 960 images: 30 steps of 2 x 16 per epoch; 12 steps cover part of one


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_resume_is_bit_identical(tiny_dataset, tmp_path, backend):
    common = (
        "--train.max_steps",
        str(STEPS),
        "--checkpoint.every_steps",
        str(STEPS // 2),
        "--eval.verify.every_steps",
        "0",
        "--data.backend",
        backend,
        "--loss.sample_rate",
        "0.5",
    )
    straight = tmp_path / "straight"
    run_training(2, train_args(tiny_dataset, straight, *common))

    resumed = tmp_path / "resumed"
    halfway = straight / "checkpoints" / f"step-{STEPS // 2:08d}"
    shutil.copytree(halfway, resumed / "checkpoints" / halfway.name)
    result = run_training(2, train_args(tiny_dataset, resumed, *common))
    assert f"resumed from {resumed / 'checkpoints' / halfway.name} at step {STEPS // 2}" in result.stdout

    expected, actual = final_state(straight), final_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def reshard_and_score(rank: int, world_size: int, checkpoint, embeddings, labels) -> dict:
    """Load the checkpoint at this world size; centres, momentum and the loss of a fixed batch."""
    info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
    pfc = PartialFC(128, 120, 1.0, CombinedMargin(s=32.0, m2=0.3))
    Checkpointer(checkpoint.parent, info, 1, {"centres": Component(pfc, "sharded")}).load(checkpoint)
    local = slice(rank * len(labels) // world_size, (rank + 1) * len(labels) // world_size)
    with torch.no_grad():
        loss = pfc(embeddings[local], labels[local])
    return {
        "weight": pfc.weight.clone(),
        "momentum": pfc.optim_momentum.clone(),
        "loss": loss,
        "step_count": pfc.step_count,
    }


@pytest.fixture(scope="module")
def four_steps_on_two_ranks(tiny_dataset, tmp_path_factory):
    """One 2-rank run of 4 steps (PyTorch loader, no verification); tests read it or resume a copy of it."""
    output = tmp_path_factory.mktemp("w2") / "run"
    run_training(
        2,
        train_args(
            tiny_dataset, output, "--train.max_steps", "4", "--eval.verify.every_steps", "0", "--data.backend", "torch"
        ),
    )
    return output


def test_reshard_to_other_world_sizes(four_steps_on_two_ranks):
    checkpoint = four_steps_on_two_ranks / "checkpoints" / "step-00000004"
    saved = [torch.load(checkpoint / f"centres-{r:05d}-of-00002.pt", weights_only=True)["state"] for r in range(2)]
    saved_weight = torch.cat([s["weight"] for s in saved])
    saved_momentum = torch.cat([s["optim_momentum"] for s in saved])
    generator = torch.Generator().manual_seed(0)
    embeddings, labels = torch.randn(12, 128, generator=generator), torch.randint(0, 120, (12,), generator=generator)

    losses = []
    for world_size in (1, 2, 3):
        ranks = run_distributed(reshard_and_score, world_size, checkpoint, embeddings, labels)
        assert torch.equal(torch.cat([r["weight"] for r in ranks]), saved_weight), world_size
        assert torch.equal(torch.cat([r["momentum"] for r in ranks]), saved_momentum), world_size
        assert all(r["step_count"] == 4 for r in ranks)
        losses.append(ranks[0]["loss"])
    assert max(abs(float(loss - losses[1])) for loss in losses) <= 1e-6 * float(losses[1])


@pytest.mark.parametrize("world_size", [1, 3])
def test_trainer_resumes_on_another_world_size(tiny_dataset, four_steps_on_two_ranks, tmp_path, world_size):
    output = tmp_path / "run"
    shutil.copytree(four_steps_on_two_ranks, output)
    result = run_training(
        world_size,
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            "6",
            "--eval.verify.every_steps",
            "0",
            "--data.backend",
            "torch",
            "--checkpoint.allow_changes",
            "train.max_steps",
        ),
    )
    assert f"world size changed (2 -> {world_size})" in result.stdout
    assert "resumed from" in result.stdout and "step 6/6" in result.stdout
    assert json.loads((output / "summary.json").read_text())["config_changes"] == [
        {"field": "train.max_steps", "checkpoint": 4, "job": 6, "step": 4}
    ]


def test_sigterm_saves_a_checkpoint_and_resume_continues(tiny_dataset, tmp_path):
    """Pre-emption: SIGTERM to torchrun reaches every rank (and its decoder processes); the ranks
    agree at the next log step, save, and exit 143; --checkpoint.resume auto continues from there."""
    output = tmp_path / "run"
    args = train_args(
        tiny_dataset,
        output,
        "--train.max_steps",
        "100000",
        "--checkpoint.every_steps",
        "0",
        "--eval.verify.every_steps",
        "0",
        "--data.backend",
        "torch",
        "--data.num_workers",
        "1",
    )
    log = output / "train.log"
    job = start_job(training_command(2, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.is_file() and " step 6/" in log.read_text(), time.monotonic() + 300, "step 6", job)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
    finally:
        kill_job(job)
    assert job.returncode != 0  # the job did not finish
    text = log.read_text()
    assert "SIGTERM: stopped at step" in text, text[-2000:]
    stopped = int(text.split("SIGTERM: stopped at step ")[1].split()[0])
    assert stopped % 2 == 0 and stopped >= 6  # at a log step
    assert json.loads((output / "summary.json").read_text())["status"] == "preempted"
    assert (output / "checkpoints" / f"step-{stopped:08d}" / "meta.json").is_file()

    result = run_training(
        2,
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            str(stopped + 2),
            "--eval.verify.every_steps",
            "0",
            "--data.backend",
            "torch",
            "--checkpoint.allow_changes",
            "train.max_steps",
        ),
    )
    assert f"resumed from {output / 'checkpoints' / f'step-{stopped:08d}'} at step {stopped}" in result.stdout
    assert json.loads((output / "summary.json").read_text())["status"] == "finished"


def test_a_reshard_restarts_the_saved_epoch(tiny_dataset, tmp_path):
    """The data epoch travels in the shared component ``epoch``: a job on another world size, which
    cannot use the per-rank loader positions, restarts the epoch the checkpoint was in (not epoch 0)."""
    settings = {"data.batch_size": 64, "train.max_steps": 20, "checkpoint.every_steps": 17}  # 15 steps per epoch
    first = make_trainer(tiny_dataset, tmp_path / "w1", **settings)
    assert first.fit() == ExitCode.FINISHED
    checkpoint = tmp_path / "w1" / "checkpoints" / "step-00000017"
    assert torch.load(checkpoint / "trainer.pt", weights_only=True)["epoch"] == {"epoch": 1}
    output = tmp_path / "w2"
    shutil.copytree(checkpoint, output / "checkpoints" / checkpoint.name)
    result = run_training(
        2,
        train_args(
            tiny_dataset,
            output,
            *(item for key, value in settings.items() for item in (f"--{key}", str(value))),
            "--data.backend",
            "torch",
            "--eval.verify.every_steps",
            "0",
        ),
    )
    assert "world size changed (1 -> 2): centres re-sharded; the data loader restarts epoch 1" in result.stdout
    assert "step 19/19 epoch 1" in result.stdout
