"""One chaos run: a two-node JobSet job (tests/netns_cluster.py; JOB_COMPLETION_INDEX and the manifest's
PARTIALFC_NNODES / PARTIALFC_RDZV_HOST, the container args' `--max-restarts`) meets, in order:

1. a worker SIGKILLed (as by the OOM killer);
2. a node's pod SIGTERMed with grace (a drain) and replaced;
3. a rank SIGSTOPped past the stall timeout, then continued;
4. the newest checkpoint truncated, then a worker SIGKILLed (the resume must skip it);
5. a checkpoint write failing with ENOSPC (the run directory is on a small tmpfs that the script fills),
   the disk freed again once the failure is seen.

It must end with exit 0 and weights bit-identical to a fault-free run of the same steps, and each fault's
effect must be what docs/operations.md's truth table predicts (tests/endings_table.py): the workers' exit
records and, from the row's "work lost", the step the job resumes at. The fault-free run goes first, on the
same two hosts; tests/multinode/test_chaos.py checks the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netns_cluster import Host, Job, await_condition, jobset_env, resumed_steps, starts
from training_run import fill_disk, train_args

HOST_NAMES = [("ch-node-0-0.ch", "ch-node-0-0"), ("ch-node-0-1.ch", "ch-node-0-1")]
STEPS, EVERY, STALL_S = 48, 6, 10
TMPFS_BYTES = 24 * 2**20
# A bound on each wait (a failure's, not a measurement's): the whole run takes ~3 min on a quiet 2-core machine.
NODE_TIMEOUT_S = 600


def chaos_training(dataset: Path, output: Path) -> list[str]:
    return train_args(
        dataset,
        output,
        *("--train.max_steps", str(STEPS), "--checkpoint.every_steps", str(EVERY), "--checkpoint.keep", "4"),
        *("--eval.verify.every_steps", "0", "--data.backend", "torch", "--loss.sample_rate", "0.5"),
        *("--dist.timeout_s", "60", "--train.stall_timeout_s", str(STALL_S)),
    )


@dataclass
class Fault:
    name: str
    row: str  # the truth table's row (tests/endings_table.py) that predicts its effect
    expected_resume: int  # from the row's "work lost": the newest checkpoint, or the pre-emption save
    records: dict[str, list[int]] = field(default_factory=dict)  # node -> exit codes its workers recorded
    node1_exit: int | None = None  # node 1's container exit, where the fault ended it
    resumed_at: int = -1  # the step the restarted group resumed at
    seconds: float = 0.0  # from the fault to the resumed group's second training line


@dataclass
class Chaos:
    returncodes: list[int]
    faults: list[Fault]
    resumed: list[int]  # every "resumed from ... at step S" of the run, in order
    reference: Path
    output: Path
    log: str
    seconds: float


def checkpoints(output: Path) -> list[int]:
    """Steps of the checkpoints a resume can load: complete (a manifest written, the directory renamed) and
    every file the size its manifest says (the run truncates one; the resume skips it)."""

    def intact(meta: Path) -> bool:
        try:
            files = json.loads(meta.read_text())["files"]
            return all((meta.parent / name).stat().st_size == entry["bytes"] for name, entry in files.items())
        except (OSError, ValueError, KeyError):
            return False  # removed meanwhile (checkpoint.keep)

    found = (output / "checkpoints").glob("step-*[0-9]/meta.json")
    return sorted(int(meta.parent.name.split("-")[1]) for meta in found if intact(meta))


def exit_records(job: Job, node: int) -> tuple[int, list[int]]:
    """(attempt, exit codes) of the newest attempt whose workers on node ``node`` recorded an exit (the
    launcher's exit directory); (-1, []) before any."""
    records = sorted(job.tmp_dir(node).glob("partialfc-exit-*/attempt-*-rank-*"))
    if not records:
        return -1, []
    last = records[-1].name.split("-rank-")[0]
    return int(last.split("-")[1]), [int(p.read_text()) for p in records if p.name.startswith(last + "-")]


def await_records(job: Job, node: int, after: int, codes: set[int], what: str) -> list[int]:
    """Wait for an attempt newer than ``after`` on node ``node`` to record one of ``codes``; return its records."""

    def recorded() -> bool:
        attempt, found = exit_records(job, node)
        return attempt > after and bool(codes & set(found))

    await_condition(recorded, [job.processes[node]], NODE_TIMEOUT_S, what)
    return exit_records(job, node)[1]


def since_last_start(output: Path) -> str:
    text = (output / "train.log").read_text() if (output / "train.log").exists() else ""
    return text[text.rfind("start at step") :] if "start at step" in text else ""


def trained_steps(output: Path) -> list[int]:
    """The steps rank 0 logged since the newest start."""
    return [int(step) for step in re.findall(r" step (\d+)/", since_last_start(output))]


def run_chaos(hosts: tuple[Host, Host], dataset: Path, output: Path, reference: Path) -> Chaos:
    began = time.perf_counter()
    _reference_run(hosts, dataset, reference)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(output)], check=True, timeout=30)
    job = Job(hosts, "ch", jobset_env, chaos_training(dataset, output), output, launcher_args=("--max-restarts", "8"))
    try:
        for node in range(2):
            job.start_node(node)
        faults = _run_faults(job, hosts, output)
        returncodes = job.wait(NODE_TIMEOUT_S)
        return Chaos(
            returncodes, faults, resumed_steps(output), reference, output, job.log_text(), time.perf_counter() - began
        )
    finally:
        job.kill_all()
        with contextlib.suppress(subprocess.SubprocessError):
            copy = output.parent / "chaos-run"  # kept for the test's comparison after the tmpfs is gone
            subprocess.run(["cp", "-a", str(output), str(copy)], timeout=60)
            subprocess.run(["umount", "-l", str(output)], check=True, timeout=30)
            output.rmdir()
            copy.rename(output)


