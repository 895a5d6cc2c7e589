"""A run checkpointed on the last step of an epoch resumes into the next epoch, exactly, on any world size.

At that step the loader has handed over its epoch's last batch but has not yet moved on: the
checkpoint records epoch E with every batch of it consumed. A resume must read that as "the start
of epoch E + 1"; replaying epoch E (or skipping into E + 1) trains other batches than the
straight run, and the two runs part ways without an error, only a curve that is not the one it
claims to be. Mid-epoch checkpoints (tests/train/test_trainer_inprocess.py) never meet this edge,
so this run is sized to land a checkpoint on it: 64 images at 16 per step make 4 steps an epoch.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from training_run import final_state, make_trainer

from partialfc.common.exit_codes import ExitCode
from partialfc.data.synth import generate_synthetic_dataset

STEPS_PER_EPOCH = 4
SETTINGS = {
    "data.val_targets": [],
    "train.max_steps": STEPS_PER_EPOCH + 2,
    "checkpoint.every_steps": STEPS_PER_EPOCH,
}


@pytest.fixture(scope="module")
def four_step_epochs(tmp_path_factory):
    """16 identities x 4 images: 4 steps of 16 an epoch at world size 1."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("epochs") / "data", 16, 4, seed=5, workers=1)


def test_a_resume_from_an_epochs_last_step_matches_the_straight_run(four_step_epochs, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = make_trainer(four_step_epochs, straight, **SETTINGS)
    assert first.steps_per_epoch == STEPS_PER_EPOCH
    assert first.fit() == ExitCode.FINISHED
    boundary = straight / "checkpoints" / f"step-{STEPS_PER_EPOCH:08d}"
    loader_state = torch.load(boundary / "rank-00000-of-00001.pt", weights_only=True)["loader"]
    assert (loader_state["epoch"], loader_state["batch"]) == (0, STEPS_PER_EPOCH)  # epoch 0, all of it consumed
    # What a job on another world size reads instead of the per-rank positions: the epoch to train next.
    assert torch.load(boundary / "trainer.pt", weights_only=True)["epoch"] == {"epoch": 1}

    shutil.copytree(boundary, resumed / "checkpoints" / boundary.name)
    second = make_trainer(four_step_epochs, resumed, **SETTINGS)
    assert second.fit() == ExitCode.FINISHED
    log = (resumed / "train.log").read_text()
    assert f"resumed from {resumed / 'checkpoints' / boundary.name} at step {STEPS_PER_EPOCH}" in log

    # Both runs end with the same weights, centres and optimizer state, 2 batches into epoch 1.
    expected, actual = final_state(straight), final_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert (first.loader.epoch, first.loader.position) == (second.loader.epoch, second.loader.position) == (1, 2)
