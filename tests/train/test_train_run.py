"""The training job end to end: learning, single process, bad configs, exported model."""

from __future__ import annotations

import json
import math

import torch
from training_run import run_training, train_args

from partialfc.data.verification import VerificationSet
from partialfc.eval.verification import evaluate
from partialfc.models import create_model


def test_two_rank_run_learns(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    run_training(
        2,
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            "40",
            "--eval.verify.every_steps",
            "40",
            "--checkpoint.every_steps",
            "20",
            "--data.batch_size",
            "32",
        ),
    )
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 40
    losses = [
        float(line.split(" loss ")[1].split()[0])
        for line in (output / "train.log").read_text().splitlines()
        if " loss " in line
    ]
    # Margin losses rise in the first steps from random centres; compare the first and last windows.
    assert len(losses) == 20 and sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses

    vset = VerificationSet(tiny_dataset / "synth_val.bin")
    torch.manual_seed(0)
    untrained = evaluate(create_model("tiny", embedding_size=128), vset, 128, torch.device("cpu"), 100).accuracy
    trained = summary["best_evaluation"]["verify/synth_val"]
    assert trained > untrained + 0.05, (untrained, trained)  # chance is 0.5; colour alone gives ~0.85

    exported = torch.load(output / "model.pt", weights_only=True)
    model = create_model(exported["backbone"], embedding_size=exported["embedding_size"])
    model.load_state_dict(exported["state_dict"])
    # The trainer's last verification (2 ranks) scored exactly the exported model, BN statistics included.
    alone = evaluate(model, vset, 128, torch.device("cpu"), 100).accuracy
    assert alone == summary["last_evaluation"]["verify/synth_val"]["accuracy"], (alone, summary["last_evaluation"])
    assert (output / "model_best.pt").is_file() and (output / "config.yaml").is_file()
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]


def test_single_process_without_torchrun(tiny_dataset, tmp_path):
    output = tmp_path / "single"
    run_training(None, train_args(tiny_dataset, output, "--train.max_steps", "3", "--data.backend", "torch"))
    assert json.loads((output / "summary.json").read_text())["status"] == "finished"


def test_fp16_accumulation_and_clipping(tiny_dataset, tmp_path):
    """fp16 with loss scaling, 2 micro-batches per step, global-norm clipping: the step path that
    decides on overflow and clips over backbone + centres."""
    output = tmp_path / "fp16"
    result = run_training(
        2,
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            "4",
            "--train.log_every",
            "1",
            "--train.amp",
            "fp16",
            "--train.grad_accum",
            "2",
            "--optim.clip_grad_norm",
            "1.0",
            "--eval.verify.every_steps",
            "0",
            "--data.backend",
            "torch",
        ),
    )
    lines = [line for line in result.stdout.splitlines() if " loss_scale " in line]
    assert len(lines) == 4, result.stdout[-3000:]
    field = lambda line, name: float(line.split(f" {name} ")[1].split()[0])  # noqa: E731
    norms, scales, skipped = ([field(line, name) for line in lines] for name in ("grad_norm", "loss_scale", "skipped"))
    # A step is skipped exactly when its global norm is not finite, and each skip halves the scale.
    for i, (norm, scale, skips) in enumerate(zip(norms, scales, skipped)):
        newly_skipped = skips - (skipped[i - 1] if i else 0)
        assert newly_skipped == (0 if math.isfinite(norm) else 1), lines[i]
        assert scale == 65536 / 2**skips, lines[i]
    assert any(math.isfinite(norm) and norm > 0 for norm in norms)
    assert "global batch 64" in result.stdout  # 16 per rank x 2 ranks x 2 micro-batches


def test_bad_configs_fail_clearly(tiny_dataset, tmp_path):
    cases = [
        (["--optim.lr", "fast"], "optim.lr: expected float"),
        (["--data.num_classes", "7"], "data.num_classes=7 but dataset"),
        (["--loss.sample_rate", "1.5"], "loss.sample_rate=1.5 must be in [0, 1]"),
        (["--model.backbone", "nope"], "model.backbone='nope' is not one of"),
    ]
    for extra, message in cases:
        result = run_training(None, train_args(tiny_dataset, tmp_path / "bad", *extra), check=False)
        assert result.returncode == 2, (extra, result.stderr[-2000:])
        assert message in result.stderr, (extra, result.stderr[-2000:])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  lrr: 0.1\n")
    result = run_training(None, ["--config", str(bad_yaml)], check=False)
    assert result.returncode == 2 and f"{bad_yaml}: unknown key 'optim.lrr'" in result.stderr
