"""Multi-node jobs on one machine, each node a host of its own: a Linux network namespace joined to
the others through a bridge, with its own host name (a UTS namespace) that resolves to its own
address (a per-namespace hosts file), as a pod's does. Nothing here sets a variable a real operator
never sets: the nodes find each other by host name, and gloo, torchrun and the launcher see what they
see in a pod. The scheduler variables are copied from the operators' sources (see
tests/launcher/test_environment.py).

Needs root (``ip netns``, ``unshare --uts``); CI runs as root. Addresses are only put on the node ends
of the veth pairs between the namespaces a test creates, in 10.213.0.0/16 (the bridge, in a namespace
of its own, has none), and everything is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from k8s_manifests import pytorchjob_elastic_env
from training_run import REPO, final_state, train_args

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/<file> over /etc/<file>
NODE_TMP_DIRS: dict[str, set[Path]] = {}  # namespace -> the /tmp of each job node it ran (Job.tmp_dir)


@dataclass(frozen=True)
class Host:
    """One node: its network namespace and address, and the host names that resolve to it."""

    namespace: str
    address: str
    names: tuple[str, ...]
    cpu: int = 0  # the CPU its processes run on

    def prefix(self, hostname: str) -> tuple[str, ...]:
        """Run a command on this node under ``hostname`` (a pod's host name is its pod name), on the node's
        own CPU: as a pod with an exclusive cpuset (the kubelet's static CPU manager policy) sees only its
        CPUs, so torch's OpenMP pool has one thread per CPU the node has. Without it, each node of a test
        machine would size its pool to the whole machine and their threads would spin against each other
        (2.4x the CPU time of a 2-rank run measured on 2 cores)."""
        assert hostname in self.names or hostname.split(".")[0] in self.names, hostname
        return (
            "ip",
            "netns",
            "exec",
            self.namespace,
            "taskset",
            "--cpu-list",
            str(self.cpu),
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

    def runs(self, module: str) -> bool:
        """Is a ``python -m module`` process running on this node?"""
        return any(f"-m\0{module}\0".encode() in cmdline for _, cmdline in _processes(self.pids()).values())

    def workers(self) -> dict[int, int]:
        """The training workers on this node, local rank -> pid: the children of its torchrun agent."""
        found = {}
        for pid, (parent, cmdline) in _processes(self.pids()).items():
            if b"partialfc.train" in cmdline and b"launcher.agent" in _processes([parent]).get(parent, (0, b""))[1]:
                environ = dict(
                    item.split(b"=", 1) for item in _read(f"/proc/{pid}/environ").split(b"\0") if b"=" in item
                )
                if b"LOCAL_RANK" in environ:
                    found[int(environ[b"LOCAL_RANK"])] = pid
        return found

    def hide_dead_peers(self, rendezvous_port: int = 29400) -> None:
        """Make a process that dies on this node look, to its peers, as it does under NCCL: they are not told.

        A process that dies closes its sockets: the kernel sends FIN (RST where data was unread), so a gloo
        peer fails its collective at once with "Connection reset by peer". NCCL's transports (InfiniBand
        verbs, NVLink, shared memory) carry no such notice, and its peers stay blocked in the collective
        until its timeout or watchdog. Dropping this node's outgoing FIN and RST segments (loopback
        included, so its local peers too) gives gloo the same blind spot. The agents' rendezvous store
        speaks plain TCP under NCCL too, so its connections (``rendezvous_port``) keep theirs.
        """
        for flags in (("FIN,RST", "FIN"), ("RST", "RST")):
            subprocess.run(
                [
                    *("ip", "netns", "exec", self.namespace, "iptables", "-A", "OUTPUT", "-p", "tcp"),
                    *("!", "--sport", str(rendezvous_port), "!", "--dport", str(rendezvous_port)),
                    *("--tcp-flags", *flags, "-j", "DROP"),
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""  # exited meanwhile


def _processes(pids: Sequence[int]) -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of those of ``pids`` still running."""
    found = {}
    for pid in pids:
        stat, cmdline = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/cmdline")
        if stat:
            found[pid] = (int(stat.rsplit(b")", 1)[1].split()[1]), cmdline)
    return found


