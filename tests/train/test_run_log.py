"""summary.json across starts of one run (docs/operations.md, "Exit codes and summary.json")."""

from __future__ import annotations

import json

from partialfc.training.run_log import RunLog


def start(run_dir, **fields) -> dict:
    """One start of the job as the trainer makes it (rank 0's RunLog, then summary updates); the summary it leaves."""
    log = RunLog(run_dir, enabled=True)
    log.update_summary(**fields)
    log.close()
    return json.loads((run_dir / "summary.json").read_text())


def test_a_start_after_a_failed_one_clears_the_error_and_keeps_the_runs_history(tmp_path):
    """The history (best_evaluation, checkpoint, model, step) survives a start that fails and the
    next one; the failed start's error does not outlive it, or a running or finished run would
    still show why an earlier start failed."""
    history = {
        "best_evaluation": {"verify/synth_val": 0.875},
        "checkpoint": str(tmp_path / "checkpoints" / "step-00000006"),
        "model": str(tmp_path / "model.pt"),
        "step": 6,
    }
    first = start(tmp_path, status="finished", **history)
    assert first["starts"] == 1 and first.get("error") is None
    failed = start(tmp_path, status="failed", error="CheckpointError: no loadable checkpoint in checkpoints")
    assert failed["starts"] == 2 and failed["error"].startswith("CheckpointError")
    assert {key: failed[key] for key in history} == history

    running = start(tmp_path, status="running", total_steps=8, world_size=1)
    assert running["status"] == "running" and running.get("error") is None, running
    assert {key: running[key] for key in history} == history
    assert running["starts"] == 3
