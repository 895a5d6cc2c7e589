"""In-place elastic restarts: a killed worker's group comes back in one attempt, every time.

Run the way the README and the launcher start torchrun (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1):
three SIGKILLs of a worker, each after a new checkpoint, with --max-restarts 3. Any restart that
needed a second attempt would exhaust the restarts and fail the job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from training_run import kill_job, run_job, start_job, train_args, training_env, wait_for

KILLS = 3


def test_restarts_come_up_in_one_attempt(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    args = train_args(
        tiny_dataset,
        output,
        "--train.max_steps",
        "60",
        "--checkpoint.every_steps",
        "4",
        "--eval.verify.every_steps",
        "0",
        "--data.backend",
        "torch",
        "--train.stall_timeout_s",
        "5",
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        str(KILLS),
        "-m",
        "partialfc.train",
        *args,
    ]
    console = (tmp_path / "console.txt").open("w")
    job = start_job(command, stdout=console, stderr=subprocess.STDOUT)
    log, heartbeat = output / "train.log", output / "heartbeats" / "rank-00001.json"
    restart_seconds, victims = [], [None]
    try:
        for kill in range(KILLS):
            # Each generation must get past a new checkpoint before its worker is killed.
            wait_for(
                lambda kill=kill: (
                    log.is_file()
                    and " checkpoint " in log.read_text().partition(f"(restart {kill})")[2]
                    and heartbeat.is_file()
                    and json.loads(heartbeat.read_text())["pid"] != victims[-1]
                ),
                time.monotonic() + 120,
                f"a checkpoint in generation {kill}",
                job,
            )
            victims.append(json.loads(heartbeat.read_text())["pid"])
            os.kill(victims[-1], signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(
                lambda kill=kill: f"(restart {kill + 1})" in log.read_text(), killed_at + 90, f"restart {kill + 1}", job
            )
            restart_seconds.append(time.monotonic() - killed_at)
        job.wait(timeout=300)
    finally:
        console.close()
        kill_job(job)
    text = log.read_text()
    assert job.returncode == 0, (tmp_path / "console.txt").read_text()[-3000:]
    starts = re.findall(r"start at step (\d+) \(restart (\d+)\)", text)
    assert [int(restart) for _, restart in starts] == list(range(KILLS + 1)), starts  # one attempt per kill
    assert all(int(step) > 0 for step, _ in starts[1:]), starts  # each restart resumed from a checkpoint
    assert text.count("resumed from ") == KILLS
    assert json.loads((output / "summary.json").read_text())["status"] == "finished"
    print(f"restart after SIGKILL: {', '.join(f'{s:.1f}' for s in restart_seconds)} s")


def test_restarts_without_the_variable_are_warned_about(tiny_dataset, tmp_path):
    args = train_args(tiny_dataset, tmp_path / "run", "--train.max_steps", "1", "--data.backend", "torch")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "--max-restarts",
        "1",
        "-m",
        "partialfc.train",
        *args,
    ]
    env = {k: v for k, v in training_env().items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}
    result = run_job(command, env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--max-restarts 1 but without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in result.stderr
    with_variable = run_job(command, timeout=120)
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in with_variable.stderr
