"""Real two-node jobs through the launcher, each node a host of its own (tests/netns_cluster.py),
started with exactly what each scheduler injects: an uninterrupted run; a worker SIGKILLed and
restarted in place; a node replaced mid-run; a node evicted (SIGTERM) and brought back, its 143 not
counted by any shipped failure policy (tests/k8s_policies.py). Each interrupted run must end
bit-identical to the uninterrupted one."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

import pytest
from endings_table import ending
from k8s_policies import Pod, policy_verdicts
from netns_cluster import (
    EVERY,
    NODE_TIMEOUT_S,
    STEPS,
    Host,
    Job,
    assert_finished_like,
    await_condition,
    elastic_pytorchjob_env,
    indexed_job_env,
    make_hosts,
    pytorchjob_env,
    resumed_steps,
    start_job,
    starts,
    summary,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and /proc are Linux-only")


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[tuple[Host, Host]]:
    with make_hosts(
        [("pj-master-0", "pe-worker-0", "ix-0.ix", "ix-0"), ("pj-worker-0", "pe-worker-1", "ix-1.ix", "ix-1")]
    ) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def plain_job(two_hosts, tiny_dataset, tmp_path_factory) -> Job:
    job = start_job(two_hosts, "pj", pytorchjob_env, tiny_dataset, tmp_path_factory.mktemp("plain") / "run")
    job.returncodes = job.wait()
    print(f"\ntwo-node plain run (PyTorchJob Master + Worker): {job.seconds:.1f} s")
    return job


# ---------------------------------------------------------------------- the jobs
def test_two_nodes_train_to_the_end(plain_job):
    job = plain_job
    assert job.returncodes == [0, 0], job.log_text()
    runs = [p for p in job.output.parent.rglob("summary.json")]
    assert runs == [job.output / "summary.json"], runs
    final = summary(job.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 2, STEPS)
    assert sorted(p.name for p in job.output.parent.rglob("checkpoints")) == ["checkpoints"]
    saved = sorted(p.name for p in (job.output / "checkpoints").iterdir())
    assert saved[-1] == f"step-{STEPS:08d}" and not any(name.endswith(".partial") for name in saved), saved
    assert starts(job.output) == [0]


def test_killed_worker_restarts_in_place_and_ends_bit_identical(plain_job, two_hosts, tiny_dataset, tmp_path):
    assert plain_job.returncodes == [0, 0], "the uninterrupted run failed: " + plain_job.log_text()
    job = start_job(two_hosts, "pe", elastic_pytorchjob_env, tiny_dataset, tmp_path / "run")
    try:
        await_condition(
            (job.output / "checkpoints" / f"step-{EVERY:08d}").exists,
            list(job.processes.values()),
            NODE_TIMEOUT_S,
            f"checkpoint {EVERY}",
        )
        workers = two_hosts[1].workers()
        assert len(workers) == 1, workers
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
    finally:
        returncodes = job.wait()
    print(f"\ntwo-node run with a SIGKILLed worker (elastic PyTorchJob): {job.seconds:.1f} s")
    assert_finished_like(job, returncodes, plain_job.output)
    first, *restarts = starts(job.output)
    assert first == 0 and restarts, f"no restart recorded in train.log: {starts(job.output)}\n{job.log_text()}"
    assert resumed_steps(job.output)[-1] >= EVERY


def test_replaced_node_resumes_bit_identical(plain_job, two_hosts, tiny_dataset, tmp_path):
    """Node 1's pod is lost (every process SIGKILLed) and a new pod for the same index starts: node 0's
    agent restarts its worker and waits in the rendezvous, the new node joins, training resumes."""
    assert plain_job.returncodes == [0, 0], "the uninterrupted run failed: " + plain_job.log_text()
    job = start_job(two_hosts, "ix", indexed_job_env, tiny_dataset, tmp_path / "run")
    try:
        await_condition(
            (job.output / "checkpoints" / f"step-{EVERY:08d}").exists,
            list(job.processes.values()),
            NODE_TIMEOUT_S,
            f"checkpoint {EVERY}",
        )
        job.kill_node(1)
        replaced_at = job.seconds
        job.start_node(1)
    finally:
        returncodes = job.wait()
    print(f"\ntwo-node run with node 1 replaced at {replaced_at:.1f} s (Indexed Job): {job.seconds:.1f} s")
    assert_finished_like(job, returncodes, plain_job.output)
    assert len(starts(job.output)) >= 2 and resumed_steps(job.output)[-1] >= EVERY, job.log_text()


def test_evicted_node_saves_a_checkpoint_and_the_job_resumes_from_it(plain_job, two_hosts, tiny_dataset, tmp_path):
    """A drain evicts node 1's pod: SIGTERM to its container's main process (the launcher, which is
    torchrun). Every rank agrees to stop, saves, and the summary says ``preempted``; the pod that
    replaces it resumes the job from that checkpoint."""
    assert plain_job.returncodes == [0, 0], "the uninterrupted run failed: " + plain_job.log_text()
    job = start_job(two_hosts, "ix", indexed_job_env, tiny_dataset, tmp_path / "run")
    try:
        await_condition(
            (job.output / "checkpoints" / f"step-{EVERY:08d}").exists,
            list(job.processes.values()),
            NODE_TIMEOUT_S,
            f"checkpoint {EVERY}",
        )
        job.processes[1].send_signal(signal.SIGTERM)
        evicted = job.processes[1]
        await_condition(
            lambda: evicted.poll() is not None and summary(job.output).get("status") == "preempted",
            [job.processes[0]],
            NODE_TIMEOUT_S,
            "preempted summary after the eviction",
        )
        preempted = summary(job.output)
        saved = job.output / "checkpoints" / f"step-{preempted['step']:08d}"
        assert preempted["step"] > EVERY and (saved / "meta.json").exists(), (preempted, job.log_text())
        assert job.processes[0].poll() is None, "node 0 must wait for the replacement: " + job.log_text()
        assert evicted.returncode == 143 == ending("pod SIGTERM").exit_code(), (
            "an eviction must not look like a failure"
        )
        for disrupted in (True, False):  # an eviction sets DisruptionTarget; Kueue's pre-emption only deletes the pod
            verdicts = policy_verdicts(Pod(evicted.returncode, disrupted=disrupted, deleted=True))
            assert all(v.retried and not v.counted for v in verdicts.values()), verdicts
        job.start_node(1)
    finally:
        returncodes = job.wait()
    print(f"\ntwo-node run with node 1 evicted and replaced (Indexed Job): {job.seconds:.1f} s")
    assert_finished_like(job, returncodes, plain_job.output)
    assert resumed_steps(job.output)[-1] == preempted["step"], job.log_text()
