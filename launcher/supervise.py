"""Stay torchrun's parent, so that the container's exit code says how the job ended.

The launcher is the container's main process (PID 1 in a pod): kubelet's SIGTERM on eviction or
drain reaches it, not torchrun. It marks that SIGTERM in the exit directory (so the workers know the
pod is being stopped, not just their group), passes SIGTERM, SIGINT and SIGHUP on to torchrun (which
passes them to the workers: they agree to stop, save a checkpoint and exit 143), waits for torchrun,
then turns the workers' recorded exit codes into its own (partialfc/exit_codes.py): torchrun alone
would exit 1 for a pre-emption, a config error and a crash alike. When torchrun ends on a failed
worker (launcher/agent.py wrote its report), the first failure is named on stderr and in the run's
first-failure record, where a worker killed by a signal could not write it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.agent import describe_failure
from partialfc.exit_codes import AGENT_FAILURE, EXIT_DIR_VAR, container_exit_code, note_pod_sigterm
from partialfc.watchdog import first_failure

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_torchrun(command: Sequence[str], env: Mapping[str, str], exit_dir: Path, run_dir: Path) -> int:
    """Run torchrun with ``exit_dir`` (emptied first) for the workers' records; return the job's exit code."""
    shutil.rmtree(exit_dir, ignore_errors=True)
    exit_dir.mkdir(parents=True)
    received: list[int] = []
    child = subprocess.Popen(list(command), env={**env, EXIT_DIR_VAR: str(exit_dir)})

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGTERM:  # only the pod's own SIGTERM is a pre-emption; SIGINT/SIGHUP are not
            note_pod_sigterm(exit_dir)
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        torchrun_code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = container_exit_code(exit_dir, torchrun_code, sigterm_received=signal.SIGTERM in received)
    report_failure(exit_dir, run_dir, code)
    return code


def report_failure(exit_dir: Path, run_dir: Path, code: int) -> None:
    """Name torchrun's first failed worker on stderr and, unless a worker named its own error first,
    in ``<run>/heartbeats/first-failure.json`` (what the peers and the next start read)."""
    try:
        record = json.loads((exit_dir / AGENT_FAILURE).read_text())
    except (OSError, ValueError):
        return
    line = describe_failure(record)
    first_rank, first_line = first_failure(run_dir / "heartbeats", record["first"]["rank"], line)
    print(f"launcher: torchrun stopped: {line}; exit {code}", file=sys.stderr, flush=True)
    if first_line != line:
        print(f"launcher: first failure recorded in the run: rank {first_rank}: {first_line}", file=sys.stderr)
