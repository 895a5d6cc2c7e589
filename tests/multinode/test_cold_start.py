"""A cold start: node 1 of a two-node JobSet job up minutes before node 0, which hosts the rendezvous
(node 0 still pulling the image, or waiting for an autoscaled GPU node). torch's store client gives
up on a missing host after read_timeout (60 s), a random 30-90 s back-off and one more attempt:
146 s measured here, about 210 s at worst. Under a JobSet (restartPolicy Never) every such failure
costs one of the gang's restarts; the launcher makes the client wait as long as the rendezvous join
(read_timeout = join_timeout)."""

from __future__ import annotations

import subprocess

from netns_cluster import COLD_GAP_S, STEPS, Job, jobset_env, make_hosts, starts, summary, training

HOST_NAMES = [("cs-node-0-0.cs", "cs-node-0-0"), ("cs-node-0-1.cs", "cs-node-0-1")]


def test_cold_start_node_waits_for_its_rendezvous_host(tiny_dataset, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    # dist.timeout_s 1800, the manifests' value: the rendezvous join, so node 1's wait, outlasts the gap.
    args = [*training(tiny_dataset, output), "--dist.timeout_s", "1800"]
    with make_hosts(HOST_NAMES) as hosts:
        job = Job(hosts, "cs", jobset_env, args, output)
        try:
            job.start_node(1)
            try:  # the gap is the scenario: node 1 must still be waiting at its end
                gave_up = job.processes[1].wait(timeout=COLD_GAP_S)
            except subprocess.TimeoutExpired:
                gave_up = None
            assert gave_up is None, f"node 1 exited {gave_up} after {job.seconds:.0f} s: {job.log_text()}"
            job.start_node(0)
            returncodes = job.wait()
        finally:
            job.kill_all()
    print(f"\ncold start: node 0 started {COLD_GAP_S} s after node 1; job done after {job.seconds:.0f} s")
    assert returncodes == [0, 0], job.log_text()
    final = summary(job.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 2, STEPS), final
    assert starts(job.output) == [0], job.log_text()
