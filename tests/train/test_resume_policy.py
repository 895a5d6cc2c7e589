"""A resume continues the checkpoint's run: a change of what the run means is refused naming each
field unless allowed (then logged and recorded), and a finished run started again trains nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from training_run import make_trainer, run_training, train_args

from partialfc.common.exit_codes import ExitCode
from partialfc.config import ConfigError, load_config, to_dict
from partialfc.training.resume import ConfigChange, check_changes, meaning_changes

FIRST = {"train.max_steps": 3, "checkpoint.every_steps": 3}


def test_meaning_changes_are_the_run_defining_fields_only():
    saved = {
        "model": {"backbone": "tiny", "embedding_size": 128},
        "loss": {"family": "combined", "s": 64.0, "combined": {"m2": 0.5}, "adaface": {"m": 0.4}, "bf16_gemm": False},
        "train": {"log_every": 2, "max_steps": 4},
        "schedule": {"decay": "poly"},
        "eval": {"every_steps": 10},
    }
    ours = {
        "model": {"backbone": "tiny", "embedding_size": 128},
        "loss": {"family": "adaface", "s": 64.0, "combined": {"m2": 0.5}, "adaface": {"m": 0.3}, "bf16_gemm": True},
        "train": {"log_every": 50, "max_steps": 4},
        "schedule": {"decay": "cosine"},
        "eval": {"every_steps": 0},
    }
    assert meaning_changes(saved, ours) == [
        ConfigChange("loss.adaface.m", 0.4, 0.3),
        ConfigChange("loss.family", "combined", "adaface"),
        ConfigChange("schedule.decay", "poly", "cosine"),
    ]
    with pytest.raises(
        ConfigError,
        match=r"loss.adaface.m \(checkpoint 0.4, this job 0.3\); loss.family \(checkpoint "
        r"'combined', this job 'adaface'\)\. .*--checkpoint.allow_changes "
        r"loss.adaface.m,loss.family$",
    ):
        check_changes(meaning_changes(saved, ours), ["schedule.decay"], "ckpt")  # the allowed one is not named


def test_a_field_added_after_the_checkpoint_reads_as_its_default():
    """A checkpoint written before loss.interclass_filtering_threshold or model.drop_path existed trained with
    their defaults: the same values resume, another value is a change."""
    saved = to_dict(load_config(None, {}))
    del saved["loss"]["interclass_filtering_threshold"], saved["model"]["drop_path"]
    assert meaning_changes(saved, to_dict(load_config(None, {}))) == []
    ours = to_dict(load_config(None, {"loss.interclass_filtering_threshold": 0.4}))
    assert meaning_changes(saved, ours) == [ConfigChange("loss.interclass_filtering_threshold", 0.0, 0.4)]


def test_another_grad_accum_is_refused_unless_allowed():
    """train.grad_accum sets how many micro-batches make one step: under another value the checkpoint's
    step count, LR schedule and sampling stream would stand for other samples. Compared the way the
    trainer compares them: the manifest's config with this job's, both as to_dict gives them."""
    saved, ours = (to_dict(load_config(None, {"train.grad_accum": value})) for value in (1, 2))
    changes = meaning_changes(saved, ours)
    assert changes == [ConfigChange("train.grad_accum", 1, 2)]
    with pytest.raises(
        ConfigError,
        match=r"train.grad_accum \(checkpoint 1, this job 2\)\. .*--checkpoint.allow_changes train.grad_accum$",
    ):
        check_changes(changes, [], "ckpt")
    allowed = load_config(None, {"train.grad_accum": 2, "checkpoint.allow_changes": ["train.grad_accum"]})
    assert check_changes(changes, allowed.checkpoint.allow_changes, "ckpt") == changes


def test_a_checkpoint_config_under_the_old_names_is_read_under_the_new_ones():
    """A run saved before the rename (``loss.head: margin``, flat ``m2``, ``adaface_m``) is the same run."""
    saved = {
        "loss": {
            "head": "margin",
            "s": 64.0,
            "m1": 1.0,
            "m2": 0.5,
            "m3": 0.0,
            "adaface_m": 0.4,
            "curricular_m": 0.5,
            "magface_l_a": 10.0,
            "elastic_kind": "arc",
            "sub_centers": 1,
        }
    }
    ours = {
        "loss": {
            "family": "combined",
            "s": 64.0,
            "combined": {"m1": 1.0, "m2": 0.5, "m3": 0.0},
            "adaface": {"m": 0.4},
            "curricularface": {"m": 0.5},
            "magface": {"l_a": 10.0},
            "elasticface": {"kind": "arc"},
            "softmax": {},
            "sub_centers": 1,
        }
    }
    assert meaning_changes(saved, ours) == []
    assert meaning_changes(saved, {"loss": {**ours["loss"], "combined": {"m1": 1.0, "m2": 0.3, "m3": 0.0}}}) == [
        ConfigChange("loss.combined.m2", 0.5, 0.3)
    ]


def test_another_loss_family_is_refused_naming_the_field(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    assert make_trainer(tiny_dataset, output, **FIRST).fit() == ExitCode.FINISHED
    with pytest.raises(ConfigError, match=r"loss.family \(checkpoint 'combined', this job 'adaface'\)"):
        make_trainer(
            tiny_dataset,
            output,
            **{
                **FIRST,
                "train.max_steps": 6,
                "loss.family": "adaface",
                "checkpoint.allow_changes": ["train.max_steps"],
            },
        ).fit()


def test_an_allowed_change_is_logged_and_recorded(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    assert make_trainer(tiny_dataset, output, **FIRST).fit() == ExitCode.FINISHED
    trainer = make_trainer(
        tiny_dataset,
        output,
        **{
            **FIRST,
            "train.max_steps": 5,
            "loss.combined.m2": 0.25,
            "checkpoint.allow_changes": ["train.max_steps", "loss.combined.m2"],
        },
    )
    assert trainer.fit() == ExitCode.FINISHED and trainer.progress.step == 5
    changes = json.loads((output / "summary.json").read_text())["config_changes"]
    assert changes == [
        {"field": "loss.combined.m2", "checkpoint": 0.3, "job": 0.25, "step": 3},
        {"field": "train.max_steps", "checkpoint": 3, "job": 5, "step": 3},
    ]
    assert (
        "checkpoint.allow_changes: loss.combined.m2 (checkpoint 0.3, this job 0.25) from step 3 on"
        in (output / "train.log").read_text()
    )


def test_allow_changes_names_only_fields_a_resume_refuses():
    from partialfc.config import load_config

    with pytest.raises(ConfigError, match=r"checkpoint\.allow_changes: 'eval\.verify\.every_steps' is not a field"):
        load_config(None, {"checkpoint.allow_changes": "eval.verify.every_steps"})
    with pytest.raises(ConfigError) as typo:
        load_config(None, {"checkpoint.allow_changes": "loss.sample_rat"})
    assert "(did you mean loss.sample_rate?)" in str(typo.value)
    accepted = str(typo.value).split("it accepts: ")[1].split(", ")
    assert {"optim.lr", "optim.name", "train.grad_accum", "loss.combined.m2", "schedule.warmup_epochs"} <= set(accepted)
    assert "eval.batch_size" not in accepted


def test_a_finished_run_started_again_on_another_world_size_trains_nothing(tiny_dataset, tmp_path):
    """2 ranks, epochs-based length (6 steps of 32 images); started again on 1 rank, where the same
    epochs would be 12 steps: the run is finished and stays so."""
    output = tmp_path / "run"
    length = ["--train.epochs", "0.2", "--eval.verify.every_steps", "0", "--data.backend", "torch"]
    run_training(2, train_args(tiny_dataset, output, *length))
    before = json.loads((output / "summary.json").read_text())
    assert (before["status"], before["step"]) == ("finished", 6)
    model = (output / "model.pt").read_bytes()
    result = run_training(None, train_args(tiny_dataset, output, *length))
    assert "finished at step 6 (192 samples, its plan): nothing to train" in result.stdout + result.stderr
    after = json.loads((output / "summary.json").read_text())
    assert (after["status"], after["step"]) == ("finished", 6) and (output / "model.pt").read_bytes() == model
    assert sorted(p.name for p in (output / "checkpoints").iterdir())[-1] == "step-00000006"


def test_another_world_size_keeps_the_runs_plan(tiny_dataset, tmp_path):
    """Stopped after 6 of 12 steps of 32 samples (2 ranks); continued on 1 rank: the remaining 192
    samples take 12 steps of 16, and the LR schedule ends where it would have."""
    output = tmp_path / "run"
    length = [
        "--train.max_steps",
        "12",
        "--checkpoint.every_steps",
        "6",
        "--eval.verify.every_steps",
        "0",
        "--data.backend",
        "torch",
        "--train.log_every",
        "1",
    ]
    run_training(2, train_args(tiny_dataset, output, *length))
    last_lr = float((output / "train.log").read_text().split(" step 12/12 ")[1].split(" lr ")[1].split()[0])
    shutil.rmtree(output / "checkpoints" / "step-00000012")  # as if the job had stopped after step 6
    result = run_training(None, train_args(tiny_dataset, output, *length))
    assert (
        "global batch 32 -> 16 (world size 1): the run's plan stays 12 steps of 32 samples; 192 trained, "
        "12 steps of 16 remain"
    ) in result.stdout
    assert " step 18/18 " in result.stdout and json.loads((output / "summary.json").read_text())["step"] == 18
    final_lr = float(result.stdout.split(" step 18/18 ")[1].split(" lr ")[1].split()[0])
    assert final_lr == pytest.approx(last_lr * 0.25, rel=1e-3)  # poly(2) at 11.5 of 12 vs 11 of 12: (0.5/1)^2


def test_the_operations_guide_lists_every_field_a_resume_refuses_to_change():
    from partialfc.config import MEANING_FIELDS

    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    # A prefix ("schedule.") is named as "schedule.*"; every margin family's as "loss.<family>.*".
    named = {field + "*" if field.endswith(".") else field for field in MEANING_FIELDS}
    named = {"loss.<family>.*" if name.startswith("loss.") and name.endswith(".*") else name for name in named}
    missing = [name for name in sorted(named) if f"`{name}`" not in guide]
    assert not missing, f"docs/operations.md does not name {missing}"
