"""Two-node jobs on one machine, each node a host of its own: a Linux network namespace joined to the
other by a veth pair, with its own host name (a UTS namespace) that resolves to its own address (a
per-namespace hosts file), as a pod's does. Nothing here sets a variable a real operator never sets:
the nodes find each other by host name, and gloo, torchrun and the launcher see what they see in a
pod. The scheduler variables are copied from the operators' sources (see
tests/launcher/test_environment.py).

Needs root (``ip netns``, ``unshare --uts``); CI runs as root. Addresses are only put on the veth
pair between the namespaces a test creates, in 10.213.0.0/16, and everything is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from training_run import REPO, final_state, train_args

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/<file> over /etc/<file>


@dataclass(frozen=True)
class Host:
    """One node: its network namespace and address, and the host names that resolve to it."""

    namespace: str
    address: str
    names: tuple[str, ...]

    def prefix(self, hostname: str) -> tuple[str, ...]:
        """Run a command on this node under ``hostname`` (a pod's host name is its pod name)."""
        assert hostname in self.names or hostname.split(".")[0] in self.names, hostname
        return (
            "ip",
            "netns",
            "exec",
            self.namespace,
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            hostname,
        )

    def pids(self) -> list[int]:
        """Every process running on this node (in its network namespace)."""
        result = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=30)
        return [int(pid) for pid in result.stdout.split()]


def can_make_hosts() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("unshare") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def make_hosts(names: Sequence[Sequence[str]]) -> Iterator[tuple[Host, Host]]:
    """Two namespaces with ``lo`` and one end of a veth pair each, addressed 10.213.<subnet>.1 and .2;
    ``names[i]`` resolve to node i's address on both nodes. Deleted afterwards, also on failure."""
    if not can_make_hosts():
        pytest.skip("multi-node tests need root for network and UTS namespaces (CI runs as root)")
    tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
    namespaces, links = (f"pfc-{tag}-0", f"pfc-{tag}-1"), (f"pfc{tag}a", f"pfc{tag}b")
    subnet = secrets.randbelow(250) + 1
    addresses = (f"10.213.{subnet}.1", f"10.213.{subnet}.2")
    hosts_file = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n" + "".join(
        f"{address} {' '.join(node_names)}\n" for address, node_names in zip(addresses, names)
    )
    try:
        for namespace in namespaces:
            (NETNS_ETC / namespace).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / namespace / "hosts").write_text(hosts_file)
            _ip("netns", "add", namespace)
        _ip(
            "link",
            "add",
            links[0],
            "netns",
            namespaces[0],
            "type",
            "veth",
            "peer",
            "name",
            links[1],
            "netns",
            namespaces[1],
        )
        for namespace, link, address in zip(namespaces, links, addresses):
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", link)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", link, "up")
        yield tuple(
            Host(ns, address, tuple(node_names))  # type: ignore[return-value]
            for ns, address, node_names in zip(namespaces, addresses, names)
        )
    finally:
        for namespace in namespaces:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                for pid in Host(namespace, "", ()).pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)
            shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


STEPS, EVERY = 24, 8  # 2 ranks x 16 images per step; the dataset has 960 images (30 steps per epoch)
NODE_TIMEOUT_S = 180
# torch's c10d store client gives up on a missing rendezvous host after read_timeout (60 s), one
# random 30-90 s back-off and one more attempt: 146 s measured here, about 210 s at worst. The
# launcher makes it wait as long as the rendezvous join (read_timeout = join_timeout, 600 s here).
COLD_GAP_S = 225

# Pod host names per job: what a PyTorchJob (<job>-master-0, <job>-worker-<i>), an Indexed Job with a
# headless Service (<job>-<index>, subdomain <job>) and a JobSet (<jobset>-<job>-<job index>-<index>) name them.
HOSTNAMES = {
    "pj": ("pj-master-0", "pj-worker-0"),
    "pe": ("pe-worker-0", "pe-worker-1"),
    "ix": ("ix-0", "ix-1"),
    "cs": ("cs-node-0-0", "cs-node-0-1"),
}


def pytorchjob_env(node: int) -> dict[str, str]:
    """training-operator v1.9 envvar.go + master.go: Master (1) + Worker (1), nprocPerNode "1",
    pytorchjob-port 29400."""
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_PORT": "29400",
        "PET_MASTER_PORT": "29400",
        "MASTER_ADDR": "pj-master-0",
        "PET_MASTER_ADDR": "pj-master-0",
        "WORLD_SIZE": "2",
        "RANK": str(node),
        "PET_NODE_RANK": str(node),
        "PET_NPROC_PER_NODE": "1",
        "PET_NNODES": "2",
    }


def elastic_pytorchjob_env(node: int) -> dict[str, str]:
    """elastic.go: Worker (2) with elasticPolicy {minReplicas 2, maxReplicas 2, maxRestarts 3}: no node rank."""
    return {
        "PYTHONUNBUFFERED": "1",
        "PET_NPROC_PER_NODE": "1",
        "PET_RDZV_ENDPOINT": "pe-worker-0:29400",
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "2:2",
        "PET_MAX_RESTARTS": "3",
    }


