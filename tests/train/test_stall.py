"""A stalled rank is named by the watchdog well before the collective timeout (docs/operations.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from training_run import kill_job, start_job, train_args, training_command, training_env, wait_for

from partialfc.common.exit_codes import EXIT_DIR_VAR, ExitCode

STALL_TIMEOUT_S = 6


def test_a_stopped_rank_is_named_within_the_stall_timeout(tiny_dataset, tmp_path):
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
        "--data.backend",
        "torch",
        "--train.stall_timeout_s",
        str(STALL_TIMEOUT_S),
        "--dist.timeout_s",
        "600",
    )
    console = (tmp_path / "console.txt").open("w")
    exit_dir = tmp_path / "exit"  # where the launcher has its workers record their exit codes
    env = {**training_env(), EXIT_DIR_VAR: str(exit_dir)}
    job = start_job(training_command(2, args), env, stdout=console, stderr=subprocess.STDOUT)
    log, heartbeat = output / "train.log", output / "heartbeats" / "rank-00001.json"
    stopped_pid = None
    try:
        wait_for(
            lambda: heartbeat.is_file() and log.is_file() and " step 4/" in log.read_text(),
            time.monotonic() + 180,
            "step 4",
            job,
        )
        stopped_pid = json.loads(heartbeat.read_text())["pid"]
        os.kill(stopped_pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: "stall: " in log.read_text(), stopped_at + STALL_TIMEOUT_S + 30, "the stall report", job)
        named_after = time.monotonic() - stopped_at
        os.kill(stopped_pid, signal.SIGKILL)  # a frozen process ignores torchrun's SIGTERM until then
        job.wait(timeout=120)
    finally:
        console.close()
        kill_job(job)  # the stopped rank too, if the test failed before it was killed
    report = next(line for line in log.read_text().splitlines() if "stall: " in line)
    assert "rank 1 not responding" in report and f"pid {stopped_pid}" in report, report
    assert "rank 0 made no step progress" in report, report
    assert STALL_TIMEOUT_S <= named_after <= STALL_TIMEOUT_S + 20, named_after
    assert job.returncode != 0
    # torchrun exits 1 whatever failed: the record says it was a stall (rank 1 was frozen, then killed).
    assert {path.name: path.read_text() for path in exit_dir.iterdir()} == {
        "attempt-00000-rank-000000": str(int(ExitCode.STALLED))
    }
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "failed" and "rank 1 not responding" in summary["error"]
    console_text = (tmp_path / "console.txt").read_text()
    assert "StallError: stall: rank 0 made no step progress" in console_text, console_text[-3000:]
