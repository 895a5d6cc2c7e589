"""Run the real training CLI from tests: torchrun (or plain python) on a tiny synthetic dataset."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_trainer(dataset: Path, output: Path, clock=time.monotonic, **overrides: object):
    """A Trainer in this process on the quickstart config, small batches: at world size 1 (no process group),
    or as this process's rank when a process group exists (tests/dist_harness.py); ``clock`` as in Trainer."""
    import torch
    import torch.distributed as dist

    from partialfc.config import load_config
    from partialfc.distributed import DistInfo
    from partialfc.trainer import Trainer

    config = load_config(
        REPO / "configs" / "quickstart.yaml",
        {
            "data.path": str(dataset),
            "output": str(output),
            "data.batch_size": 16,
            "data.backend": "torch",
            "data.num_workers": 1,
            "train.log_every": 2,
            "eval.every_steps": 0,
            "metrics.port": 0,
            **overrides,
        },
    )
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    info = DistInfo(rank, world_size, local_rank=rank, local_world_size=world_size, node=0, device=torch.device("cpu"))
    return Trainer(config, info, clock)


def train_args(dataset: Path, output: Path, *extra: str) -> list[str]:
    """The quickstart config on ``dataset``, small batches, metrics off unless ``extra`` says otherwise."""
    return [
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--data.path",
        str(dataset),
        "--output",
        str(output),
        "--data.batch_size",
        "16",
        "--data.num_workers",
        "1",
        "--train.log_every",
        "2",
        "--eval.batch_size",
        "100",
        "--metrics.port",
        "0",
        *extra,
    ]


def training_command(nproc: int | None, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node nproc -m partialfc.train ARGS`` (plain python when nproc is None)."""
    if nproc is None:
        return [sys.executable, "-m", "partialfc.train", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "partialfc.train",
        *args,
    ]


def training_env() -> dict[str, str]:
    # In-place restarts of gloo jobs need this on torch 2.13 (see shared/FIELD_NOTES.md).
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def run_training(nproc: int | None, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        training_command(nproc, args), cwd=REPO, env=training_env(), capture_output=True, text=True, timeout=540
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def final_state(output: Path) -> dict:
    """model.pt's backbone weights plus every rank's centres and centre optimizer state in the newest checkpoint."""
    import torch

    state = {f"backbone.{k}": v for k, v in torch.load(output / "model.pt", weights_only=True)["state_dict"].items()}
    last = sorted(p.parent for p in (output / "checkpoints").glob("step-*/meta.json"))[-1]
    for part in sorted(last.glob("centres-*.pt")):
        for key, value in torch.load(part, weights_only=True)["state"].items():
            if isinstance(value, torch.Tensor):
                state[f"{part.stem}.{key}"] = value
    return state


def wait_for(predicate, deadline: float, what: str, job: subprocess.Popen) -> None:
    """Poll a condition on the job's files (log, heartbeats); fail early if the job ended or the deadline passed."""
    import time

    while not predicate():
        assert job.poll() is None, f"training ended ({job.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill_job(job: subprocess.Popen, output: Path) -> None:
    """SIGKILL a torchrun job and its workers (they run in sessions of their own; their pids are in the heartbeats)."""
    import json
    import signal

    pids = []
    for heartbeat in (output / "heartbeats").glob("rank-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.append(json.loads(heartbeat.read_text())["pid"])
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def straight_and_resumed(dataset: Path, tmp_path: Path, **settings: object) -> tuple:
    """In-process runs of 6 steps: one straight, one resumed from the straight run's step-3 checkpoint.

    Returns (straight output, resumed output, straight trainer, resumed trainer), both runs finished.
    """
    import shutil

    settings = {"train.max_steps": 6, "checkpoint.every_steps": 3, **settings}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = make_trainer(dataset, straight, **settings)
    assert first.fit() == "finished"
    shutil.copytree(straight / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    second = make_trainer(dataset, resumed, **settings)
    assert second.fit() == "finished"
    assert "resumed from" in (resumed / "train.log").read_text()
    return straight, resumed, first, second


def fill_disk(filler: Path, leave: int) -> None:
    """Grow ``filler`` until its filesystem is full (ENOSPC), then give back ``leave`` bytes."""
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 2**16)
            f.flush()
    os.truncate(filler, max(0, filler.stat().st_size - leave))
