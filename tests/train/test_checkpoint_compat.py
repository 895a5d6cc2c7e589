"""A checkpoint written before the shard contract (tests/fixtures/checkpoint_3f77083, manifest format 1)
still resumes: centres bit-equal to what was saved at any world size, and training continues."""

from __future__ import annotations

import shutil

import torch
from dist_harness import run_distributed
from training_run import REPO, make_trainer, run_training, train_args

from partialfc import CombinedMargin, LazySGD, PartialFC
from partialfc.common.distributed import DistInfo
from partialfc.common.exit_codes import ExitCode
from partialfc.training.checkpoint import Checkpointer, Component, read_manifest

FIXTURE = REPO / "tests" / "fixtures" / "checkpoint_3f77083" / "step-00000002"
CONTINUED = FIXTURE.parent / "step-00000004-centres"  # the same run's centres at step 4
# The settings the fixture was trained with (tests/fixtures/README.md) on top of the quickstart config.
SETTINGS = {
    "model.embedding_size": 16,
    "train.max_steps": 4,
    "checkpoint.every_steps": 2,
    "data.backend": "torch",
    "eval.every_steps": 0,
}


def load_centres(rank: int, world_size: int) -> dict:
    info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
    pfc = PartialFC(16, 120, 0.5, CombinedMargin(s=32.0, m2=0.3), optimizer=LazySGD())
    Checkpointer(
        FIXTURE.parent,
        info,
        1,
        {"centres": Component(pfc, "sharded")},
        step_counters={"PartialFC step_count": lambda: pfc.step_count},
    ).load(FIXTURE)
    return {"weight": pfc.weight.clone(), "momentum": pfc.optim_momentum.clone()}


def test_the_old_checkpoint_loads_bit_equal_at_any_world_size():
    assert read_manifest(FIXTURE)["format"] == 1  # what makes it the old format
    saved = [torch.load(FIXTURE / f"centres-{r:05d}-of-00002.pt", weights_only=True)["state"] for r in range(2)]
    for world_size in (1, 2, 3):
        ranks = run_distributed(load_centres, world_size)
        assert torch.equal(torch.cat([r["weight"] for r in ranks]), torch.cat([s["weight"] for s in saved]))
        assert torch.equal(torch.cat([r["momentum"] for r in ranks]), torch.cat([s["optim_momentum"] for s in saved]))


def test_the_trainer_resumes_the_old_checkpoint_on_another_world_size(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(FIXTURE, output / "checkpoints" / FIXTURE.name)
    trainer = make_trainer(tiny_dataset, output, **SETTINGS)
    assert trainer.fit() == ExitCode.FINISHED
    log = (output / "train.log").read_text()
    assert f"resumed from {output / 'checkpoints' / FIXTURE.name} at step 2" in log
    assert "world size changed (2 -> 1)" in log and "the data loader restarts epoch 0" in log
    assert trainer.progress.step == trainer.pfc.step_count == 6  # the plan's 64 remaining samples at batch 16
    assert read_manifest(output / "checkpoints" / "step-00000006")["format"] == 2


def test_the_trainer_resumes_the_old_checkpoint_at_its_world_size(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(FIXTURE, output / "checkpoints" / FIXTURE.name)
    args = [item for key, value in SETTINGS.items() for item in (f"--{key}", str(value))]
    result = run_training(2, train_args(tiny_dataset, output, *args))
    assert f"resumed from {output / 'checkpoints' / FIXTURE.name} at step 2" in result.stdout
    assert "world size changed" not in result.stdout and "step 4/4" in result.stdout
    # The old release's own run on to step 4, made on another machine. The loaded state is bit-equal on any
    # machine (test above), but two steps of float math are bit-equal only on the CPU kind that made the
    # fixture: torch's CPU kernels differ by instruction set (an AVX2-only EPYC here gives 2.7e-6 on the
    # weights, 4e-5 on the momentum). A lost or misplaced row would be off by the row's whole size.
    for rank in range(2):
        name = f"centres-{rank:05d}-of-00002.pt"
        new = torch.load(output / "checkpoints" / "step-00000004" / name, weights_only=True)["state"]
        old = torch.load(CONTINUED / name, weights_only=True)["state"]
        for key in ("weight", "optim_momentum"):
            torch.testing.assert_close(new[key], old[key], rtol=1e-3, atol=1e-4, msg=f"rank {rank} {key}")
        assert new["_extra_state"]["step_count"] == old["_extra_state"]["step_count"] == 4
