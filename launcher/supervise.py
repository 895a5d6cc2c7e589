"""Stay torchrun's parent, so that the container's exit code says how the job ended.

The launcher is the container's main process (PID 1 in a pod): kubelet's SIGTERM on eviction or
drain reaches it, not torchrun. It passes SIGTERM, SIGINT and SIGHUP on to torchrun (which passes
them to the workers: they agree to stop, save a checkpoint and exit 143), waits for torchrun, then
turns the workers' recorded exit codes into its own (partialfc/exit_codes.py): torchrun alone
would exit 1 for a pre-emption, a config error and a crash alike.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from partialfc.exit_codes import EXIT_DIR_VAR, container_exit_code

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_torchrun(command: Sequence[str], env: Mapping[str, str], exit_dir: Path) -> int:
    """Run torchrun with ``exit_dir`` (emptied first) for the workers' records; return the job's exit code."""
    shutil.rmtree(exit_dir, ignore_errors=True)
    exit_dir.mkdir(parents=True)
    received: list[int] = []
    child = subprocess.Popen(list(command), env={**env, EXIT_DIR_VAR: str(exit_dir)})

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        torchrun_code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return container_exit_code(exit_dir, torchrun_code, sigterm_received=signal.SIGTERM in received)