def can_make_hosts() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("unshare") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def make_hosts(names: Sequence[Sequence[str]]) -> Iterator[tuple[Host, ...]]:
    """A namespace per entry of ``names`` with ``lo`` and one end of a veth pair, whose other end is a
    port of a bridge in a namespace of its own; node i has 10.213.<subnet>.<i + 1>/24, and ``names[i]``
    resolve to it on every node. Deleted afterwards, also on failure."""
    if not can_make_hosts():
        pytest.skip("multi-node tests need root for network and UTS namespaces (CI runs as root)")
    tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
    namespaces = [f"pfc-{tag}-{i}" for i in range(len(names))]
    switch = f"pfc-{tag}-sw"
    subnet = secrets.randbelow(250) + 1
    addresses = [f"10.213.{subnet}.{i + 1}" for i in range(len(names))]
    hosts_file = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n" + "".join(
        f"{address} {' '.join(node_names)}\n" for address, node_names in zip(addresses, names)
    )
    try:
        _ip("netns", "add", switch)
        _ip("-n", switch, "link", "add", "bridge", "type", "bridge")
        _ip("-n", switch, "link", "set", "bridge", "up")
        for i, (namespace, address) in enumerate(zip(namespaces, addresses)):
            (NETNS_ETC / namespace).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / namespace / "hosts").write_text(hosts_file)
            _ip("netns", "add", namespace)
            link, port = f"pfc{tag}n{i}", f"pfc{tag}p{i}"
            _ip("link", "add", link, "netns", namespace, "type", "veth", "peer", "name", port, "netns", switch)
            _ip("-n", switch, "link", "set", port, "master", "bridge", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", link, "up")
        cpus = sorted(os.sched_getaffinity(0))
        yield tuple(
            Host(namespace, address, tuple(node_names), cpus[i % len(cpus)])
            for i, (namespace, address, node_names) in enumerate(zip(namespaces, addresses, names))
        )
    finally:
        for namespace in namespaces:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                for pid in Host(namespace, "", ()).pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
            shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
            for directory in NODE_TMP_DIRS.pop(namespace, ()):
                shutil.rmtree(directory, ignore_errors=True)
        for namespace in [*namespaces, switch]:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


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
    "ch": ("ch-node-0-0", "ch-node-0-1"),
    "px": ("px-worker-0", "px-worker-1", "px-worker-2"),  # tests/lost_node_zero.py: an elastic PyTorchJob, 2:3
}


# The rendezvous store's Service (k8s/common/rendezvous-store.yaml): the host name its pods reach it by.
STORE_SERVICE = "partialfc-rendezvous"


# Each job's pod environment: what its variant's manifest, Kubernetes and the operator put there for the
# job's name (Job.name) and worker count (Job.nproc_per_node). ``store=True``: the rendezvous goes through
# the rendezvous store's Service, as every shipped manifest has it (k8s/common/rendezvous-store.yaml);
# ``store=False``: node 0 hosts it, as a SLURM job or an older manifest does.
EnvFunction = Callable[["Job", int], dict[str, str]]


def pytorchjob_env(job: Job, node: int) -> dict[str, str]:
    """training-operator v1.9 envvar.go + master.go: Master (1) + Worker (1), pytorchjob-port 29400."""
    master = f"{job.name}-master-0"
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_PORT": "29400",
        "PET_MASTER_PORT": "29400",
        "MASTER_ADDR": master,
        "PET_MASTER_ADDR": master,
        "WORLD_SIZE": str(2 * job.nproc_per_node),
        "RANK": str(node),
        "PET_NODE_RANK": str(node),
        "PET_NPROC_PER_NODE": str(job.nproc_per_node),
        "PET_NNODES": "2",
    }


def elastic_pytorchjob_env(job: Job, node: int, *, store: bool = False, **elastic: object) -> dict[str, str]:
    """An elastic PyTorchJob with Worker replicas only (:func:`pytorchjob_elastic_env`), port pytorchjob-port
    29400, elasticPolicy {rdzvBackend c10d, minReplicas 2, maxReplicas 2, maxRestarts 3} updated by
    ``elastic``; with ``store`` the policy's rdzvHost/rdzvId and the manifest's PARTIALFC_RDZV_STORE as
    k8s/pytorchjob has them."""
    policy = {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2, "maxRestarts": 3}
    if store:
        policy |= {"rdzvHost": STORE_SERVICE, "rdzvId": job.name}
    env = pytorchjob_elastic_env(job.name, str(job.nproc_per_node), policy | elastic, {"pytorchjob-port": 29400})
    return env | ({"PARTIALFC_RDZV_STORE": "external"} if store else {})


