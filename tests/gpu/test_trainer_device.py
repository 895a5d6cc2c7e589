"""The training CLI on a device: ``torchrun --nproc_per_node 1 -m partialfc.train`` with the PyTorch
loader, bf16 autocast and channels_last; resume; fp16 overflow handling.

Only the command line and the run directory are used (the log, ``summary.json``, ``model.pt`` and
the checkpoint files), not the trainer's internals. On CUDA the backbone is r18 for 20 steps; on
the CPU (every suite, ``CUDA_VISIBLE_DEVICES`` emptied so a GPU machine runs it on the CPU too)
the ``tiny`` backbone for a few steps.

At world size 1 no process group is created, so ``--dist.backend nccl`` is accepted but NCCL is not
used; ``test_collectives_device.py`` checks NCCL itself at world size 1.

Bit-identical resume on CUDA needs ``--train.deterministic true``. Without it these ops differ from
run to run (so resume matches only to rounding): cuDNN convolution backward (weight-gradient
algorithms that accumulate with atomics, chosen per call), ``index_add_`` in the merge of
accumulated micro-batches (atomics), and cuBLAS GEMMs whose split-K reduction order depends on
the workspace; at world size > 1 also NCCL all-reduce when its algorithm or channel count changes.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import torch
from training_run import REPO, training_command, training_env

from partialfc import PartialFC

BACKBONE = {"cpu": "tiny", "cuda": "r18"}
STEPS = {"cpu": 4, "cuda": 20}
OVERFLOW_STEPS = {"cpu": 12, "cuda": 20}  # enough for the loss scale to come down and steps to resume
EMBEDDING_SIZE, SEED = 128, 0
# s = 1024 makes the scaled embedding gradient of the first step (65536 · s / batch / ‖x‖ ≈ 4e5 for
# unit-variance embeddings) overflow fp16's 65504, while halving the scale a few times recovers.
OVERFLOW_S = "1024"


def train(device: str, dataset: Path, output: Path, *extra: str) -> str:
    """Run the CLI on ``device`` (one rank under torchrun); returns its stdout, fails with its output."""
    args = [
        "--data.path",
        str(dataset),
        "--output",
        str(output),
        "--data.backend",
        "torch",
        "--data.batch_size",
        "16",
        "--data.num_workers",
        "2",
        "--model.backbone",
        BACKBONE[device],
        "--model.embedding_size",
        str(EMBEDDING_SIZE),
        "--model.channels_last",
        "true",
        "--train.seed",
        str(SEED),
        "--dist.backend",
        "nccl" if device == "cuda" else "gloo",
        "--eval.verify.every_steps",
        "0",
        "--metrics.port",
        "0",
        *extra,
    ]
    env = training_env() | ({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})
    result = subprocess.run(training_command(1, args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    printed = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"training failed ({result.returncode}):\n{printed}"
    assert f"({device})" in result.stdout, f"not trained on {device}:\n{printed}"
    assert json.loads((output / "summary.json").read_text())["status"] == "finished", printed
    return result.stdout


def tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested structure of dicts, lists and tuples, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}/{key}"))
    return found


def final_tensors(output: Path) -> dict[str, torch.Tensor]:
    """The exported backbone and every tensor of the newest checkpoint (model, optimizers, centres,
    loss scaler, RNG states, loader position)."""
    files = [output / "model.pt", *sorted(max((output / "checkpoints").iterdir()).glob("*.pt"))]
    found: dict[str, torch.Tensor] = {}
    for path in files:
        found.update(tensors(torch.load(path, map_location="cpu", weights_only=True), path.name))
    return found


def test_train_then_resume_bit_identically(device, tiny_dataset, tmp_path):
    """Resuming from the halfway checkpoint ends with every saved tensor equal to the straight run's."""
    steps = STEPS[device]
    common = (
        "--train.max_steps",
        str(steps),
        "--checkpoint.every_steps",
        str(steps // 2),
        "--train.amp",
        "bf16",
        "--train.deterministic",
        "true",
        "--loss.sample_rate",
        "0.5",
        "--train.log_every",
        "5",
    )
    straight = tmp_path / "straight"
    train(device, tiny_dataset, straight, *common)
    halfway = straight / "checkpoints" / f"step-{steps // 2:08d}"
    resumed = tmp_path / "resumed"
    shutil.copytree(halfway, resumed / "checkpoints" / halfway.name)
    stdout = train(device, tiny_dataset, resumed, *common)
    assert f"at step {steps // 2}" in stdout and "resumed from" in stdout, stdout[-2000:]

    expected, actual = final_tensors(straight), final_tensors(resumed)
    assert expected.keys() == actual.keys()
    differing = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ after resume, e.g. {differing[:5]}"


def log_field(line: str, name: str) -> float:
    return float(line.split(f" {name} ")[1].split()[0])


def test_fp16_overflow_skips_the_step(device, tiny_dataset, tmp_path):
    """The first step overflows (forced by a large logit scale): it is skipped on the non-finite
    global norm, the centres and their optimizer state stay as initialised, and the halved scale
    lets training resume. With AdamW: torch's fused kernel for the backbone on CUDA, and the lazy
    AdamW for the centres."""
    fp16 = (
        "--train.amp",
        "fp16",
        "--loss.s",
        OVERFLOW_S,
        "--train.log_every",
        "1",
        "--optim.name",
        "adamw",
        "--optim.lr",
        "1e-3",
    )
    one_step = tmp_path / "one_step"
    stdout = train(device, tiny_dataset, one_step, *fp16, "--train.max_steps", "1")
    (line,) = [line for line in stdout.splitlines() if " loss_scale " in line]
    assert not math.isfinite(log_field(line, "grad_norm")) and log_field(line, "skipped") == 1, line
    initial = PartialFC(EMBEDDING_SIZE, 120, seed=SEED).weight.detach()
    (centres_file,) = (one_step / "checkpoints" / f"step-{1:08d}").glob("centres-*.pt")
    saved = tensors(torch.load(centres_file, map_location="cpu", weights_only=True))
    shard_tensors = [t for t in saved.values() if t.shape == initial.shape]
    assert sum(torch.equal(t, initial) for t in shard_tensors) == 1, "centres moved on a skipped step"
    assert all(torch.equal(t, initial) or not t.any() for t in shard_tensors), "centre optimizer state moved"

    stdout = train(device, tiny_dataset, tmp_path / "recovers", *fp16, "--train.max_steps", str(OVERFLOW_STEPS[device]))
    lines = [line for line in stdout.splitlines() if " loss_scale " in line]
    assert len(lines) == OVERFLOW_STEPS[device], stdout[-3000:]
    skipped_before = 0
    for line in lines:
        norm, scale, skipped = (log_field(line, name) for name in ("grad_norm", "loss_scale", "skipped"))
        assert skipped - skipped_before == (0 if math.isfinite(norm) else 1), line  # skip iff non-finite
        assert scale == 65536 / 2**skipped, line  # each skip halves the scale
        skipped_before = skipped
    assert 1 <= skipped_before < len(lines), f"no overflow, or no step taken after it:\n{stdout[-3000:]}"
