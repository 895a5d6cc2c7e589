"""The tests' own clean-up: killing a torchrun job ends every process it started, also workers that
never wrote a heartbeat (training_run.kill_job)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from training_run import job_processes, kill_job, start_job


def test_kill_job_ends_workers_that_torchrun_started_in_sessions_of_their_own():
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    job = start_job(
        [*torchrun, "--no-python", "sleep", "600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(workers := [pid for pid in job_processes(job) if pid != job.pid]) < 2:
            assert job.poll() is None, f"torchrun ended ({job.returncode}) before starting its workers"
            assert time.monotonic() < deadline, "torchrun started no workers"
            time.sleep(0.2)
        # Each worker leads a process group of its own: killing the job's group alone would leave them running.
        assert all(os.getpgid(pid) == pid != job.pid for pid in workers), workers
    finally:
        kill_job(job)
    assert job_processes(job) == []
