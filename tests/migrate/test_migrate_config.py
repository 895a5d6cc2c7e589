"""Every key of an arcface_torch config is carried to its field or refused naming it (insightface
recognition/arcface_torch/configs/base.py and train_v2.py), and configs written like theirs convert to
YAML files that load and pass the training command's --dry-run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from training_run import REPO

from partialfc.common.exit_codes import ExitCode
from partialfc.config import leaf_fields, load_config
from partialfc.data.synth import generate_synthetic_dataset
from partialfc.migrate.__main__ import build_parser, main
from partialfc.train import main as train_main

CONFIGS = Path(__file__).parent / "arcface_configs"
HEADER = "from easydict import EasyDict as edict\n\nconfig = edict()\n"
LINE = 4  # the job's one assignment, after HEADER


def fields_of(path: Path) -> dict[str, Any]:
    return {name: value for name, value, _ in leaf_fields(load_config(path))}


def migrate_job(folder: Path, body: str, capsys, base: Path = CONFIGS / "base.py") -> tuple[int, Path, str, str]:
    """Run the config command on a job of ``body`` beside a copy of ``base``: (exit code, YAML, stdout, stderr)."""
    shutil.copy(base, folder / "base.py")
    path, out = folder / "job.py", folder / "job.yaml"
    path.write_text(HEADER + body)
    code = main(["config", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    return code, out, captured.out, captured.err


# (key, value, the fields it sets and their values here, a note it prints); values differ from base.py's.
CARRIED = [
    (
        "margin_list",
        (1.0, 0.0, 0.4),
        {"loss.family": "combined", "loss.combined.m1": 1.0, "loss.combined.m3": 0.4},
        None,
    ),
    ("margin_list", (1.0, 0.3, 0.2), {"loss.combined.m2": 0.3, "loss.combined.m3": 0.2}, None),
    *[
        ("network", name, {"model.backbone": name}, None)
        for name in ("r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large")
    ],
    ("network", "vit_t", {"model.backbone": "vit_t", "model.drop_path": 0.1, "model.mask_ratio": 0.1}, None),
    (
        "network",
        "vit_t_dp005_mask0",
        {"model.backbone": "vit_t", "model.drop_path": 0.05, "model.mask_ratio": 0.0},
        None,
    ),
    ("network", "vit_s", {"model.backbone": "vit_s", "model.drop_path": 0.1, "model.mask_ratio": 0.1}, None),
    (
        "network",
        "vit_s_dp005_mask_0",
        {"model.backbone": "vit_s", "model.drop_path": 0.05, "model.mask_ratio": 0.0},
        None,
    ),
    ("network", "vit_b", {"model.backbone": "vit_b", "model.drop_path": 0.1, "model.mask_ratio": 0.1}, None),
    (
        "network",
        "vit_b_dp005_mask_005",
        {"model.backbone": "vit_b", "model.drop_path": 0.05, "model.mask_ratio": 0.1},  # what their forward drops
        None,
    ),
    (
        "network",
        "vit_l_dp005_mask_005",
        {"model.backbone": "vit_l", "model.drop_path": 0.05, "model.mask_ratio": 0.1},  # what their forward drops
        None,
    ),
    ("network", "vit_h", {"model.backbone": "vit_h", "model.drop_path": 0.1, "model.mask_ratio": 0.0}, None),
    ("resume", True, {"checkpoint.resume": "auto"}, "python -m partialfc.migrate checkpoint ms1mv3_arcface_r50 "),
    ("save_all_states", True, {}, None),
    ("output", "work_dirs/mine", {"output": "work_dirs/mine"}, None),
    ("output", None, {"output": "work_dirs/job"}, None),
    ("embedding_size", 256, {"model.embedding_size": 256}, None),
    ("sample_rate", 0.2, {"loss.sample_rate": 0.2}, None),
    ("sample_rate", 0, {"loss.sample_rate": 0.0}, None),  # positives only, there and here
    ("interclass_filtering_threshold", 0.4, {"loss.interclass_filtering_threshold": 0.4}, None),
    ("fp16", True, {"train.amp": "fp16"}, None),
    ("fp16", False, {"train.amp": "none"}, None),  # float32: this trainer's default is bf16
    ("batch_size", 64, {"data.batch_size": 64}, None),
    ("optimizer", "adamw", {"optim.name": "adamw"}, None),
    ("lr", 0.2, {"optim.lr": 0.2}, None),
    ("momentum", 0.8, {"optim.momentum": 0.9}, "config.momentum=0.8 is not read by train_v2.py"),
    ("weight_decay", 1e-4, {"optim.weight_decay": 1e-4}, None),
    ("verbose", 500, {"eval.verify.every_steps": 500}, None),
    ("frequent", 20, {"train.log_every": 20}, None),
    ("dali", True, {"data.backend": "dali"}, None),
    ("dali_aug", False, {}, None),
    (
        "gradient_acc",
        4,
        {
            "train.grad_accum": 4,
            "optim.clip_grad_norm": 1.25,
            "optim.lr": 0.4,  # SGD: the sum of 4 batches' gradients is 4 x their mean
            "optim.weight_decay": 1.25e-4,
            "eval.verify.every_steps": 500,  # 2000 batches
            "train.log_every": 3,  # 10 batches, rounded up
        },
        "optim.lr is lr x 4",
    ),
    ("seed", 7, {"train.seed": 7}, None),
    ("num_workers", 8, {"data.num_workers": 8}, None),
    ("rec", "/data/ms1m", {"data.path": "/data/ms1m"}, None),
    ("num_classes", 1000, {"data.num_classes": 1000}, None),
    ("num_image", 12345, {}, "config.num_image=12345 not checked"),
    ("num_epoch", 16, {"train.epochs": 16.0}, None),
    ("warmup_epoch", 2, {"schedule.warmup_epochs": 2.0}, None),
    ("val_targets", ["lfw", "cplfw"], {"data.val_targets": ["lfw", "cplfw"]}, None),
    ("using_wandb", False, {}, None),
]


@pytest.mark.parametrize("key, value, expected, note", CARRIED, ids=[f"{c[0]}={c[1]!r}" for c in CARRIED])
def test_each_key_alone_is_carried_to_its_field(tmp_path, capsys, key, value, expected, note):
    code, out, _, err = migrate_job(tmp_path, f"config.{key} = {value!r}\n", capsys)
    assert code == 0, err
    fields = fields_of(out)
    assert {name: fields[name] for name in expected} == expected
    cited = [line for line in out.read_text().splitlines() if f"# config.{key} (" in line]
    assert bool(cited) == bool(expected)  # a key carried as nothing names no field
    assert (note in err) if note else ("note:" not in err), err


def test_gradient_accumulation_keeps_adamws_lr_and_weight_decay(tmp_path, capsys):
    code, out, _, err = migrate_job(
        tmp_path,
        "config.optimizer = 'adamw'\nconfig.lr = 0.001\nconfig.weight_decay = 0.1\nconfig.gradient_acc = 12\n",
        capsys,
    )
    assert code == 0, err
    fields = fields_of(out)
    assert (fields["optim.lr"], fields["optim.weight_decay"], fields["train.grad_accum"]) == (0.001, 0.1, 12)
    assert fields["optim.clip_grad_norm"] == pytest.approx(5 / 12)
    assert (fields["eval.verify.every_steps"], fields["train.log_every"]) == (167, 1)  # 2000 and 10 batches


# (key, value, what the refusal says); each is refused naming the job, its line and the key.
REFUSED = [
    ("using_wandb", True, "Weights & Biases is not carried over: train.tensorboard true"),
    ("wandb_key", "0123456789", "Weights & Biases is not carried over: metrics go to TensorBoard"),
    ("wandb_entity", "team", "Weights & Biases is not carried over"),
    ("wandb_project", "faces", "Weights & Biases is not carried over"),
    ("wandb_log_all", False, "Weights & Biases is not carried over"),
    ("wandb_resume", True, "a resumed run appends to its own output/train_log.jsonl"),
    ("suffix_run_name", "try2", "a run is named by its output directory (output)"),
    ("notes", "first try", "keep notes beside the run"),
    ("save_artifacts", True, "model.pt and model_best.pt are written into output"),
    ("dali_aug", True, "their DALI augmentation"),
    ("network", "r2060", "iresnet2060 has no backbone here"),
    ("network", "resnet50", "not a network of arcface_torch's get_model"),
    ("optimizer", "lamb", "train_v2.py builds sgd or adamw"),
    ("rec", "synthetic", "their random-image dataset has no counterpart"),
    ("margin_list", (1.0, 0.5), "must be (m1, m2, m3)"),
    ("fp16", "yes", "must be True or False"),
    ("verbose", 2.5, "must be a whole number of steps"),
    ("val_targets", "lfw", "must be a list of .bin names"),
    ("lr_name", "poly", "not a key train_v2.py reads"),
    ("gradient_acc", 0, "must be a whole number >= 1"),
    ("network", ["r50"], "not a network of arcface_torch's get_model"),
    ("lr", "fast", "as optim.lr: optim.lr: expected float, got 'fast'"),
    ("batch_size", 0, "as data.batch_size: data.batch_size=0 must be >= 1"),
    ("margin_list", (0.5, 0.5, 0.0), "as loss.combined.m1: loss.combined.m1=0.5 must be >= 1"),
    ("num_epoch", 0, "as train.epochs: train.epochs=0.0 or train.max_steps must be > 0"),
]


@pytest.mark.parametrize("key, value, reason", REFUSED, ids=[f"{c[0]}={c[1]!r}" for c in REFUSED])
def test_each_key_that_cannot_be_carried_exits_2_naming_it(tmp_path, capsys, key, value, reason):
    code, out, stdout, err = migrate_job(tmp_path, f"config.{key} = {value!r}\n", capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        f"python -m partialfc.migrate: error: {tmp_path / 'job.py'} line {LINE}: config.{key}={value!r}: "
    )
    assert reason in err, err
    assert not out.exists() and not stdout


def test_weights_and_biases_keys_of_base_py_pass_while_it_is_off_and_are_refused_when_on(tmp_path, capsys):
    """Users keep their W&B key in base.py: inert while using_wandb is False, as in train_v2.py."""
    base = tmp_path / "custom_base.py"
    base.write_text((CONFIGS / "base.py").read_text().replace('"entity"', '"my-team"'))
    assert migrate_job(tmp_path, "config.lr = 0.1\n", capsys, base)[0] == 0
    base.write_text(base.read_text().replace("config.using_wandb = False", "config.using_wandb = True"))
    code, _, _, err = migrate_job(tmp_path, "config.lr = 0.1\n", capsys, base)
    line = base.read_text().splitlines().index("config.using_wandb = True") + 1
    assert code == 2 and f"{tmp_path / 'base.py'} line {line}: config.using_wandb=True" in err, err


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """11 identities x 3 images (33 images), and an image folder that is no RecordIO dataset."""
    root = tmp_path_factory.mktemp("migrate-config")
    (root / "folder" / "0").mkdir(parents=True)
    return generate_synthetic_dataset(root / "rec", 11, 3, seed=2, workers=1)


@pytest.mark.parametrize(
    "body, code, message",
    [
        ("config.num_classes = 11\nconfig.num_image = 33\n", 0, ""),
        ("config.num_classes = 11\nconfig.num_image = 5179510\n", 2, "config.num_image=5179510: the dataset at rec="),
        ("config.num_classes = 93431\nconfig.num_image = 33\n", 2, "config.num_classes=93431: the dataset at rec="),
    ],
)
def test_num_image_and_num_classes_must_match_a_dataset_readable_here(
    tmp_path, capsys, small_dataset, body, code, message
):
    result, _, _, err = migrate_job(tmp_path, f"config.rec = {str(small_dataset)!r}\n{body}", capsys)
    assert result == code and message in err, err
    assert "not checked" not in err


def test_an_image_folder_as_rec_is_refused_with_the_pack_command(tmp_path, capsys, small_dataset):
    folder = small_dataset.parent / "folder"
    code, _, _, err = migrate_job(tmp_path, f"config.rec = {str(folder)!r}\n", capsys)
    assert code == 2 and "not a RecordIO dataset" in err and "python -m partialfc.data pack" in err, err


# What every preset carries from base.py and train_v2.py unless it sets the key itself.
COMMON = {
    "data.num_workers": 2,
    "data.flip": True,
    "data.backend": "torch",
    "data.batch_size": 128,
    "model.embedding_size": 512,
    "model.dropout": 0.0,
    "loss.family": "combined",
    "loss.s": 64.0,
    "loss.combined.m1": 1.0,
    "loss.combined.m2": 0.0,
    "loss.combined.m3": 0.4,
    "optim.name": "sgd",
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.clip_grad_norm": 5.0,
    "schedule.decay": "poly",
    "schedule.power": 1.0,
    "train.epochs": 20.0,
    "train.grad_accum": 1,
    "train.amp": "fp16",
    "train.seed": 2048,
    "train.log_every": 10,
    "checkpoint.resume": "auto",
    "eval.verify.every_steps": 2000,
}
PRESETS: dict[str, dict[str, Any]] = {
    "ms1mv3_r50": {
        "output": "work_dirs/ms1mv3_r50",
        "data.path": "/train_tmp/ms1m-retinaface-t1",
        "data.num_classes": 93431,
        "data.val_targets": ["lfw", "cfp_fp", "agedb_30"],
        "model.backbone": "r50",
        "loss.combined.m2": 0.5,
        "loss.combined.m3": 0.0,
        "loss.sample_rate": 1.0,
        "schedule.warmup_epochs": 0.0,
    },
    "wf42m_pfc02_r100": {
        "output": "work_dirs/wf42m_pfc02_r100",
        "data.path": "/train_tmp/WebFace42M",
        "data.num_classes": 2059906,
        "data.backend": "dali",
        "data.val_targets": ["lfw", "cfp_fp", "agedb_30"],
        "model.backbone": "r100",
        "loss.sample_rate": 0.2,
        "schedule.warmup_epochs": 2.0,
        "eval.verify.every_steps": 10000,
    },
    "wf12m_conflict_r50_pfc03_filter04": {
        "output": "work_dirs/wf12m_conflict_r50_pfc03_filter04",
        "data.path": "/train_tmp/WebFace12M_Conflict",
        "data.num_classes": 1017970,
        "data.val_targets": [],
        "model.backbone": "r50",
        "loss.sample_rate": 0.3,
        "loss.interclass_filtering_threshold": 0.4,
        "schedule.warmup_epochs": 2.0,
    },
    "wf42m_pfc03_40epoch_8gpu_vit_b": {
        "output": "work_dirs/wf42m_pfc03_40epoch_8gpu_vit_b",
        "data.path": "/train_tmp/WebFace42M",
        "data.num_classes": 2059906,
        "data.batch_size": 256,
        "data.val_targets": [],
        "model.backbone": "vit_b",
        "model.drop_path": 0.05,
        "model.mask_ratio": 0.1,  # their forward drops 0.1 whatever the ratio above 0
        "loss.sample_rate": 0.3,
        "optim.name": "adamw",
        "optim.lr": 0.001,
        "optim.weight_decay": 0.1,
        "optim.clip_grad_norm": 5 / 12,
        "schedule.warmup_epochs": 4.0,
        "train.epochs": 40.0,
        "train.grad_accum": 12,
        "train.log_every": 1,
        "eval.verify.every_steps": 167,
    },
    "glint360k_mbf_acc2": {
        "output": "work_dirs/glint360k_mbf",
        "data.path": "/train_tmp/glint360k",
        "data.num_classes": 360232,
        "data.num_workers": 8,
        "data.val_targets": ["lfw", "cfp_fp", "agedb_30"],
        "model.backbone": "mbf",
        "loss.sample_rate": 1.0,
        "optim.lr": 0.2,
        "optim.weight_decay": 5e-5,
        "optim.clip_grad_norm": 2.5,
        "schedule.warmup_epochs": 0.0,
        "train.grad_accum": 2,
        "train.seed": 42,
        "train.log_every": 25,
        "eval.verify.every_steps": 1000,
    },
}


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_written_like_theirs_converts_with_each_value_and_passes_the_dry_run(tmp_path, capsys, preset):
    out = tmp_path / f"{preset}.yaml"
    assert main(["config", str(CONFIGS / f"{preset}.py"), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}" in stdout
    expected = {**COMMON, **PRESETS[preset]}
    fields = fields_of(out)
    assert {name: fields[name] for name in expected} == expected
    assert train_main(["--config", str(out), "--dry-run", "--world-size", "8"]) == ExitCode.FINISHED
    plan = capsys.readouterr().out
    assert yaml.safe_load(plan.split("# memory plan")[0])["model"]["backbone"] == expected["model.backbone"]


def test_the_yaml_names_the_key_and_line_of_each_value(tmp_path, capsys):
    out = tmp_path / "ms1mv3_r50.yaml"
    assert main(["config", str(CONFIGS / "ms1mv3_r50.py"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert f"  lr: 0.1  # config.lr ({CONFIGS / 'ms1mv3_r50.py'} line 15)" in lines
    assert f"  name: sgd  # config.optimizer ({CONFIGS / 'base.py'} line 20)" in lines
    assert "  s: 64.0  # fixed in train_v2.py" in lines


def test_every_option_of_the_command_is_explained():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, command in commands.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_the_command_runs_as_a_module(tmp_path):
    out = tmp_path / "ms1mv3_r50.yaml"
    command = [sys.executable, "-m", "partialfc.migrate", "config", str(CONFIGS / "ms1mv3_r50.py"), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert fields_of(out)["model.backbone"] == "r50"
    assert result.stderr.splitlines() == [
        "python -m partialfc.migrate: note: config.num_image=5179510 not checked: "
        "rec='/train_tmp/ms1m-retinaface-t1' does not exist here"
    ]
