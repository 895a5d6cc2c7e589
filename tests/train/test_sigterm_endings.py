"""Whose SIGTERM was it? A rank that takes SIGTERM keeps training (to agree, save and stop at the next log
step) while it makes progress, and leaves at once only when it is stuck in a collective. Then the pod's
SIGTERM (marked by the launcher) ends it as a pre-emption, 143, and torchrun's agent's SIGTERM after a
peer's crash as a failure, 1: a crash must never read as a pre-emption to the cluster's failure policy."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_run import REPO, kill_job, start_job, train_args, training_env, wait_for

from partialfc.common.exit_codes import EXIT_DIR_VAR, ExitCode, note_pod_sigterm

# A worker's SIGTERM handling as partialfc.train sets it up (block_sigterm first, then the flag's
# thread); stuck() counts its calls in a file and turns True once the test creates the "stuck" file.
WORKER = """
import os, signal, sys, time
from pathlib import Path
from partialfc.training.preemption import SigtermFlag, block_sigterm

block_sigterm()
stuck_file, calls_file = Path(sys.argv[1]), Path(sys.argv[2])
calls = 0

def stuck():
    global calls
    calls += 1
    calls_file.write_text(str(calls))
    return stuck_file.exists()

flag = SigtermFlag(enabled=True, stuck=stuck, poll_s=0.02)
os.kill(os.getpid(), signal.SIGTERM)
while True:  # the training loop, making progress
    time.sleep(0.01)
"""


def await_file(path: Path, ready, process: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and ready(path.read_text())):
        assert process.poll() is None, f"the worker exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("pod_sigterm, expected", [(True, ExitCode.PREEMPTED), (False, ExitCode.FAILED)])
def test_a_rank_leaves_only_when_stuck_and_records_whose_sigterm_it_was(tmp_path, pod_sigterm, expected):
    exit_dir = tmp_path / "exit"
    exit_dir.mkdir()
    if pod_sigterm:
        note_pod_sigterm(exit_dir)
    stuck_file, calls_file = tmp_path / "stuck", tmp_path / "calls"
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(stuck_file), str(calls_file)],
        cwd=REPO,
        # OMP_NUM_THREADS=1 as torchrun sets it for its workers: numpy's BLAS then starts no thread at import,
        # before block_sigterm could mask SIGTERM in it.
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", EXIT_DIR_VAR: str(exit_dir), "RANK": "3"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Twenty polls of a progressing rank after SIGTERM: it must still be training (its pre-emption save
        # comes at the next log step); leaving here would lose the work since the last checkpoint.
        await_file(calls_file, lambda text: text and int(text) >= 20, process, "20 polls of a progressing rank")
        stuck_file.touch()
        assert process.wait(timeout=60) == expected, process.stderr.read() if process.stderr else ""
    finally:
        process.kill()
    assert (exit_dir / "attempt-00000-rank-000003").read_text() == str(int(expected))
    stderr = process.stderr.read() if process.stderr else ""
    assert ("a peer failed" in stderr) == (expected == ExitCode.FAILED), stderr


def test_without_a_launcher_every_sigterm_counts_as_the_pods(monkeypatch):
    """A plain torchrun or a single process has no exit directory: nobody can tell whose SIGTERM it was."""
    from partialfc.training.preemption import SigtermFlag

    monkeypatch.delenv(EXIT_DIR_VAR, raising=False)
    assert SigtermFlag.ending() == ExitCode.PREEMPTED


def sigterm_unblocked_threads(pid: int) -> list[str]:
    """The threads of ``pid`` whose signal mask lets SIGTERM in (/proc/PID/task/TID/status, SigBlk)."""
    bit = 1 << (signal.SIGTERM - 1)
    unblocked = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        if not int(fields["SigBlk"], 16) & bit:
            unblocked.append(f"{status.parent.name} ({fields['Name'].strip()})")
    return unblocked


def test_a_worker_with_blas_threads_still_saves_on_sigterm(tiny_dataset, tmp_path):
    """numpy's OpenBLAS starts its thread pool when imported, and ``python -m partialfc.train`` imports the
    package before its main runs. A thread that lets SIGTERM in takes a process-directed SIGTERM ahead of
    the trainer's waiting thread (the kernel offers it to the first thread that does not block it), and
    SIGTERM's default action ends the process: no pre-emption save. OMP_NUM_THREADS is left as a user's
    single-process run or an operator's environment sets it (torchrun sets 1 only when it is unset)."""
    output = tmp_path / "run"
    args = train_args(
        tiny_dataset,
        output,
        "--train.max_steps",
        "100000",
        "--checkpoint.every_steps",
        "0",
        "--eval.verify.every_steps",
        "0",
    )
    env = {**training_env(), "OMP_NUM_THREADS": "4"}
    log = output / "train.log"
    job = start_job([sys.executable, "-m", "partialfc.train", *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.is_file() and " step 4/" in log.read_text(), time.monotonic() + 300, "step 4", job)
        threads = len(list(Path(f"/proc/{job.pid}/task").iterdir()))
        unblocked = sigterm_unblocked_threads(job.pid)
        # One thread may let SIGTERM in: the trainer's own, waiting for it in sigwait (which unblocks it).
        assert len(unblocked) <= 1, f"{len(unblocked)} of {threads} threads let SIGTERM in: {unblocked}"
        job.send_signal(signal.SIGTERM)
        code = job.wait(timeout=120)
    finally:
        kill_job(job)
    assert code == ExitCode.PREEMPTED, (code, job.stderr.read() if job.stderr else "")
    assert "SIGTERM: stopped at step" in log.read_text()
