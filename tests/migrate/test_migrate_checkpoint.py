"""train_v2.py's checkpoint_gpu_{rank}.pt files of W ranks become a run directory that the real Trainer
resumes on another world size: every centre equal by class id, the backbone equal, momentum carried, the step
and epoch carried, the LR where their scheduler stood, and training goes on (insightface
recognition/arcface_torch/train_v2.py save/resume, partial_fc_v2.py's class split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from dist_harness import run_distributed
from migrate.arcface_run import ArcfaceRun, their_split, write_arcface_run
from training_run import REPO, make_trainer

from partialfc.common.exit_codes import ExitCode
from partialfc.config import load_config, to_dict
from partialfc.data.synth import generate_synthetic_dataset
from partialfc.migrate.__main__ import main
from partialfc.models import create_model

CLASSES, IMAGES_PER_CLASS, BATCH, DIM = 61, 2, 16, 128  # 61 classes split unevenly over 2 and 3 ranks
EPOCHS = 3
# The migrated config of their run on the quickstart's tiny model: what the config command writes for such a
# run (train_v2.py's power-1 decay, no warm-up here), with make_trainer's loader settings written out.
SETTINGS: dict[str, Any] = {
    "data.batch_size": BATCH,
    "data.backend": "torch",
    "data.num_workers": 0,
    "data.val_targets": [],
    "model.embedding_size": DIM,
    "train.epochs": EPOCHS,
    "schedule.warmup_epochs": 0.0,
    "schedule.power": 1.0,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """61 identities x 2 images: 122 images, 3 steps of 2 x 16 an epoch (their sampler: ceil(122 / 2) per rank), 2 of
    3 x 16."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("migrate") / "data", CLASSES, IMAGES_PER_CLASS, seed=5)


