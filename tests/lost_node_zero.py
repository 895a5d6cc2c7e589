"""No node is special: jobs whose rendezvous store runs on a host of its own (``python -m launcher
store``, as the Deployment of k8s/common/rendezvous-store.yaml runs it, reached by its Service name)
lose node 0, the node that used to host the store, and go on.

The elastic PyTorchJob (3 nodes, 2:3) goes through everything that used to end it, in order:

1. node 0 is lost for good (every process on it SIGKILLed): the other two restart in place and train a
   phase on two nodes, the class centres re-sharded from three to two, until a checkpoint at two;
2. the store's pod is stopped (SIGTERM, as kubelet stops it) and comes back: the two launchers start
   new torchrun agents, uncounted, which wait for the store;
3. meanwhile a replacement for node 0, with its host name, starts; when the store is back all three
   join one new rendezvous round, and the job finishes on three nodes.

Each phase starts on what the job did (a checkpoint, a start record, an agent waiting), never after a
fixed sleep, and nothing trains while the store is away, so no phase races the training. The Indexed
Job (2 nodes, the reference manifest) then loses node 0, whose replacement the Job controller starts
at once. Both take minutes, mostly waiting (heartbeat expiry, rendezvous rounds, restarts);
tests/multinode/test_rendezvous_store.py checks the outcomes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from netns_cluster import (
    EVERY,
    NODE_TIMEOUT_S,
    STORE_SERVICE,
    Host,
    Job,
    await_condition,
    elastic_pytorchjob_env,
    indexed_job_env,
    start_store,
    training,
)

HOST_NAMES = [  # the nodes of both jobs, then the store's host
    ("px-worker-0", "ix-0", "ix-0.ix"),
    ("px-worker-1", "ix-1", "ix-1.ix"),
    ("px-worker-2",),
    (STORE_SERVICE,),
]


# Worker replicas 3, nprocPerNode "1", elasticPolicy {minReplicas 2, maxReplicas 3, rdzvConf
# [last_call_timeout: 5]} through the store: last_call_timeout is how long a round of 2 waits for a third
# node (torch's default, 30 s, would only make the test slower).
ELASTIC_ENV = partial(
    elastic_pytorchjob_env, store=True, maxReplicas=3, rdzvConf=[{"key": "last_call_timeout", "value": "5"}]
)


@dataclass
class Outcome:
    output: Path  # the run directory
    returncodes: list[int]  # the launchers' (node 0: its replacement's)
    node_logs: dict[int, list[str]]  # node -> the whole output of each launcher started for it, in order
    starts: list[dict]  # the run's "start" records: world size, start step, torchrun's restart count
    # seconds to the first training step after: "loss" (node 0 SIGKILLed), "store" (the store came back),
    # "start" (the launchers started)
    waited: dict[str, float]
    log: str  # the end of every launcher's output and the store's, for assertion messages
    seconds: float
    checkpoints: dict[int, int] = field(default_factory=dict)  # step -> world size, as seen during the run
    store_exit: int | None = None  # the stopped store process's exit code


def records(output: Path, event: str) -> list[dict]:
    """The run record's ``event`` records (train_log.jsonl: one JSON object a line, each with its time)."""
    path = output / "train_log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in (json.loads(line) for line in lines if line.endswith("}")) if r["event"] == event]


def first_step_after(output: Path, since: float, world_size: int) -> float | None:
    """Seconds from ``since`` to the first step of the first start at ``world_size`` begun after it."""
    begun = [r["time"] for r in records(output, "start") if r["time"] > since and r["world_size"] == world_size]
    steps = [r["time"] for r in records(output, "step") if begun and r["time"] > begun[0]]
    return steps[0] - since if steps else None


def checkpoints(output: Path) -> dict[int, int]:
    """Step -> world size of every complete checkpoint now in the run (older ones are pruned)."""
    found = {}
    for meta in (output / "checkpoints").glob("step-*/meta.json"):
        manifest = json.loads(meta.read_text())
        found[manifest["step"]] = manifest["world_size"]
    return found


RELAUNCHED = "launcher: torchrun lost its rendezvous store; starting it again"


