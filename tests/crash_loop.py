"""A crash that repeats: local rank 1 of node 1 is SIGKILLed (as by the OOM killer) a few seconds into every
attempt of a two-node job, until the restarts are spent. Its peers, blind to its death as under NCCL
(``Host.hide_dead_peers``), stay blocked in their collective until torchrun's agents SIGTERM them.

The job is the elastic PyTorchJob variant (training-operator v1.9 elastic.go injects PET_RDZV_ENDPOINT,
PET_RDZV_BACKEND, PET_NNODES and PET_MAX_RESTARTS = elasticPolicy.maxRestarts; PET_NPROC_PER_NODE comes from
nprocPerNode, the container args repeat it), 2 nodes x 2 workers, elasticPolicy.maxRestarts 1.
tests/multinode/test_endings.py checks the outcome.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from netns_cluster import NODE_TIMEOUT_S, Host, Job, await_condition, elastic_pytorchjob_env, starts, training

WORKERS_PER_NODE = 2
ATTEMPTS = 2  # the first start and elasticPolicy.maxRestarts = 1 restart


HOST_NAMES = [("pe-worker-0",), ("pe-worker-1",)]


@dataclass
class CrashLoop:
    node1_exit: int  # node 1's container exit code
    killed: list[tuple[int, int]]  # (pid, global rank) of the SIGKILLed worker, per attempt
    first_failure: dict | None  # <run>/heartbeats/first-failure.json
    log: str  # both nodes' launcher output
    seconds: float


def run_crash_loop(hosts: tuple[Host, Host], dataset: Path, output: Path) -> CrashLoop:
    for host in hosts:
        host.hide_dead_peers()
    output.mkdir(parents=True)
    make_env = partial(elastic_pytorchjob_env, maxRestarts=1)  # Worker replicas 2, nprocPerNode "2"
    job = Job(hosts, "pe", make_env, training(dataset, output), output, nproc_per_node=WORKERS_PER_NODE)
    killed: list[tuple[int, int]] = []
    try:
        for node in range(2):
            job.start_node(node)
        for attempt in range(ATTEMPTS):

            def attempt_trains(attempt: int = attempt) -> bool:
                return (output / "train.log").exists() and len(starts(output)) > attempt

            await_condition(attempt_trains, list(job.processes.values()), NODE_TIMEOUT_S, f"attempt {attempt}")
            await_condition(lambda: 1 in hosts[1].workers(), [job.processes[1]], 60, "node 1's local rank 1")
            victim = hosts[1].workers()[1]
            environ = Path(f"/proc/{victim}/environ").read_bytes().split(b"\0")
            rank = int(next(item for item in environ if item.startswith(b"RANK=")).split(b"=")[1])
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, rank))
        node1_exit = job.processes[1].wait(timeout=NODE_TIMEOUT_S)
    finally:
        job.kill_all()
    record = output / "heartbeats" / "first-failure.json"
    return CrashLoop(
        node1_exit, killed, json.loads(record.read_text()) if record.exists() else None, job.log_text(), job.seconds
    )
