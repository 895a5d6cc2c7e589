"""Stay torchrun's parent, so that the container's exit code says how the job ended.

The launcher is the container's main process (PID 1 in a pod): kubelet's SIGTERM on eviction or
drain reaches it, not torchrun. It marks that SIGTERM in the exit directory (so the workers know the
pod is being stopped, not just their group), passes SIGTERM, SIGINT and SIGHUP on to torchrun (which
passes them to the workers: they agree to stop, save a checkpoint and exit 143), waits for torchrun,
then turns the workers' recorded exit codes into its own (partialfc/common/exit_codes.py): torchrun alone
would exit 1 for a pre-emption, a config error and a crash alike. When torchrun ends on a failed
worker (launcher/agent.py wrote its report), the first failure is named on stderr and in the run's
first-failure record, where a worker killed by a signal could not write it.

When torchrun's agent lost its rendezvous store (launcher/agent.py: STORE_LOST; the store restarted,
or the node hosting it died), the launcher starts a new agent, which joins a new rendezvous round,
and the container never fails for it: under a PyTorchJob (restartPolicy OnFailure) a failed
container counts against backoffLimit, under a JobSet it restarts the whole gang. The bound is in
time: each new agent first waits for the store up to read_timeout, and one that does not answer by
then ends the container with 1, named on stderr. A new agent starts torchrun's restart budget
(``--max-restarts``, TORCHELASTIC_RESTART_COUNT) again, which is right: that budget is for worker
failures, none of which caused the new start, and a worker that keeps failing still spends a whole
budget within one agent, which then ends with the failure instead of a store loss. (A new agent's
workers also start their metrics counters again, as after any container restart.)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.agent import STORE_LOST, STORE_UNREACHABLE, describe_failure
from partialfc.common.exit_codes import (
    AGENT_FAILURE,
    EXIT_DIR_VAR,
    ExitCode,
    container_exit_code,
    first_failure,
    note_pod_sigterm,
)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalForwarder:
    """Pass every signal the launcher receives on to the running agent, once: one that arrives while no
    agent runs (between a store loss and the next start) goes to the next one, which then is not started
    at all (``received``)."""

    def __init__(self, exit_dir: Path) -> None:
        self.exit_dir = exit_dir
        self.received: list[int] = []
        self.sent = 0
        self.child: subprocess.Popen | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if signum == signal.SIGTERM:  # only the pod's own SIGTERM is a pre-emption; SIGINT/SIGHUP are not
            note_pod_sigterm(self.exit_dir)
        self.flush()

    def attach(self, child: subprocess.Popen) -> None:
        self.child = child
        self.flush()

    def flush(self) -> None:
        while self.child is not None and self.child.poll() is None and self.sent < len(self.received):
            self.sent += 1
            self.child.send_signal(self.received[self.sent - 1])


def run_torchrun(command: Sequence[str], env: Mapping[str, str], exit_dir: Path, run_dir: Path) -> int:
    """Run torchrun with ``exit_dir`` (emptied first) for the workers' records, again after each loss of
    its rendezvous store; return the job's exit code."""
    shutil.rmtree(exit_dir, ignore_errors=True)
    exit_dir.mkdir(parents=True)
    forward = SignalForwarder(exit_dir)
    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    starts = 0
    try:
        while True:
            starts += 1
            child = subprocess.Popen(list(command), env={**env, EXIT_DIR_VAR: str(exit_dir)})
            forward.attach(child)
            torchrun_code = child.wait()
            if torchrun_code == STORE_LOST:
                forget_attempt(exit_dir)
            if torchrun_code != STORE_LOST or forward.received:
                break
            print(
                f"launcher: torchrun lost its rendezvous store; starting it again for a new rendezvous round "
                f"(start {starts + 1}, not counted as a failure)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    agent_code = torchrun_code
    if agent_code in (STORE_LOST, STORE_UNREACHABLE):
        torchrun_code = ExitCode.FAILED  # the agent's own codes never reach the container
    code = container_exit_code(exit_dir, torchrun_code, sigterm_received=signal.SIGTERM in forward.received)
    if agent_code == STORE_UNREACHABLE:
        print(f"launcher: no rendezvous store to join (see above); exit {code}", file=sys.stderr, flush=True)
    report_failure(exit_dir, run_dir, code)
    return code


def forget_attempt(exit_dir: Path) -> None:
    """Drop the records of an agent that lost its store (its workers' 143: stopped by the agent, not the
    pod), so that they are not read as the job's end, nor mixed with the next agent's, which start at
    attempt 0 again; the pod's SIGTERM mark stays."""
    for path in [*exit_dir.glob("attempt-*-rank-*"), exit_dir / AGENT_FAILURE]:
        path.unlink(missing_ok=True)


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