def _reference_run(hosts: tuple[Host, Host], dataset: Path, output: Path) -> None:
    output.mkdir(parents=True)
    job = Job(hosts, "ch", jobset_env, chaos_training(dataset, output), output, launcher_args=("--max-restarts", "8"))
    for node in range(2):
        job.start_node(node)
    codes = job.wait(NODE_TIMEOUT_S)
    assert codes == [0, 0], f"the fault-free run failed: {codes}\n{job.log_text()}"


def _training(job: Job, output: Path, starts_before: int, what: str) -> None:
    """Wait until the job has started more than ``starts_before`` times and its newest start trained two steps."""

    def ready() -> bool:
        return len(starts(output)) > starts_before and len(trained_steps(output)) >= 2

    await_condition(ready, list(job.processes.values()), NODE_TIMEOUT_S, what)


def _recovered(job: Job, output: Path, starts_before: int, fault: Fault, began: float) -> Fault:
    """Wait for the group that the fault restarted to train a step; note the time it took."""
    _training(job, output, starts_before, f"training after: {fault.name}")
    fault.seconds = time.perf_counter() - began
    fault.resumed_at = resumed_steps(output)[-1]
    return fault


def _one_worker(host: Host) -> int:
    await_condition(lambda: 0 in host.workers(), [], 60, f"a worker on {host.namespace}")
    return host.workers()[0]


def _kill_worker(job: Job, hosts: tuple[Host, Host], output: Path) -> Fault:
    await_condition(
        lambda: len(checkpoints(output)) >= 2, list(job.processes.values()), NODE_TIMEOUT_S, "2 checkpoints"
    )
    starts_before, attempt = len(starts(output)), exit_records(job, 0)[0]
    began = time.perf_counter()
    os.kill(_one_worker(hosts[1]), signal.SIGKILL)
    records = await_records(job, 0, attempt, {1}, "node 0's record after the kill")
    fault = Fault("worker SIGKILLed", "worker killed by a signal", checkpoints(output)[-1], {"node0": records})
    return _recovered(job, output, starts_before, fault, began)


def _drain_node(job: Job, hosts: tuple[Host, Host], output: Path) -> Fault:
    starts_before = len(starts(output))
    began = time.perf_counter()
    job.processes[1].send_signal(signal.SIGTERM)  # kubelet's SIGTERM to the container's main process
    node1_exit = job.processes[1].wait(timeout=NODE_TIMEOUT_S)
    saved = int(json.loads((output / "summary.json").read_text())["step"])
    fault = Fault("pod drained and replaced", "pod SIGTERM", saved, {"node1": exit_records(job, 1)[1]}, node1_exit)
    job.start_node(1)  # the replacement pod, same index and host name
    return _recovered(job, output, starts_before, fault, began)


def _stall_rank(job: Job, hosts: tuple[Host, Host], output: Path) -> Fault:
    starts_before, attempt = len(starts(output)), exit_records(job, 0)[0]
    victim = _one_worker(hosts[1])
    os.kill(victim, signal.SIGSTOP)
    began = time.perf_counter()
    try:
        records = await_records(job, 0, attempt, {4}, "node 0's stall record")
    finally:
        os.kill(victim, signal.SIGCONT)
    fault = Fault("rank SIGSTOPped past the stall timeout", "stall", checkpoints(output)[-1], {"node0": records})
    return _recovered(job, output, starts_before, fault, began)


def _truncate_newest(job: Job, hosts: tuple[Host, Host], output: Path) -> Fault:
    done = checkpoints(output)[-1]
    await_condition(
        lambda: checkpoints(output)[-1] > done, list(job.processes.values()), NODE_TIMEOUT_S, "a new checkpoint"
    )
    starts_before, attempt = len(starts(output)), exit_records(job, 0)[0]
    newest = checkpoints(output)[-1]
    part = max((output / "checkpoints" / f"step-{newest:08d}").glob("*.pt"), key=lambda p: p.stat().st_size)
    began = time.perf_counter()
    os.truncate(part, part.stat().st_size // 2)
    os.kill(_one_worker(hosts[1]), signal.SIGKILL)
    records = await_records(job, 0, attempt, {1}, "node 0's record after the kill")
    fault = Fault(
        f"checkpoint {newest} truncated, a worker SIGKILLed", "worker killed by a signal", checkpoints(output)[-1]
    )
    fault.records = {"node0": records}
    return _recovered(job, output, starts_before, fault, began)


def _fill_disk(job: Job, hosts: tuple[Host, Host], output: Path) -> Fault:
    starts_before, attempt = len(starts(output)), exit_records(job, 0)[0]
    newest = checkpoints(output)[-1]
    need = sum(p.stat().st_size for p in (output / "checkpoints" / f"step-{newest:08d}").iterdir())
    filler = output / "filler"
    began = time.perf_counter()
    fill_disk(filler, leave=need // 2)  # room for logs, not for a checkpoint
    records = await_records(job, 0, attempt, {1}, "node 0's record after the failed save")
    filler.unlink()  # the operator frees space; the restarted group resumes
    fault = Fault("checkpoint write fails with ENOSPC", "checkpoint write fails", checkpoints(output)[-1])
    fault.records = {"node0": records}
    return _recovered(job, output, starts_before, fault, began)


def _run_faults(job: Job, hosts: tuple[Host, Host], output: Path) -> list[Fault]:
    faults = []
    for inject in (_kill_worker, _drain_node, _stall_rank, _truncate_newest, _fill_disk):
        faults.append(inject(job, hosts, output))
    return faults
