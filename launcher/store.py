"""``python -m launcher store``: the c10d rendezvous store as a process of its own.

torchrun's c10d rendezvous keeps its state in a ``TCPStore`` that, by default, the agent of one node
hosts (node rank 0, or the pod named in PET_RDZV_ENDPOINT). When that node goes, the store goes with
it, and the TCPStore clients of every other node have no way to reconnect: their agents fail, and an
elastic job that loses that node for good cannot continue on the others. Run here instead (a small
Deployment behind a Service, k8s/common/rendezvous-store.yaml), the store outlives every training
node; the agents connect to it as clients (``is_host=false``, launcher/command.py) exactly as they
connect to node 0's. If the store itself restarts, its state is gone: the launchers start their
agents again for a fresh rendezvous round (launcher/supervise.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta

from launcher.environment import DEFAULT_RDZV_PORT
from partialfc.common.cli import ArgumentParser
from partialfc.common.exit_codes import ExitCode

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m launcher store",
        description="Serve the c10d rendezvous store of partialfc jobs (a torch TCPStore server) until SIGTERM, "
        "then exit 0. Point each job's launcher at it: rendezvous endpoint HOST:PORT of this process and "
        "--rdzv-store external (PARTIALFC_RDZV_STORE=external); several jobs may share one store as long as "
        "each has its own rendezvous id.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_RDZV_PORT,
        metavar="P",
        help=f"TCP port to listen on; 0 picks a free one, printed at start (default: {DEFAULT_RDZV_PORT})",
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",
        metavar="H",
        help="address to listen on: 0.0.0.0 every IPv4 address, :: every IPv6 and IPv4 address, or one "
        "address of this machine (default: 0.0.0.0)",
    )
    return parser


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening: the TCPStore server takes it over, so the store
    listens exactly where asked (torch's own server socket binds every address)."""
    if ":" in host:
        return socket.create_server((host, port), family=socket.AF_INET6, backlog=1024, dualstack_ipv6=host == "::")
    return socket.create_server((host, port), backlog=1024)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    import torch.distributed as dist

    stopped: list[int] = []
    stop = threading.Event()

    def note(signum: int, frame: object) -> None:
        stopped.append(signum)
        stop.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, note)
    try:
        server = listening_socket(args.host, args.port)
    except OSError as error:
        print(f"launcher store: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return ExitCode.CONFIG
    port = server.getsockname()[1]
    store = dist.TCPStore(
        args.host,
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=60),
        master_listen_fd=server.detach(),
    )
    address = f"[{args.host}]:{port}" if ":" in args.host else f"{args.host}:{port}"
    print(
        f"launcher store: c10d rendezvous store listening on {address} (pid {os.getpid()}); SIGTERM stops it",
        flush=True,
    )
    stop.wait()
    print(f"launcher store: {signal.Signals(stopped[0]).name}: stopped, {store.num_keys()} key(s) dropped", flush=True)
    return ExitCode.FINISHED
