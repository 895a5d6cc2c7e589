"""Faults a long run meets: divergence, corrupt or mismatched checkpoints, a full disk (docs/operations.md)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest
import torch
from training_run import fill_disk, make_trainer, run_training, train_args

from partialfc.common.exit_codes import ExitCode
from partialfc.config import ConfigError
from partialfc.data import RecordDataset
from partialfc.training.checkpoint import CheckpointError

GOOD = {"train.max_steps": 6, "checkpoint.every_steps": 3, "checkpoint.keep": 2}
LONGER = {"train.max_steps": 8, "checkpoint.allow_changes": ["train.max_steps"]}  # the good run, extended


def summary(output) -> dict:
    return json.loads((output / "summary.json").read_text())


@pytest.fixture(scope="module")
def good_run(tiny_dataset, tmp_path_factory):
    """6 good steps with checkpoints at 3 and 6 (kept as a template; tests work on copies)."""
    output = tmp_path_factory.mktemp("good") / "run"
    assert make_trainer(tiny_dataset, output, **GOOD).fit() == ExitCode.FINISHED
    return output


def copy_run(good_run, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(good_run, output)
    return output


def test_divergence_stops_and_keeps_the_good_checkpoints_and_model(tiny_dataset, good_run, tmp_path):
    output = copy_run(good_run, tmp_path)
    model_before = (output / "model.pt").read_bytes()
    trainer = make_trainer(
        tiny_dataset,
        output,
        **{
            **GOOD,
            "train.max_steps": 30,
            "optim.lr": 1e12,
            "checkpoint.allow_changes": ["train.max_steps", "optim.lr", "schedule.warmup_epochs"],
            "schedule.warmup_epochs": 0.0,
        },
    )
    assert trainer.fit() == ExitCode.DIVERGED
    state = summary(output)
    assert state["status"] == "diverged" and "consecutive non-finite steps" in state["error"]
    first_bad = state["diverged_at_step"]
    assert 7 <= first_bad <= 30
    # Every checkpoint on disk holds finite weights, the good ones were not rotated away, model.pt is untouched.
    names = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert "step-00000006" in names, names
    for checkpoint in (output / "checkpoints").iterdir():
        for part in checkpoint.glob("*.pt"):
            for value in torch.load(part, weights_only=True).get("state", {}).values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    assert torch.isfinite(value).all(), part
    assert (output / "model.pt").read_bytes() == model_before
    # Dropped steps leave the weights finite.
    assert all(torch.isfinite(p).all() for p in trainer.backbone.parameters())
    assert torch.isfinite(trainer.pfc.weight).all()
    assert "diverged: " in (output / "train.log").read_text()


def test_a_truncated_file_in_the_newest_checkpoint_falls_back_to_the_previous(tiny_dataset, good_run, tmp_path):
    output = copy_run(good_run, tmp_path)
    broken = output / "checkpoints" / "step-00000006" / "centres-00000-of-00001.pt"
    os.truncate(broken, broken.stat().st_size // 2)
    trainer = make_trainer(tiny_dataset, output, **{**GOOD, **LONGER})
    assert trainer.fit() == ExitCode.FINISHED
    log = (output / "train.log").read_text()
    assert f"resume: skipping {broken.parent}: {broken}: " in log and "(truncated or replaced)" in log
    assert f"resumed from {output / 'checkpoints' / 'step-00000003'} at step 3" in log


def test_when_no_checkpoint_verifies_the_error_names_them_and_the_summary_keeps_its_history(
    tiny_dataset, good_run, tmp_path
):
    output = copy_run(good_run, tmp_path)
    before = summary(output)
    for checkpoint in (output / "checkpoints").iterdir():
        data = bytearray((checkpoint / "trainer.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different content
        (checkpoint / "trainer.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="no loadable checkpoint") as raised:
        make_trainer(tiny_dataset, output, **{**GOOD, **LONGER}).fit()
    assert "step-00000003/trainer.pt: SHA-256 differs" in str(raised.value)
    after = summary(output)
    assert after["status"] == "failed" and after["error"].startswith("CheckpointError: no loadable checkpoint")
    for kept in ("best_evaluation", "checkpoint", "model", "step"):
        assert after[kept] == before[kept], kept
    assert after["starts"] == 2


def test_another_embedding_size_names_the_checkpoint_tensor_and_field(tiny_dataset, good_run, tmp_path):
    output = copy_run(good_run, tmp_path)
    with pytest.raises(ConfigError, match=r"model.embedding_size \(checkpoint 128, this job 64\)"):
        make_trainer(tiny_dataset, output, **{**GOOD, "model.embedding_size": 64}).fit()
    with pytest.raises(CheckpointError) as raised:  # allowed, the weights still cannot be loaded: named
        make_trainer(
            tiny_dataset,
            output,
            **{**GOOD, "model.embedding_size": 64, "checkpoint.allow_changes": ["model.embedding_size"]},
        ).fit()
    message = str(raised.value)
    assert str(output / "checkpoints" / "step-00000006") in message
    assert "tensor 'model." in message and "model.embedding_size (checkpoint 128, this job 64)" in message


def test_a_full_disk_at_save_names_the_path(tiny_dataset, tmp_path, monkeypatch):
    output = tmp_path / "run"
    trainer = make_trainer(tiny_dataset, output, **GOOD)

    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("partialfc.training.checkpoint.torch.save", no_space)
    with pytest.raises(CheckpointError, match="No space left on device") as raised:
        trainer.fit()
    assert str(output / "checkpoints" / "step-00000003.partial") in str(raised.value)
    state = summary(output)
    assert state["status"] == "failed" and "step-00000003.partial" in state["error"]


def test_a_bad_record_under_dali_is_named_by_every_rank(tiny_dataset, tmp_path):
    """A non-JPEG record: the rank that reads it names shard and key; its peer, whose collective
    breaks, reports the same cause instead of a bare connection error."""
    dataset = tmp_path / "data"
    shutil.copytree(tiny_dataset, dataset)
    with RecordDataset(dataset) as ds:
        image = 5
        shard = ds.shards[int(ds.image_shard[image])].rec_path
        offset, key = int(ds.image_offset[image]), int(ds.image_key[image])
    data = bytearray(shard.read_bytes())
    soi = data.index(b"\xff\xd8\xff", offset + 8)  # the JPEG inside the record: same length, no longer a JPEG
    data[soi : soi + 3] = b"BAD"
    shard.write_bytes(bytes(data))
    output = tmp_path / "run"
    result = run_training(
        2,
        train_args(
            dataset,
            output,
            "--train.max_steps",
            "30",
            "--eval.verify.every_steps",
            "0",
            "--checkpoint.every_steps",
            "0",
            "--data.backend",
            "dali",
        ),
        check=False,
    )
    assert result.returncode != 0
    cause = f"{shard.name}: record key {key} at offset {offset}"
    state = summary(output)
    assert state["status"] == "failed" and cause in state["error"] and "not a JPEG" in state["error"], state["error"]
    console = result.stdout + result.stderr
    assert console.count(cause) >= 2, console[-4000:]  # the failing rank and its peer
    assert "PeerFailure: rank " in console, console[-4000:]


def test_a_component_the_checkpoint_lacks_is_named(tiny_dataset, good_run, tmp_path):
    output = copy_run(good_run, tmp_path)
    with pytest.raises(CheckpointError, match=r"trainer.pt: has no 'ema' component"):
        make_trainer(tiny_dataset, output, **{**GOOD, "train.ema_decay": 0.9}).fit()


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem that fills up: a 16 MiB tmpfs (root only; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a tmpfs mount, which needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


def checkpoint_bytes(checkpoint) -> int:
    return sum(entry["bytes"] for entry in json.loads((checkpoint / "meta.json").read_text())["files"].values())


def test_no_space_mid_save_keeps_the_good_checkpoints_and_names_the_free_space(tiny_dataset, good_run, small_disk):
    output = small_disk / "run"
    shutil.copytree(good_run, output)
    good = output / "checkpoints" / "step-00000006"
    trainer = make_trainer(tiny_dataset, output, **{**GOOD, **LONGER})
    trainer._resume()
    fill_disk(small_disk / "filler", leave=checkpoint_bytes(good) // 2)
    with pytest.raises(CheckpointError, match="No space left on device") as raised:
        trainer.checkpointer.save(8)
    assert f"GiB free on {output / 'checkpoints' / 'step-00000008.partial'}" in str(raised.value), raised.value
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert trainer.checkpointer.newest_loadable() == good  # every file verifies against its manifest


def test_a_restart_on_a_full_disk_fails_at_once_instead_of_training_to_the_next_save(
    tiny_dataset, good_run, small_disk
):
    """A persistent full disk ends each restart before any step: the restarts are spent in seconds and the
    container's exit, 1, is counted by the failure policies, instead of each restart retraining to the save."""
    output = small_disk / "run"
    shutil.copytree(good_run, output)
    fill_disk(small_disk / "filler", leave=checkpoint_bytes(output / "checkpoints" / "step-00000006") // 2)
    trainer = make_trainer(tiny_dataset, output, **{**GOOD, **LONGER})
    with pytest.raises(CheckpointError, match=r"no room for the next checkpoint: .* GiB free on .* takes"):
        trainer.fit()
    assert trainer.progress.step == 6, "trained before failing"
    assert "no room for the next checkpoint" in summary(output)["error"]