def indexed_job_env(job: Job, node: int, *, store: bool = False) -> dict[str, str]:
    """k8s/indexed-job: JOB_COMPLETION_INDEX from Kubernetes, the rest from the manifest's env (pod 0 is
    <job>-0 under the headless Service <job>)."""
    return {"JOB_COMPLETION_INDEX": str(node), "PARTIALFC_NNODES": "2", **_rendezvous_env(job, f"{job.name}-0", store)}


def jobset_env(job: Job, node: int, *, store: bool = False) -> dict[str, str]:
    """k8s/jobset: the same, JOBSET_NAME from the pod's label, pod 0 <jobset>-node-0-0 under the Service <jobset>."""
    return {
        "JOB_COMPLETION_INDEX": str(node),
        "PARTIALFC_NNODES": "2",
        "JOBSET_NAME": job.name,
        **_rendezvous_env(job, f"{job.name}-node-0-0", store),
    }


def _rendezvous_env(job: Job, pod_zero: str, store: bool) -> dict[str, str]:
    if store:
        return {"PARTIALFC_RDZV_HOST": STORE_SERVICE, "PARTIALFC_RDZV_STORE": "external", "PET_RDZV_ID": job.name}
    return {"PARTIALFC_RDZV_HOST": f"{pod_zero}.{job.name}"}


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
    """One multi-node job: a launcher per node, each in its node's namespace under its pod's host name."""

    hosts: tuple[Host, ...]
    name: str
    make_env: EnvFunction
    args: list[str]
    output: Path
    started: float = field(default_factory=time.perf_counter)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)  # by node
    logs: list[Path] = field(default_factory=list)
    returncodes: list[int] = field(default_factory=list)
    nproc_per_node: int = 1  # the manifests' `--nproc-per-node` argument
    launcher_args: tuple[str, ...] = ()  # more launcher options from the container's args

    def tmp_dir(self, node: int) -> Path:
        """Node ``node``'s /tmp: each pod has its own (an emptyDir in the manifests), so jobs running side
        by side never share the launcher's node-local exit and metrics directories. Short, under the
        machine's /tmp: torch's DataLoader hands tensors over through a Unix socket made there
        (multiprocessing's resource sharer), whose path may not exceed 107 bytes."""
        digest = hashlib.sha1(str(self.output).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"pfc-{digest}-node{node}"

    def start_node(self, node: int) -> subprocess.Popen:
        """Start (or start again) node ``node``'s launcher, as its pod's container would be."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"  # the image's ENV (docker/Dockerfile)
        env.update(self.make_env(self, node))
        self.tmp_dir(node).mkdir(exist_ok=True)
        NODE_TMP_DIRS.setdefault(self.hosts[node].namespace, set()).add(self.tmp_dir(node))
        env["TMPDIR"] = str(self.tmp_dir(node))
        log = self.output.parent / f"{self.output.name}-node{node}-{len(self.logs)}.log"
        command = [
            *self.hosts[node].prefix(HOSTNAMES[self.name][node]),
            sys.executable,
            "-m",
            "launcher",
            "--nproc-per-node",
            str(self.nproc_per_node),
            *self.launcher_args,
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

    def wait(self, timeout_s: float = NODE_TIMEOUT_S) -> list[int]:
        """The launchers' exit codes, by node; whatever still runs ``timeout_s`` from now is killed."""
        deadline = time.perf_counter() + timeout_s
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


def start_store(host: Host, log: Path) -> subprocess.Popen:
    """``python -m launcher store`` on ``host``, as the store Deployment's container runs it."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [*host.prefix(STORE_SERVICE), sys.executable, "-m", "launcher", "store"],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def training(dataset: Path, output: Path) -> list[str]:
    return train_args(
        dataset,
        output,
        "--train.max_steps",
        str(STEPS),
        "--checkpoint.every_steps",
        str(EVERY),
        "--eval.verify.every_steps",
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
