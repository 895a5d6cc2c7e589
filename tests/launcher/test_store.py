"""The external rendezvous store (``python -m launcher store``) and what the agent and the launcher do
with it on one machine: the store serves torch's c10d rendezvous and stops on SIGTERM with 0; an agent
that does not host the store waits for it up to read_timeout, tells a lost store apart from a failed
job, and leaves the rendezvous open for the next agents; the launcher starts a new agent after a lost
store, uncounted, and still ends with 143 when the pod's SIGTERM comes during the outage. The
multi-node behaviour is in tests/multinode/test_rendezvous_store.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from training_run import REPO

from launcher.agent import STORE_LOST, STORE_UNREACHABLE
from launcher.store import build_parser
from launcher.supervise import run_torchrun
from partialfc.common.exit_codes import ExitCode

TIMEOUT_S = 120


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **extra}


@dataclass
class Store:
    process: subprocess.Popen
    port: int
    banner: str

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=TIMEOUT_S)
        return self.process.returncode, out


def start_store(*args: str) -> Store:
    process = subprocess.Popen(
        [sys.executable, "-m", "launcher", "store", "--port", "0", *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    banner = process.stdout.readline()  # blocks until the store listens (or the process ended)
    match = re.search(r"listening on \S+:(\d+) ", banner)
    assert match, banner + process.stdout.read()
    return Store(process, int(match[1]), banner)


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    """One store on 127.0.0.1 for the tests that leave it running."""
    running = start_store("--host", "127.0.0.1")
    yield running
    running.process.kill()
    running.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agent(port: int, run_id: str, worker: list[str], conf: str = "", **extra: str) -> subprocess.Popen:
    """``python -m launcher.agent`` as the launcher starts it on a node that does not host the store."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "launcher.agent", "--nnodes", "1", "--nproc-per-node", "1"),
            *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id),
            *("--rdzv-conf", f"is_host=false,read_timeout=30{conf}", "--max-restarts", "0"),
            *("--no-python", *worker),
        ],
        cwd=REPO,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_store_serves_the_c10d_rendezvous_only_where_asked(store):
    """What the Deployment relies on: a TCP readiness probe (connect, close) leaves the store serving and
    torch's rendezvous client reads and writes it; ``--host 127.0.0.1`` binds that address alone; a port
    in use is an error naming it, exit 2."""
    import torch.distributed as dist

    assert f"on 127.0.0.1:{store.port} (pid {store.process.pid})" in store.banner
    socket.create_connection(("127.0.0.1", store.port), timeout=10).close()
    client = dist.TCPStore("127.0.0.1", store.port, is_master=False, timeout=timedelta(seconds=30))
    client.set("torch.rendezvous.job", "state")
    assert client.get("torch.rendezvous.job") == b"state"
    with pytest.raises(ConnectionRefusedError):  # 127.0.0.2 is this machine too, but another address
        socket.create_connection(("127.0.0.2", store.port), timeout=5).close()
    taken = subprocess.run(
        [sys.executable, "-m", "launcher", "store", "--host", "127.0.0.1", "--port", str(store.port)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert taken.returncode == 2, taken.stdout + taken.stderr
    assert f"launcher store: cannot listen on 127.0.0.1:{store.port}" in taken.stderr


def test_store_help_explains_every_option():
    text = " ".join(build_parser().format_help().split())
    assert "usage: python -m launcher store" in text and "until SIGTERM, then exit 0" in text
    assert "--port P TCP port to listen on" in text and "(default: 29400)" in text
    assert "--host H address to listen on" in text and "(default: 0.0.0.0)" in text
    assert "--rdzv-store external" in text and "rendezvous id" in text


def test_agent_rejoins_a_store_it_ran_on_before(store):
    """The rendezvous stays open when an agent ends, so the same job id runs again on the same store, as a
    replaced node or a re-submitted job does. torch's agent closes it (launch_agent's shutdown), and the
    second run is refused ("... is closed"), as it is without PARTIALFC_RDZV_STORE=external."""
    for _ in range(2):
        run = agent(store.port, "again", ["true"], PARTIALFC_RDZV_STORE="external")
        out, _ = run.communicate(timeout=TIMEOUT_S)
        assert run.returncode == 0, out


def test_agent_tells_a_lost_store_from_a_failed_job_and_the_store_stops_with_0(tmp_path):
    """kubelet stops the store (SIGTERM: exit 0) while a worker runs: the agent stops the worker (SIGTERM)
    and exits STORE_LOST."""
    lost = start_store("--host", "127.0.0.1")
    started = tmp_path / "started"
    worker = [sys.executable, "-c", f"import time, pathlib; pathlib.Path({str(started)!r}).touch(); time.sleep(300)"]
    running = agent(lost.port, "lost", worker, PARTIALFC_RDZV_STORE="external")
    deadline = time.monotonic() + TIMEOUT_S
    while not started.exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()[0]
        time.sleep(0.05)
    code, out = lost.stop()
    assert code == 0 and "launcher store: SIGTERM: stopped" in out, out
    out, _ = running.communicate(timeout=TIMEOUT_S)
    assert running.returncode == STORE_LOST, out
    assert f"launcher.agent: lost the rendezvous store at 127.0.0.1:{lost.port}" in out, out
    assert re.search(r"Sending process \d+ closing signal SIGTERM", out), out


def test_agent_waits_for_the_store_up_to_read_timeout(tmp_path):
    """No store: exit STORE_UNREACHABLE after read_timeout (torch's client: the timeout, a back-off of
    up to 3 s for a 3 s timeout here, one more try), naming the endpoint."""
    port = free_port()
    started = time.monotonic()
    missing = agent(port, "none", ["true"], ",read_timeout=3")
    out, _ = missing.communicate(timeout=TIMEOUT_S)
    assert missing.returncode == STORE_UNREACHABLE, out
    assert f"the rendezvous store at 127.0.0.1:{port} did not answer within read_timeout=3 s" in out
    assert time.monotonic() - started >= 3


# ---------------------------------------------------------------------- the launcher's loop (launcher/supervise.py)
FAKE_AGENT = textwrap.dedent(
    """
    # A stand-in for launcher.agent: its start number is the number of lines in COUNT; it ends as PLAN says.
    import os, pathlib, signal, sys, time
    count = pathlib.Path(sys.argv[1])
    start = len(count.read_text().splitlines()) + 1 if count.exists() else 1
    count.write_text(count.read_text() + "x\\n" if count.exists() else "x\\n")
    plan = sys.argv[2].split(",")[start - 1]
    exit_dir = pathlib.Path(os.environ["PARTIALFC_EXIT_DIR"])
    if plan in ("75", "wait"):  # the real agent's workers, stopped by it when the store went, recorded 143
        (exit_dir / "attempt-00000-rank-000000").write_text("143")
    if plan == "wait":  # waiting for the store; the signal comes as it reports the store lost
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: sys.exit(75))
        (exit_dir.parent / (exit_dir.name + ".waiting")).touch()
        time.sleep(300)
    sys.exit(int(plan))
    """
)


def supervise(tmp_path: Path, plan: str) -> int:
    """``run_torchrun`` with FAKE_AGENT as the agent, in this process (its signal handlers are restored
    when it returns)."""
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    command = [sys.executable, str(script), str(tmp_path / "starts"), plan]
    return run_torchrun(command, dict(os.environ), tmp_path / "exit", tmp_path / "run")


def starts(tmp_path: Path) -> int:
    return len((tmp_path / "starts").read_text().splitlines())


def test_launcher_starts_a_new_agent_after_each_lost_store_uncounted(tmp_path, capsys):
    """Two store losses, then the job finishes: exit 0 after three agents."""
    assert supervise(tmp_path, f"{STORE_LOST},{STORE_LOST},0") == 0
    assert starts(tmp_path) == 3
    err = capsys.readouterr().err
    assert "starting it again for a new rendezvous round (start 2, not counted as a failure)" in err
    assert "(start 3, not counted as a failure)" in err


def test_launcher_forgets_the_records_of_an_agent_that_lost_its_store(tmp_path):
    """The lost agent's workers recorded 143 (stopped, saved); the next agent fails before its workers
    record anything: exit 1, counted. Read with the old records, it would pass for a pre-emption."""
    assert supervise(tmp_path, f"{STORE_LOST},1") == ExitCode.FAILED


def test_launcher_gives_up_with_a_counted_failure_when_the_store_does_not_come_back(tmp_path, capsys):
    assert supervise(tmp_path, f"{STORE_LOST},{STORE_UNREACHABLE}") == ExitCode.FAILED
    assert "launcher: no rendezvous store to join (see above); exit 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("signum", "expected"), [(signal.SIGTERM, ExitCode.PREEMPTED), (signal.SIGHUP, ExitCode.FAILED)]
)
def test_a_signal_during_a_store_outage_ends_the_launcher(tmp_path, signum, expected):
    """The pod is evicted (SIGTERM) while its new agent waits for the store, which then reports the store
    lost: 143, not counted by any shipped policy, and no further agent is started. Any other signal ends
    it as a failure: the lost agent's workers' 143 (stopped by their agent) is no pre-emption."""

    def interrupt() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not (tmp_path / "exit.waiting").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)  # to the launcher, PID 1 of the container

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        assert supervise(tmp_path, f"{STORE_LOST},wait,0") == expected
    finally:
        interrupter.join()
    assert starts(tmp_path) == 2
