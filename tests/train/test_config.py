"""Config: presets load, --help documents every field, dry-run plans memory, overrides coerce types."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys

import pytest
import torch
from training_run import REPO

from partialfc.config import Config, ConfigError, load_config
from partialfc.train import build_parser, main, memory_plan


def field_names(node, prefix: str = "") -> list[str]:
    names = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        names += field_names(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
    return names


def test_help_documents_every_field():
    text = build_parser().format_help()
    for name in field_names(Config()):
        assert f"--{name}" in text, name
    assert "(default: 'r50')" in text and "Partial FC r" in text


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_presets_are_valid(preset):
    config = load_config(REPO / "configs" / preset)
    assert config.data.path and config.output


def test_real_dataset_presets_carry_real_sizes():
    sizes = {
        "ms1mv3_r50.yaml": 93431,
        "ms1mv3_r100.yaml": 93431,
        "glint360k_r100.yaml": 360232,
        "webface42m_r100_pfc02.yaml": 2059906,
    }
    for preset, classes in sizes.items():
        assert load_config(REPO / "configs" / preset).data.num_classes == classes, preset


def test_overrides_coerce_and_validate():
    config = load_config(
        None,
        {
            "optim.lr": "0.2",
            "data.flip": "false",
            "data.val_targets": "lfw,cfp_fp",
            "train.max_steps": "7",
            "data.path": "x",
        },
    )
    assert (config.optim.lr, config.data.flip, config.data.val_targets, config.train.max_steps) == (
        0.2,
        False,
        ["lfw", "cfp_fp"],
        7,
    )
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected int, got '1\.5'"):
        load_config(None, {"train.max_steps": "1.5"})
    with pytest.raises(ConfigError, match=r"train\.amp: must be one of none, bf16, fp16"):
        load_config(None, {"train.amp": "fp8"})
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(None, {"optim": "sgd"})


def test_stall_timeout_equal_to_the_collective_timeout_is_refused(capsys):
    """Planted bug: the bound loosened to stall_timeout_s <= dist.timeout_s (the collective timeout would race it)."""
    assert load_config(None, {"dist.timeout_s": "60", "train.stall_timeout_s": "59.5"}).stall_timeout() == 59.5
    quickstart = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run"]
    assert main([*quickstart, "--dist.timeout_s", "60", "--train.stall_timeout_s", "60"]) == 2
    assert "config error: train.stall_timeout_s=60.0 must be below dist.timeout_s=60," in capsys.readouterr().err


def test_ema_decay_one_is_refused(capsys):
    """Planted bug: the bound loosened to ema_decay <= 1 (a decay of 1 never moves the average)."""
    assert load_config(None, {"train.ema_decay": "0.9999"}).train.ema_decay == 0.9999
    assert main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run", "--train.ema_decay", "1.0"]) == 2
    assert "config error: train.ema_decay=1.0 must be in [0, 1)" in capsys.readouterr().err


def test_memory_plan_scales_with_world_size_and_dtype():
    config = load_config(REPO / "configs" / "webface42m_r100_pfc02.yaml")
    plan8 = dict(memory_plan(config, 2_059_906, 8))
    plan16 = dict(memory_plan(config, 2_059_906, 16))
    assert plan8["class centres"] == 257_489 * 512 * 4  # ceil(2,059,906 / 8) rows of fp32
    assert plan16["class centres"] * 2 == pytest.approx(plan8["class centres"], rel=1e-4)
    config.loss.param_dtype = "bf16"
    assert dict(memory_plan(config, 2_059_906, 8))["class centres"] * 2 == plan8["class centres"]


def test_dry_run_prints_config_and_plan(capsys):
    assert main(["--config", str(REPO / "configs" / "ms1mv3_r50.yaml"), "--dry-run", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "backbone: r50" in out and "memory plan per rank: W=8, C=93431, global batch 1024" in out
    assert (
        "class centres" in out
        and "backbone activations kept for backward (bf16, 128 images)" in out
        and "total (without allocator slack" in out
    )


def test_dry_run_says_whether_the_plan_fits_a_device(capsys):
    quickstart = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run"]
    assert main([*quickstart, "--device-memory", "80"]) == 0
    assert "\n# fits: 80.85 MiB of a device's 80 GiB (0.1%)\n" in capsys.readouterr().out
    assert main([*quickstart, "--device-memory", "0.08"]) == 0  # 80.85 MiB > 90% of 81.92 MiB
    assert "# does NOT fit: 80.85 MiB of a device's 0.08 GiB (98.7%), above the 90%" in capsys.readouterr().out
    assert main(quickstart) == 0
    if not torch.cuda.is_available():
        assert "# fits a device: no GPU here to compare with; --device-memory GiB names one" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--world-size", "-3"], "error: argument --world-size: must be at least 1, got -3"),
        (["--world-size", "0"], "error: argument --world-size: must be at least 1, got 0"),
        (["--device-memory", "-1"], "error: argument --device-memory: must be above 0, got -1"),
        (["--world-size", "1001"], "config error: --world-size 1001 exceeds the 1000 classes"),
    ],
)
def test_dry_run_refuses_a_plan_it_cannot_make_in_one_line(argv, message, capsys):
    """No traceback: one line naming the option, exit 2."""
    quickstart = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run"]
    try:
        code = main([*quickstart, *argv])
    except SystemExit as stop:  # argparse's own refusals end the parser
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_dry_run_on_a_mistyped_path_is_a_config_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "partialfc.train",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--data.path",
            str(tmp_path / "typo"),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert f"config error: data.path='{tmp_path / 'typo'}'" in result.stderr


def test_memory_plan_holds_at_the_peak_sample_rate_and_counts_sub_centres():
    plain = dict(memory_plan(load_config(None, {"loss.sample_rate": 0.1}), 1_000_000, 8))
    scheduled = dict(
        memory_plan(
            load_config(None, {"loss.sample_rate": 0.1, "loss.sample_rate_schedule": ["0.8:1.0"]}), 1_000_000, 8
        )
    )
    assert scheduled["logits / softmax buffer (fp32)"] == 10 * plain["logits / softmax buffer (fp32)"]
    tripled = dict(memory_plan(load_config(None, {"loss.sample_rate": 0.1, "loss.sub_centers": 3}), 1_000_000, 8))
    assert tripled["class centres"] == 3 * plain["class centres"]
    for buffer in ("sampled centres (fp32)", "sampled centres' gradient (fp32)"):
        assert tripled[buffer] == 3 * plain[buffer]


def test_the_sample_rate_schedule_is_one_typed_object_of_the_config():
    config = load_config(None, {"loss.sample_rate": 0.2, "loss.sample_rate_schedule": "0.5:0.6,0.9:1.0"})
    schedule = config.loss.sample_rates
    assert schedule is config.loss.sample_rates  # built once, shared by the trainer and the --dry-run plan
    assert (schedule.base, schedule.changes) == (0.2, ((0.5, 0.6), (0.9, 1.0)))
    assert dict(memory_plan(config, 1000, 1))["logits / softmax buffer (fp32)"] == 128 * 1000 * 4  # at the peak, 1.0


def test_every_precision_name_of_the_config_is_in_the_dtype_table():
    import typing

    import torch

    from partialfc.config import LossConfig, TrainConfig
    from partialfc.models.precision import DTYPES, autocast_dtype

    amp = typing.get_args(typing.get_type_hints(TrainConfig)["amp"])
    assert {name: autocast_dtype(name) for name in amp} == {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert {name: DTYPES[name] for name in typing.get_args(typing.get_type_hints(LossConfig)["param_dtype"])} == {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
    }


def test_main_in_process_leaves_sigterm_unblocked(capsys):
    """Only `python -m partialfc.train` blocks SIGTERM (for its sigwait thread): a caller of main()
    keeps its mask, which every process it starts later would inherit."""
    assert main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run"]) == 0
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
