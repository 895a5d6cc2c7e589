"""``python -m launcher.agent TORCHRUN_ARGS``: torchrun, run in this process so that its report of the
failures that ended it reaches the launcher as data, and so that a lost rendezvous store is told
apart from a failed job.

torchrun prints that report (``ChildFailedError``: per failed worker its global rank, local rank, pid,
exit code or signal) and exits 1. A worker killed by a signal (the OOM killer's SIGKILL, a segfault,
NCCL's watchdog abort) records no exit code of its own, so that report is the only place its rank and
signal appear. Here torchrun's own ``parse_args`` and ``run`` (torch/distributed/run.py) run unchanged;
only the exception is written, as JSON, to the launcher's exit directory before it propagates as in
torchrun, so its output and exit code stay torchrun's.

The rendezvous store: an agent that does not host it (``is_host=false``) is a TCPStore client, and a
TCPStore client never reconnects. When the store goes (its host node died, or the external store's
process restarted), torch raises ``RendezvousConnectionError`` (a store operation of the rendezvous
failed: ``_call_store`` in torch/distributed/elastic/rendezvous/c10d_rendezvous_backend.py, e.g. in
the agent's membership check ``num_nodes_waiting`` while the workers run, or in ``next_rendezvous``
after a failure) or, from the agent's own use of the store (worker ranks, the workers' master
address), a bare ``DistNetworkError``. torchrun's agent then stops its workers (SIGTERM: they agree
to stop and save, exit 143), and this one exits STORE_LOST, which the launcher answers with a new
agent in a new rendezvous round. Every such agent first connects to the store itself, for up to
``read_timeout`` (the rendezvous conf): a store that does not answer by then ends it with
STORE_UNREACHABLE, and the launcher's container with a counted failure. ``RendezvousClosedError`` (a
peer closed the rendezvous: the job ended) and ``RendezvousTimeoutError`` (peers missing) are not
store losses and end the agent as in torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from launcher.environment import DEFAULT_RDZV_PORT, RDZV_STORE_VAR
from partialfc.common.exit_codes import AGENT_FAILURE, EXIT_DIR_VAR

# The agent's exit codes for the launcher alone (sysexits.h names); never a container's exit code.
STORE_LOST = 75  # EX_TEMPFAIL: the connection to the rendezvous store broke; start a new agent
STORE_UNREACHABLE = 69  # EX_UNAVAILABLE: the store did not answer within read_timeout


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


def store_client(args: argparse.Namespace) -> tuple[bool, int]:
    """(does this agent connect to a store it does not host, its ``read_timeout`` in seconds), read
    from torchrun's ``--rdzv-conf`` the way torch's c10d backend reads them (``_create_tcp_store``)."""
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    conf = dict(item.split("=", 1) for item in args.rdzv_conf.split(",") if "=" in item)
    params = RendezvousParameters(
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id, 1, 1, **{k.strip(): v.strip() for k, v in conf.items()}
    )
    return params.get_as_bool("is_host") is False, params.get_as_int("read_timeout", 60) or 60


def reach_store(endpoint: str, timeout_s: int) -> bool:
    """Connect to the rendezvous store as torch's c10d backend does (a TCPStore client, which retries
    a refused connection until its timeout, then once more after a back-off); True once it answers."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    host, port = parse_rendezvous_endpoint(endpoint, default_port=DEFAULT_RDZV_PORT)
    try:
        dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
    except (ValueError, RuntimeError, TimeoutError):
        return False
    return True


def keep_rendezvous_open() -> None:
    """An agent that ends (its job finished, or its worker restarts spent) leaves the rendezvous open.

    torchrun's agent closes the rendezvous when it ends (launch_agent's ``rdzv_handler.shutdown()``,
    torch/distributed/launcher/api.py), and a closed rendezvous refuses every later join of its run
    id (``_RendezvousJoinOp``: RendezvousClosedError). On node 0's store that state died with the
    store; an external store keeps it, so the replacement of a failed node, and the same job started
    again, would be refused for good. Left open, the ended agent's heartbeats stop and the rendezvous
    drops it after keep_alive_interval x keep_alive_max_attempt (15 s), so the next agents start a new
    round; peers still running wait for a replacement (join_timeout) instead of being told to stop.
    """
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler

    def leave(self: DynamicRendezvousHandler) -> bool:
        self._stop_heartbeats()
        return True

    setattr(DynamicRendezvousHandler, "shutdown", leave)  # noqa: B010 - mypy refuses assigning to a method


def main(argv: Sequence[str]) -> None:
    import torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousConnectionError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(argv))
    client, read_timeout = store_client(args)
    if os.environ.get(RDZV_STORE_VAR) == "external":
        keep_rendezvous_open()
    if client and not reach_store(args.rdzv_endpoint, read_timeout):
        print(
            f"launcher.agent: the rendezvous store at {args.rdzv_endpoint} did not answer within "
            f"read_timeout={read_timeout} s",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(STORE_UNREACHABLE)
    try:
        run(args)
    except ChildFailedError as error:
        directory = os.environ.get(EXIT_DIR_VAR)
        if directory:
            record = failure_record(error.failures, socket.gethostname())
            Path(directory, AGENT_FAILURE).write_text(json.dumps(record))
        raise
    except (RendezvousConnectionError, dist.DistNetworkError) as error:
        if not client:
            raise
        cause = error.__cause__ or error
        print(
            f"launcher.agent: lost the rendezvous store at {args.rdzv_endpoint} ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}); the workers were stopped",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(STORE_LOST)


if __name__ == "__main__":
    main(sys.argv[1:])
