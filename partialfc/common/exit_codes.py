"""How a training job ends, as an exit code: one table for the trainer, the launcher, ``--help`` and
docs/operations.md.

Under torchrun a worker's exit code never reaches the container: torchrun exits 1 for any failed
worker and on SIGTERM. So each worker records its code in a node-local directory that the launcher
names (``PARTIALFC_EXIT_DIR``), and the launcher, which stays torchrun's parent, makes the records
the container's exit code; Kubernetes failure policies can then tell a pre-emption (143) from a
config error (2) or a crash (1). A deterministic end (2, 3) also stops this node's torchrun agent:
restarting the workers would only end the same way.

143 means "the pod was asked to stop": the launcher saw SIGTERM (and marks it in the directory before
passing it on), or the ranks agreed to stop and saved. torchrun's agent also SIGTERMs a node's workers
when a worker crashed; a worker that gets that SIGTERM while blocked in a collective (NCCL keeps the
peers of a dead rank blocked) records a failure, so a crash never reads as a pre-emption.
"""

from __future__ import annotations

import json
import os
import signal
from enum import IntEnum
from pathlib import Path

EXIT_DIR_VAR = "PARTIALFC_EXIT_DIR"
POD_SIGTERM = "pod-sigterm"  # written by the launcher when the container's main process gets SIGTERM
AGENT_FAILURE = "agent-failure.json"  # torchrun's report of the worker failures that ended it


class ExitCode(IntEnum):
    FINISHED = 0
    FAILED = 1
    CONFIG = 2
    DIVERGED = 3
    STALLED = 4
    PREEMPTED = 143  # 128 + SIGTERM

    @property
    def status(self) -> str:
        """summary.json's ``status`` for this end."""
        return {0: "finished", 2: "(none)", 3: "diverged", 143: "preempted"}.get(int(self), "failed")

    @property
    def meaning(self) -> str:
        return {
            0: "trained to the end, model.pt written",
            1: "an error, or a worker killed by a signal; summary.json's error or the run's first-failure record "
            "names the rank (file, record; host and signal)",
            2: "config or dataset problem found before training; stderr names the field or path",
            3: "train.nonfinite_patience non-finite steps in a row (train.nonfinite stop)",
            4: "the stall watchdog ended the job; summary.json's error names the stalled rank",
            143: "SIGTERM (pre-emption, eviction): checkpoint saved, then stopped",
        }[int(self)]

    @property
    def retry(self) -> str:
        return {
            0: "-",
            1: "after fixing the cause",
            2: "no: fix the config",
            3: "no: it would diverge again",
            4: "yes, after finding the cause",
            143: "yes: resumes there",
        }[int(self)]

    @property
    def deterministic(self) -> bool:
        """A restart would end the same way: neither torchrun nor the scheduler should retry."""
        return self in (ExitCode.CONFIG, ExitCode.DIVERGED)


def help_text() -> str:
    """The exit-code lines of ``--help`` epilogs."""
    return "exit codes:\n" + "\n".join(f"  {int(code):>3}  {code.meaning}" for code in ExitCode)


def markdown_table() -> str:
    """docs/operations.md's table (a test keeps the two equal)."""
    rows = [
        f"| {int(code)} | `{code.status}` | {code.meaning} | {code.retry} |"
        if code.status != "(none)"
        else f"| {int(code)} | (none) | {code.meaning} | {code.retry} |"
        for code in ExitCode
    ]
    return "\n".join(["| exit | `status` | meaning | retry? |", "|---|---|---|---|", *rows])


def record_exit(code: ExitCode) -> None:
    """Worker side: leave this rank's exit code where the launcher reads it (when started by it);
    after a deterministic end, stop the torchrun agent (launcher or not) so that it does not restart
    the workers into the same end."""
    directory = os.environ.get(EXIT_DIR_VAR)
    if directory:
        _write_record(Path(directory), code)
    if code.deterministic and os.environ.get("TORCHELASTIC_RUN_ID"):
        os.kill(os.getppid(), signal.SIGTERM)  # torchrun shuts down instead of restarting the group


def note_pod_sigterm(directory: Path) -> None:
    """Launcher side: the pod itself is being stopped (drain, eviction, pre-emption)."""
    (directory / POD_SIGTERM).touch()


def pod_sigterm_noted() -> bool:
    """Worker side: did this node's launcher receive SIGTERM? Without a launcher nobody can tell which
    SIGTERM was the pod's, so a plain torchrun or single process counts every SIGTERM as one."""
    directory = os.environ.get(EXIT_DIR_VAR)
    return not directory or (Path(directory) / POD_SIGTERM).exists()


def _write_record(directory: Path, code: ExitCode) -> None:
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    rank = int(os.environ.get("RANK", "0") or 0)
    path = directory / f"attempt-{attempt:05d}-rank-{rank:06d}"
    try:  # the first code a rank records wins: the agent's SIGTERMs after a deterministic end make it exit 143
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as record:
            record.write(str(int(code)))
    except (
        OSError
    ):  # already recorded (the first code wins), or a full /tmp: the launcher falls back to torchrun's code
        return


def container_exit_code(directory: Path, torchrun_code: int, sigterm_received: bool) -> int:
    """Launcher side: the container's exit code from the workers' records of their last attempt.

    Precedence: a deterministic end (2, 3), a stall (4), a SIGTERM the launcher received and passed
    on (143: evicted), a worker's failure (1, also a worker killed by a signal: it records nothing,
    torchrun's report names it), an agreed pre-emption stop (143); else torchrun's own code
    (128 + N when torchrun itself was killed by signal N).
    """
    records = sorted(directory.glob("attempt-*-rank-*")) if directory.is_dir() else []
    last_attempt = records[-1].name.split("-rank-")[0] if records else ""
    codes = {int(path.read_text()) for path in records if path.name.startswith(last_attempt + "-")}
    if torchrun_code == 0:
        return ExitCode.FINISHED
    for code in (ExitCode.CONFIG, ExitCode.DIVERGED, ExitCode.STALLED):
        if code in codes:
            return code
    if sigterm_received:
        return ExitCode.PREEMPTED
    if ExitCode.FAILED in codes or (directory / AGENT_FAILURE).exists():
        return ExitCode.FAILED
    if ExitCode.PREEMPTED in codes:
        return ExitCode.PREEMPTED
    return 128 - torchrun_code if torchrun_code < 0 else (torchrun_code or ExitCode.FAILED)


_FAILURE = "first-failure.json"


def clear_failure(directory: Path) -> None:
    (directory / _FAILURE).unlink(missing_ok=True)


def first_failure(directory: Path, rank: int, message: str) -> tuple[int, str]:
    """Record this rank's failure unless one is already recorded; return the first one (rank, message).

    A rank that fails on its own (a bad record, a full disk) records the cause before its process
    ends; its peers then fail inside a collective with a bare connection error, and read the cause
    here, so every rank reports the same line.
    """
    path = directory / _FAILURE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as f:  # exclusive: only the first writer wins
            json.dump({"rank": rank, "message": message}, f)
        return rank, message
    except FileExistsError:
        try:
            recorded = json.loads(path.read_text())
            return int(recorded["rank"]), str(recorded["message"])
        except (OSError, ValueError, KeyError):
            return rank, message
    except OSError:
        return rank, message