class Run:
    """A job and its store, the seconds each phase waited, and the checkpoints seen along the way."""

    def __init__(self, job: Job, store_host: Host) -> None:
        self.job, self.store_host = job, store_host
        self.store_log = job.output.parent / f"{job.output.name}-store.log"
        self.store = start_store(store_host, self.store_log)
        self.waited: dict[str, float] = {}
        self.seen: dict[int, int] = {}

    def logs(self, node: int) -> list[str]:
        """The output of each launcher started for node ``node``, in start order."""
        return [log.read_text(errors="replace") for log in self.job.logs if f"-node{node}-" in log.name]

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.job.processes.values() if p.poll() is None]

    def trains_on(self, world_size: int, since: float, what: str) -> None:
        """Wait for the first step on ``world_size`` ranks begun after ``since``; keep the seconds."""

        def stepped() -> bool:
            self.seen.update(checkpoints(self.job.output))
            seconds = first_step_after(self.job.output, since, world_size)
            if seconds is not None:
                self.waited[what] = seconds
            return seconds is not None

        await_condition(stepped, self.alive(), NODE_TIMEOUT_S, f"a step on {world_size} node(s) after: {what}")

    def outcome(self, returncodes: list[int], store_exit: int | None = None) -> Outcome:
        self.seen.update(checkpoints(self.job.output))
        log = self.job.log_text() + f"\n--- {self.store_log.name}\n{self.store_log.read_text()[-3000:]}"
        output, nodes = self.job.output, sorted(self.job.processes)
        return Outcome(
            output,
            returncodes,
            {node: self.logs(node) for node in nodes},
            records(output, "start"),
            self.waited,
            log,
            self.job.seconds,
            self.seen,
            store_exit,
        )


def run_elastic(hosts: tuple[Host, ...], dataset: Path, output: Path) -> Outcome:
    """The three phases of the module docstring on the elastic PyTorchJob."""
    *nodes, store_host = hosts
    output.mkdir(parents=True)
    run = Run(Job(tuple(nodes), "px", ELASTIC_ENV, training(dataset, output), output), store_host)
    job = run.job
    try:
        await_condition(lambda: "listening" in run.store_log.read_text(), [run.store], NODE_TIMEOUT_S, "the store")
        for node in range(3):
            job.start_node(node)
        first = output / "checkpoints" / f"step-{EVERY:08d}"
        await_condition(first.exists, run.alive(), NODE_TIMEOUT_S, f"checkpoint {EVERY}")

        lost_at = time.time()  # 1. node 0 is gone for good
        job.kill_node(0)
        run.trains_on(2, lost_at, "loss")
        await_condition(lambda: 2 in checkpoints(output).values(), run.alive(), NODE_TIMEOUT_S, "a checkpoint on 2")
        run.seen.update(checkpoints(output))

        run.store.send_signal(signal.SIGTERM)  # 2. the store's pod is stopped
        store_exit = run.store.wait(timeout=60)
        job.start_node(0)  # 3. node 0's replacement starts, and the store comes back once every agent waits for it

        def waiting() -> bool:
            relaunched = all(RELAUNCHED in run.logs(node)[-1] for node in (1, 2))
            return relaunched and all(host.runs("launcher.agent") for host in nodes)

        await_condition(waiting, run.alive(), NODE_TIMEOUT_S, "three agents waiting for the store")
        back_at = time.time()
        run.store = start_store(store_host, run.store_log)
        run.trains_on(3, back_at, "store")
        return run.outcome(job.wait(), store_exit)
    finally:
        job.kill_all()
        run.store.kill()
        run.store.wait()


def run_indexed(hosts: tuple[Host, ...], dataset: Path, output: Path) -> Outcome:
    """The Indexed Job loses node 0 after checkpoint EVERY; the Job controller starts its replacement."""
    output.mkdir(parents=True)
    run = Run(Job(hosts[:2], "ix", partial(indexed_job_env, store=True), training(dataset, output), output), hosts[-1])
    job = run.job
    try:
        await_condition(lambda: "listening" in run.store_log.read_text(), [run.store], NODE_TIMEOUT_S, "the store")
        started_at = time.time()
        for node in range(2):
            job.start_node(node)
        run.trains_on(2, started_at, "start")  # what a JobSet's gang restart costs once its pods run
        first = output / "checkpoints" / f"step-{EVERY:08d}"
        await_condition(first.exists, run.alive(), NODE_TIMEOUT_S, f"checkpoint {EVERY}")
        lost_at = time.time()
        job.kill_node(0)
        job.start_node(0)
        run.trains_on(2, lost_at, "loss")
        return run.outcome(job.wait())
    finally:
        job.kill_all()
        run.store.kill()
        run.store.wait()
