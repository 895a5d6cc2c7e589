"""A cold start: node 1 of a two-node JobSet job up minutes before node 0, which hosts the rendezvous
(node 0 still pulling the image, or waiting for an autoscaled GPU node). torch's store client gives
up on a missing host after read_timeout (60 s), a random 30-90 s back-off and one more attempt:
146 s measured here, about 210 s at worst. Under a JobSet (restartPolicy Never) every such failure
costs one of the gang's restarts; the launcher makes the client wait as long as the rendezvous join
(read_timeout = join_timeout). Both nodes are started by the ``cold_start_node`` session fixture
(tests/conftest.py), node 0 by a timer, so that the gap and the job overlap the rest of the suite."""

from __future__ import annotations

import pytest
from netns_cluster import COLD_GAP_S, STEPS, await_condition, can_make_hosts, starts, summary


@pytest.mark.skipif(not can_make_hosts(), reason="needs root for network and UTS namespaces (CI runs as root)")
def test_cold_start_node_waits_for_its_rendezvous_host(cold_start_node):
    job = cold_start_node
    # Node 0 is started by the fixture's timer COLD_GAP_S after node 1: await it (the gap is the scenario).
    await_condition(lambda: 0 in job.processes, [], COLD_GAP_S + 60, "the rendezvous host's start")
    assert job.node1_waiting and job.gap_s >= COLD_GAP_S, f"node 1 gave up within {job.gap_s:.0f} s: {job.log_text()}"
    returncodes = job.wait()
    print(f"\ncold start: node 0 started {job.gap_s:.0f} s after node 1; job done after {job.seconds:.0f} s")
    assert returncodes == [0, 0], job.log_text()
    final = summary(job.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 2, STEPS), final
    assert starts(job.output) == [0], job.log_text()
