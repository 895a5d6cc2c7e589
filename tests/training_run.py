"""Run the real training CLI from tests: torchrun (or plain python) on a tiny synthetic dataset."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from partialfc.common.exit_codes import ExitCode

REPO = Path(__file__).resolve().parents[1]
JOB_MARKER = "PARTIALFC_TEST_JOB"
"""Set in the environment of every job a test starts: every process of the job inherits it."""
_job_numbers = itertools.count()
_markers: dict[int, str] = {}  # by the pid of each job started
_running: dict[int, subprocess.Popen] = {}  # jobs not killed yet, by pid


def make_trainer(dataset: Path, output: Path, clock=time.monotonic, **overrides: object):
    """A Trainer in this process on the quickstart config, small batches: at world size 1 (no process group),
    or as this process's rank when a process group exists (tests/dist_harness.py); ``clock`` as in Trainer."""
    import torch
    import torch.distributed as dist

    from partialfc.common.distributed import DistInfo
    from partialfc.config import load_config
    from partialfc.training.trainer import Trainer

    config = load_config(
        REPO / "configs" / "quickstart.yaml",
        {
            "data.path": str(dataset),
            "output": str(output),
            "data.batch_size": 16,
            "data.backend": "torch",
            "data.num_workers": 1,
            "train.log_every": 2,
            "eval.verify.every_steps": 0,
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
    result = run_job(training_command(nproc, args), timeout=540)
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
    while not predicate():
        assert job.poll() is None, f"training ended ({job.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start_job(command: Sequence[str], env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen:
    """Start a job (torchrun, the launcher, the trainer) from the repository in a session of its own,
    its environment (default :func:`training_env`) marked so that :func:`kill_job` finds every process
    it starts; whatever a test leaves running is killed after it (tests/conftest.py)."""
    marker = f"{os.getpid()}-{next(_job_numbers)}"
    job = subprocess.Popen(
        list(command),
        cwd=REPO,
        env={**(training_env() if env is None else env), JOB_MARKER: marker},
        start_new_session=True,
        **popen,
    )
    _markers[job.pid], _running[job.pid] = marker, job
    return job


def run_job(
    command: Sequence[str], env: dict[str, str] | None = None, timeout: float = 540
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True)`` through :func:`start_job`: on a
    timeout (or any error) the whole job is killed, not only its first process."""
    job = start_job(command, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = job.communicate(timeout=timeout)
    finally:
        kill_job(job)
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)


def job_processes(job: subprocess.Popen) -> list[int]:
    """Pids of the live processes of a job started by :func:`start_job`: those whose environment
    carries its marker (a zombie has no environment)."""
    entry = f"{JOB_MARKER}={_markers[job.pid]}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if entry in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
    return pids


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL a job started by :func:`start_job`: its process group, then the group of every process
    that carries its marker, until none is left.

    The job's own group does not hold torchrun's workers: torchrun starts each in a session of its
    own (torch/distributed/elastic/multiprocessing/subprocess_handler/subprocess_handler.py,
    ``start_new_session=True``), and a worker whose torchrun was killed lives on under init. The
    job's group goes first so that torchrun cannot restart the workers killed after it.
    """
    _running.pop(job.pid, None)
    if job.poll() is None:  # not reaped yet: the group id cannot belong to anyone else
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + 60
    while survivors := job_processes(job):
        assert time.monotonic() < deadline, f"processes {survivors} of the job survive SIGKILL"
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                if group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def kill_running_jobs() -> None:
    """Kill every job started by :func:`start_job` and not yet killed (a test that failed half-way)."""
    for job in list(_running.values()):
        kill_job(job)


def straight_and_resumed(dataset: Path, tmp_path: Path, **settings: object) -> tuple:
    """In-process runs of 6 steps: one straight, one resumed from the straight run's step-3 checkpoint.

    Returns (straight output, resumed output, straight trainer, resumed trainer), both runs finished.
    """
    import shutil

    settings = {"train.max_steps": 6, "checkpoint.every_steps": 3, **settings}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = make_trainer(dataset, straight, **settings)
    assert first.fit() == ExitCode.FINISHED
    shutil.copytree(straight / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    second = make_trainer(dataset, resumed, **settings)
    assert second.fit() == ExitCode.FINISHED
    assert "resumed from" in (resumed / "train.log").read_text()
    return straight, resumed, first, second


def fill_disk(filler: Path, leave: int) -> None:
    """Grow ``filler`` until its filesystem is full (ENOSPC), then give back ``leave`` bytes."""
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 2**16)
            f.flush()
    os.truncate(filler, max(0, filler.stat().st_size - leave))
