"""A real two-node job through the launcher: each node in its own network namespace, as a PyTorchJob
would start it, then the same job with one worker SIGKILLed mid-run and restarted by its agent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from training_run import REPO, final_state, train_args

STEPS, EVERY = 24, 8  # 2 ranks x 16 images per step; the dataset has 960 images (30 steps per epoch)
NODE_TIMEOUT_S = 150

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and /proc are Linux-only")


@dataclass
class Job:
    output: Path
    logs: list[Path]
    seconds: float
    returncodes: list[int]

    def log_text(self) -> str:
        return "\n".join(f"--- node {i}\n{log.read_text()[-6000:]}" for i, log in enumerate(self.logs))


def pytorchjob_env(master: str, port: int, node: int) -> dict[str, str]:
    """What the training operator injects into node ``node`` of a Master + Worker PyTorchJob, 1 process per node."""
    return {"MASTER_ADDR": master, "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(node),
            "PET_MASTER_ADDR": master, "PET_MASTER_PORT": str(port), "PET_NNODES": "2", "PET_NODE_RANK": str(node),
            "PET_NPROC_PER_NODE": "1", "PYTHONUNBUFFERED": "0"}


def elastic_pytorchjob_env(master: str, port: int, node: int) -> dict[str, str]:
    """What it injects into a worker of a workers-only PyTorchJob with an elasticPolicy (no node rank)."""
    return {"PET_RDZV_ENDPOINT": f"{master}:{port}", "PET_RDZV_BACKEND": "c10d", "PET_NNODES": "2:2",
            "PET_MAX_RESTARTS": "3", "PYTHONUNBUFFERED": "0"}


def node_env(hosts, node: int, scheduler_env: dict[str, str]) -> dict[str, str]:
    scheduler_prefixes = ("PET_", "SLURM_", "MASTER_", "JOB_COMPLETION_INDEX", "PARTIALFC_", "RANK", "WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(scheduler_prefixes)}
    env.update(scheduler_env, OMP_NUM_THREADS="1")
    if hosts.isolated:
        # A pod's host name resolves to its own address; the namespaces share this machine's host name,
        # so tell torchrun (PET_LOCAL_ADDR) and gloo (GLOO_SOCKET_IFNAME) which address is this node's.
        env.update(PET_LOCAL_ADDR=hosts.nodes[node].address, GLOO_SOCKET_IFNAME=hosts.nodes[node].interface)
    return env


def training(dataset: Path, output: Path) -> list[str]:
    return train_args(dataset, output, "--train.max_steps", str(STEPS), "--checkpoint.every_steps", str(EVERY),
                      "--eval.every_steps", "0", "--data.backend", "torch", "--loss.sample_rate", "0.5",
                      "--dist.timeout_s", "60")


def start_job(hosts, make_env, dataset: Path, output: Path, *launcher_args: str) -> tuple[list[subprocess.Popen], list[Path]]:
    output.mkdir(parents=True)
    processes, logs = [], []
    for node, host in enumerate(hosts.nodes):
        log = output.parent / f"{output.name}-node{node}.log"
        command = [*host.prefix, sys.executable, "-m", "launcher", *launcher_args, "--", *training(dataset, output)]
        with log.open("wb") as sink:
            processes.append(subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                              env=node_env(hosts, node, make_env(hosts.nodes[0].address, hosts.port, node)),
                                              start_new_session=True))
        logs.append(log)
    return processes, logs


def finish_job(processes: list[subprocess.Popen], logs: list[Path], output: Path, started: float) -> Job:
    try:
        codes = [process.wait(timeout=max(1.0, started + NODE_TIMEOUT_S - time.perf_counter())) for process in processes]
    finally:
        for process in processes:  # our own process groups only (start_new_session)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return Job(output, logs, time.perf_counter() - started, codes)


def worker_of(agent_pid: int) -> int:
    """The pid of the training worker whose parent is this node's torchrun agent."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == agent_pid and b"partialfc.train" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no partialfc.train worker under torchrun agent {agent_pid}")


def await_path(path: Path, processes: list[subprocess.Popen], timeout_s: float) -> None:
    """Poll until ``path`` exists; fail early when a node exits first."""
    deadline = time.perf_counter() + timeout_s
    while not path.exists():
        exited = [p.returncode for p in processes if p.poll() is not None]
        assert not exited and time.perf_counter() < deadline, f"{path} never appeared (exit codes {exited})"
        time.sleep(0.05)


def starts(output: Path) -> list[int]:
    """The step each (re)start of the job began at, from rank 0's train.log."""
    return [int(s) for s in re.findall(r"start at step (\d+)", (output / "train.log").read_text())]


@pytest.fixture(scope="module")
def plain_job(two_hosts, tiny_dataset, tmp_path_factory) -> Job:
    output = tmp_path_factory.mktemp("plain") / "run"
    started = time.perf_counter()
    processes, logs = start_job(two_hosts, pytorchjob_env, tiny_dataset, output)
    job = finish_job(processes, logs, output, started)
    print(f"\ntwo-node plain run ({'namespaces' if two_hosts.isolated else 'loopback'}): {job.seconds:.1f} s")
    return job


def test_two_nodes_train_to_the_end(plain_job):
    job = plain_job
    assert job.returncodes == [0, 0], job.log_text()
    runs = [p for p in job.output.parent.rglob("summary.json")]
    assert runs == [job.output / "summary.json"], runs
    summary = json.loads((job.output / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["step"]) == ("finished", 2, STEPS)
    assert sorted(p.name for p in job.output.parent.rglob("checkpoints")) == ["checkpoints"]
    saved = sorted(p.name for p in (job.output / "checkpoints").iterdir())
    assert saved[-1] == f"step-{STEPS:08d}" and not any(name.endswith(".partial") for name in saved), saved
    assert starts(job.output) == [0]


def test_killed_worker_restarts_and_ends_bit_identical(plain_job, two_hosts, tiny_dataset, tmp_path):
    assert plain_job.returncodes == [0, 0], "the uninterrupted run failed: " + plain_job.log_text()
    output = tmp_path / "run"
    started = time.perf_counter()
    processes, logs = start_job(two_hosts, elastic_pytorchjob_env, tiny_dataset, output, "--max-restarts", "2")
    try:
        await_path(output / "checkpoints" / f"step-{EVERY:08d}", processes, NODE_TIMEOUT_S)
        victim = worker_of(processes[1].pid)
        os.kill(victim, signal.SIGKILL)
    finally:
        job = finish_job(processes, logs, output, started)
    print(f"\ntwo-node run with a SIGKILLed worker: {job.seconds:.1f} s (killed pid {victim})")
    assert job.returncodes == [0, 0], job.log_text()
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["step"]) == ("finished", 2, STEPS)
    first, *restarts = starts(output)
    assert first == 0 and restarts, f"no restart recorded in train.log: {starts(output)}\n{job.log_text()}"
    resumed = re.findall(r"resumed from (\S+) at step (\d+)", (output / "train.log").read_text())
    assert resumed and int(resumed[-1][1]) >= EVERY and Path(resumed[-1][0]).name == f"step-{int(resumed[-1][1]):08d}"
    expected, actual = final_state(plain_job.output), final_state(output)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