def indexed_job_env(node: int) -> dict[str, str]:
    """k8s/indexed-job: JOB_COMPLETION_INDEX from Kubernetes, the rest from the manifest's env."""
    return {"JOB_COMPLETION_INDEX": str(node), "PARTIALFC_NNODES": "2", "PARTIALFC_RDZV_HOST": "ix-0.ix"}


def jobset_env(node: int) -> dict[str, str]:
    """k8s/jobset: the same, with pod 0 named <jobset>-node-0-0 under the JobSet's Service."""
    return {
        "JOB_COMPLETION_INDEX": str(node),
        "PARTIALFC_NNODES": "2",
        "PARTIALFC_RDZV_HOST": "cs-node-0-0.cs",
        "JOBSET_NAME": "cs",
    }


SCHEDULER_PREFIXES = (
    "PET_",
    "SLURM_",
    "MASTER_",
    "JOB_COMPLETION_INDEX",
    "JOBSET_",
    "PARTIALFC_",
    "RANK",
    "WORLD_SIZE",
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
    "TORCH_ELASTIC_",
    "OMP_NUM_THREADS",
)


@dataclass
class Job:
    """One two-node job: a launcher per node, each in its node's namespace under its pod's host name."""

    hosts: tuple[Host, Host]
    name: str
    make_env: Callable[[int], dict[str, str]]
    args: list[str]
    output: Path
    started: float = field(default_factory=time.perf_counter)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)  # by node
    logs: list[Path] = field(default_factory=list)
    returncodes: list[int] = field(default_factory=list)

    def start_node(self, node: int) -> subprocess.Popen:
        """Start (or start again) node ``node``'s launcher, as its pod's container would be."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
        env.update(self.make_env(node))
        # The node's own /tmp, as a pod has: the launcher keeps its exit records and metrics directory under
        # $TMPDIR, named by job and host only, so another run of this job on the machine would share them.
        temp = self.output.parent / f"{self.output.name}-node{node}-tmp"
        temp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(temp)
        log = self.output.parent / f"{self.output.name}-node{node}-{len(self.logs)}.log"
        command = [
            *self.hosts[node].prefix(HOSTNAMES[self.name][node]),
            sys.executable,
            "-m",
            "launcher",
            "--nproc-per-node",
            "1",
            "--",
            *self.args,
        ]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes[node] = process
        self.logs.append(log)
        return process

    def wait(self) -> list[int]:
        """Both launchers' exit codes; whatever still runs NODE_TIMEOUT_S from now is killed."""
        deadline = time.perf_counter() + NODE_TIMEOUT_S
        try:
            return [
                self.processes[node].wait(timeout=max(1.0, deadline - time.perf_counter()))
                for node in sorted(self.processes)
            ]
        finally:
            self.kill_all()

    def kill_node(self, node: int) -> None:
        """SIGKILL every process on the node (launcher, torchrun, workers, data workers): the node is gone."""
        for pid in self.hosts[node].pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.processes[node].wait(timeout=60)
        await_condition(lambda: not self.hosts[node].pids(), [], 60, f"node {node}'s processes to exit")

    def kill_all(self) -> None:
        for node, process in self.processes.items():
            if process.poll() is None or self.hosts[node].pids():
                self.kill_node(node)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def log_text(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}" for log in self.logs)


def training(dataset: Path, output: Path) -> list[str]:
    return train_args(
        dataset,
        output,
        "--train.max_steps",
        str(STEPS),
        "--checkpoint.every_steps",
        str(EVERY),
        "--eval.every_steps",
        "0",
        "--data.backend",
        "torch",
        "--loss.sample_rate",
        "0.5",
        "--dist.timeout_s",
        "60",
    )


def start_job(hosts, name: str, make_env, dataset: Path, output: Path) -> Job:
    output.mkdir(parents=True)
    job = Job(hosts, name, make_env, training(dataset, output), output)
    for node in range(2):
        job.start_node(node)
    return job


def await_condition(predicate: Callable[[], bool], alive: list[subprocess.Popen], timeout_s: float, what: str) -> None:
    """Poll until ``predicate()``; fail early when a process in ``alive`` exits first."""
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        exited = [p.returncode for p in alive if p.poll() is not None]
        assert not exited and time.perf_counter() < deadline, f"no {what} (exit codes {exited})"
        time.sleep(0.05)


def starts(output: Path) -> list[int]:
    """The step each (re)start of the job began at, from rank 0's train.log."""
    return [int(s) for s in re.findall(r"start at step (\d+)", (output / "train.log").read_text())]


def resumed_steps(output: Path) -> list[int]:
    found = re.findall(r"resumed from (\S+) at step (\d+)", (output / "train.log").read_text())
    for path, step in found:
        assert Path(path).name == f"step-{int(step):08d}", (path, step)
    return [int(step) for _, step in found]


def summary(output: Path) -> dict:
    try:
        return json.loads((output / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def assert_finished_like(job: Job, returncodes: list[int], reference: Path) -> None:
    assert returncodes == [0, 0], job.log_text()
    final = summary(job.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 2, STEPS), final
    expected, actual = final_state(reference), final_state(job.output)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