def steps_per_epoch(world_size: int, grad_accum: int = 1) -> int:
    """Their batches per epoch (DistributedSampler's ceil(N / W) per rank, drop_last) in optimizer steps."""
    return -(-CLASSES * IMAGES_PER_CLASS // world_size) // BATCH // grad_accum


def their_run(folder: Path, world_size: int, epoch: int, **options: Any) -> ArcfaceRun:
    """Their files after ``epoch`` epochs of a 3-epoch run at ``world_size``, from a tiny model of ours."""
    torch.manual_seed(3)
    batches = steps_per_epoch(world_size)
    return write_arcface_run(
        folder,
        create_model("tiny", embedding_size=DIM),
        world_size=world_size,
        num_classes=CLASSES,
        dim=DIM,
        epoch=epoch,
        global_step=epoch * batches,
        total_iters=EPOCHS * batches,
        **options,
    )


def run_config(dataset: Path, path: Path, **settings: Any) -> Path:
    """The run's YAML: the quickstart config with SETTINGS (and ``settings``), as the config command's output."""
    config = load_config(REPO / "configs" / "quickstart.yaml", {"data.path": str(dataset), **SETTINGS, **settings})
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def migrate(arcface: Path, config: Path, run_dir: Path) -> int:
    return main(["checkpoint", str(arcface), "--config", str(config), "--out", str(run_dir)])


def assert_backbone_and_momentum_equal(trainer, run: ArcfaceRun) -> None:
    state = trainer.backbone.state_dict()
    assert state.keys() == run.backbone.keys()
    for name, value in run.backbone.items():
        assert torch.equal(state[name], value), name
    optimizer_state = trainer.optimizer.backbone_optimizer.state
    for name, param in trainer.backbone.named_parameters():
        for key, value in run.backbone_state[name].items():
            assert torch.equal(optimizer_state[param][key].float(), value.float()), f"{name} {key}"


def test_a_two_rank_run_resumes_at_world_size_1_and_trains_on(dataset, tmp_path, capsys):
    run = their_run(tmp_path / "arcface", world_size=2, epoch=2)
    run_dir = tmp_path / "run"
    assert migrate(tmp_path / "arcface", run_config(dataset, tmp_path / "run.yaml"), run_dir) == 0
    summary = capsys.readouterr().out
    assert "2 rank files, 61 classes, step 6 of 9 (their global_step 6), next epoch 2" in summary

    trainer = make_trainer(dataset, run_dir, **SETTINGS)
    assert trainer._resume()
    assert torch.equal(trainer.pfc.weight, run.centres)  # world size 1: row c is class c
    assert torch.equal(trainer.pfc.optim_momentum, run.centre_state["momentum_buffer"])
    assert_backbone_and_momentum_equal(trainer, run)
    assert trainer.progress.step == trainer.pfc.step_count == run.global_step == 6
    assert trainer.loader.epoch == 2 and trainer.loader.position == 0
    assert trainer.plan.learning_rate(trainer.progress.position) == pytest.approx(run.last_lr, rel=1e-12)

    assert trainer.fit() == ExitCode.FINISHED
    # Their 3 remaining steps of 32 images, at 16 a step here: the run ends where theirs would have.
    assert trainer.progress.step == 6 + 6 and trainer.progress.finished
    assert not torch.equal(trainer.pfc.weight, run.centres)
    assert "resumed from" in (run_dir / "train.log").read_text()


def resume_at(rank: int, world_size: int, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """A rank of a job that resumes the migrated run: its class range and state after loading, then its end."""
    trainer = make_trainer(dataset, run_dir, **SETTINGS)
    assert trainer._resume()
    loaded = {
        "class_start": trainer.pfc.class_start,
        "weight": trainer.pfc.weight.clone(),
        "momentum": trainer.pfc.optim_momentum.clone(),
        "backbone": {name: value.clone() for name, value in trainer.backbone.state_dict().items()},
        "step": (trainer.progress.step, trainer.pfc.step_count, trainer.loader.epoch),
        "lr": trainer.plan.learning_rate(trainer.progress.position),
    }
    assert trainer.fit() == ExitCode.FINISHED
    return {**loaded, "end": trainer.progress.step}


def test_a_three_rank_run_resumes_on_two_ranks_every_centre_by_class_id(dataset, tmp_path):
    run = their_run(tmp_path / "arcface", world_size=3, epoch=1)
    assert [rows for _, rows in their_split(CLASSES, 3)] == [21, 20, 20]
    run_dir = tmp_path / "run"
    assert migrate(tmp_path / "arcface", run_config(dataset, tmp_path / "run.yaml"), run_dir) == 0
    ranks = run_distributed(resume_at, 2, dataset, run_dir)
    for rank in ranks:
        classes = slice(rank["class_start"], rank["class_start"] + len(rank["weight"]))
        assert torch.equal(rank["weight"], run.centres[classes])
        assert torch.equal(rank["momentum"], run.centre_state["momentum_buffer"][classes])
        for name, value in run.backbone.items():
            assert torch.equal(rank["backbone"][name], value), name
        assert rank["step"] == (2, 2, 1)
        assert rank["lr"] == pytest.approx(run.last_lr, rel=1e-12)
    assert sum(len(rank["weight"]) for rank in ranks) == CLASSES
    assert [rank["end"] for rank in ranks] == [2 + 6, 2 + 6]  # their 4 steps of 48 images, 32 a step here


def test_adamw_moments_and_step_counts_are_carried(dataset, tmp_path):
    adamw = {"optim.name": "adamw", "optim.lr": 0.001, "optim.weight_decay": 0.1}
    run = their_run(tmp_path / "arcface", world_size=2, epoch=1, optimizer="adamw", lr=0.001, weight_decay=0.1)
    run_dir = tmp_path / "run"
    assert migrate(tmp_path / "arcface", run_config(dataset, tmp_path / "run.yaml", **adamw), run_dir) == 0
    trainer = make_trainer(dataset, run_dir, **SETTINGS, **adamw)
    assert trainer._resume()
    assert_backbone_and_momentum_equal(trainer, run)
    assert torch.equal(trainer.pfc.optim_exp_avg, run.centre_state["exp_avg"])
    assert torch.equal(trainer.pfc.optim_exp_avg_sq, run.centre_state["exp_avg_sq"])
    assert torch.equal(trainer.pfc.optim_row_step, torch.full((CLASSES,), float(run.global_step)))
    assert trainer.progress.step == 3


def test_gradient_accumulation_counts_their_batches_as_optimizer_steps(dataset, tmp_path):
    """Their global_step and scheduler count batches; a step here takes gradient_acc of them."""
    their_run(tmp_path / "arcface", world_size=2, epoch=2)  # 6 of 9 batches
    run_dir = tmp_path / "run"
    assert (
        migrate(tmp_path / "arcface", run_config(dataset, tmp_path / "run.yaml", **{"train.grad_accum": 2}), run_dir)
        == 0
    )
    trainer = make_trainer(dataset, run_dir, **SETTINGS, **{"train.grad_accum": 2})
    assert trainer._resume()
    progress = trainer.progress
    assert (progress.step, progress.plan_steps, progress.plan_batch) == (3, 5, 2 * BATCH * 2)
    assert trainer.pfc.step_count == 3


def test_a_weight_average_starts_from_their_backbone(dataset, tmp_path):
    run = their_run(tmp_path / "arcface", world_size=2, epoch=1)
    ema = {"train.ema_decay": 0.99}
    run_dir = tmp_path / "run"
    assert migrate(tmp_path / "arcface", run_config(dataset, tmp_path / "run.yaml", **ema), run_dir) == 0
    trainer = make_trainer(dataset, run_dir, **SETTINGS, **ema)
    assert trainer._resume()
    assert trainer.ema is not None
    for name, value in trainer.ema.module.state_dict().items():
        assert torch.equal(value, run.backbone[name]), name


def drop_rank_1(arcface: Path) -> None:
    (arcface / "checkpoint_gpu_1.pt").unlink()


def drop_all(arcface: Path) -> None:
    for path in arcface.glob("*.pt"):
        path.unlink()


def other_save(arcface: Path) -> None:
    saved = torch.load(arcface / "checkpoint_gpu_1.pt", weights_only=True)
    torch.save({**saved, "global_step": 7}, arcface / "checkpoint_gpu_1.pt")


def fewer_centres(arcface: Path) -> None:
    saved = torch.load(arcface / "checkpoint_gpu_0.pt", weights_only=True)
    saved["state_dict_softmax_fc"]["weight"] = saved["state_dict_softmax_fc"]["weight"][:-1]
    torch.save(saved, arcface / "checkpoint_gpu_0.pt")


def no_scheduler(arcface: Path) -> None:
    saved = torch.load(arcface / "checkpoint_gpu_0.pt", weights_only=True)
    del saved["state_lr_scheduler"]
    torch.save(saved, arcface / "checkpoint_gpu_0.pt")


def not_a_checkpoint(arcface: Path) -> None:
    (arcface / "checkpoint_gpu_0.pt").write_bytes(b"not a zip")


@pytest.mark.parametrize(
    "spoil, settings, message",
    [
        (drop_rank_1, {}, "arcface: checkpoint_gpu_1.pt is missing; train_v2.py writes one file per rank, ranks 0..2"),
        (drop_all, {}, "arcface: no checkpoint_gpu_*.pt"),
        (other_save, {}, "checkpoint_gpu_1.pt: global_step 7, checkpoint_gpu_0.pt has 2 (files of different saves)"),
        (fewer_centres, {}, "checkpoint_gpu_0.pt: state_dict_softmax_fc weight has shape (20, 128); partial_fc_v2.py"),
        (no_scheduler, {}, "checkpoint_gpu_0.pt: no 'state_lr_scheduler'"),
        (not_a_checkpoint, {}, "checkpoint_gpu_0.pt: cannot read"),
        (None, {"model.backbone": "r18"}, "state_dict_backbone does not load into model.backbone=r18"),
        (None, {"optim.name": "adamw"}, "their optimizer is sgd, this config's optim.name is adamw"),
        (None, {"loss.sub_centers": 2}, "loss.sub_centers=2: train_v2.py's PartialFC_V2 has one centre per class"),
        (None, {"data.num_classes": 60}, "data.num_classes=60 but dataset"),
    ],
)
def test_what_cannot_be_carried_exits_2_naming_the_file(dataset, tmp_path, capsys, spoil, settings, message):
    their_run(tmp_path / "arcface", world_size=3, epoch=1)
    if spoil:
        spoil(tmp_path / "arcface")
    assert migrate(tmp_path / "arcface", run_config(dataset, tmp_path / "run.yaml", **settings), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_directory_with_checkpoints_is_not_written_over(dataset, tmp_path, capsys):
    their_run(tmp_path / "arcface", world_size=2, epoch=1)
    config = run_config(dataset, tmp_path / "run.yaml")
    assert migrate(tmp_path / "arcface", config, tmp_path / "run") == 0
    assert migrate(tmp_path / "arcface", config, tmp_path / "run") == 2
    assert f"{tmp_path / 'run'}: already holds checkpoints" in capsys.readouterr().err
