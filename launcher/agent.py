"""``python -m launcher.agent TORCHRUN_ARGS``: torchrun, run in this process so that its report of the
failures that ended it reaches the launcher as data.

torchrun prints that report (``ChildFailedError``: per failed worker its global rank, local rank, pid,
exit code or signal) and exits 1. A worker killed by a signal (the OOM killer's SIGKILL, a segfault,
NCCL's watchdog abort) records no exit code of its own, so that report is the only place its rank and
signal appear. Here torchrun's own ``parse_args`` and ``run`` (torch/distributed/run.py) run unchanged;
only the exception is written, as JSON, to the launcher's exit directory before it propagates as in
torchrun, so its output and exit code stay torchrun's.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from partialfc.exit_codes import AGENT_FAILURE, EXIT_DIR_VAR


def failure_record(failures: dict[int, Any], host: str) -> dict[str, Any]:
    """The JSON record of torchrun's ``ChildFailedError.failures`` (global rank -> ProcessFailure):
    the first failure (earliest, as torchrun's "Root Cause") and every failed rank."""
    ranks = [
        {
            "rank": rank,
            "local_rank": failure.local_rank,
            "pid": failure.pid,
            "exitcode": failure.exitcode,
            "signal": failure.signal_name() if failure.exitcode < 0 else None,
            "timestamp": failure.timestamp,
        }
        for rank, failure in sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    ]
    return {"host": host, "first": ranks[0], "failures": ranks}


def describe_failure(record: dict[str, Any]) -> str:
    """One line naming the first failed worker: rank, host, and its signal or exit code."""
    first = record["first"]
    how = (
        f"was killed by signal {-first['exitcode']} ({first['signal']})"
        if first["signal"]
        else f"exited with code {first['exitcode']}"
    )
    others = len(record["failures"]) - 1
    return (
        f"rank {first['rank']} (local rank {first['local_rank']}, pid {first['pid']}) on host {record['host']} {how}"
        + (f"; {others} more worker(s) failed with it" if others else "")
    )


def main(argv: Sequence[str]) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(list(argv)))
    except ChildFailedError as error:
        directory = os.environ.get(EXIT_DIR_VAR)
        if directory:
            record = failure_record(error.failures, socket.gethostname())
            Path(directory, AGENT_FAILURE).write_text(json.dumps(record))
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
