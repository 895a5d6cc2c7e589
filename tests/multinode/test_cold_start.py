"""A cold start: node 1 of a two-node JobSet job up minutes before node 0, which hosts the rendezvous
(node 0 still pulling the image, or waiting for an autoscaled GPU node). torch's store client gives
up on a missing host after read_timeout (60 s), a random 30-90 s back-off and one more attempt:
146 s measured here, about 210 s at worst. Under a JobSet (restartPolicy Never) every such failure
costs one of the gang's restarts; the launcher makes the client wait as long as the rendezvous join
(read_timeout = join_timeout, 600 s here). Node 1 is started by the ``cold_start_node`` session
fixture (tests/conftest.py) so that the gap overlaps the rest of the suite."""

from __future__ import annotations

import time

import pytest
from netns_cluster import COLD_GAP_S, STEPS, can_make_hosts, starts, summary


@pytest.mark.skipif(not can_make_hosts(), reason="needs root for network and UTS namespaces (CI runs as root)")
def test_cold_start_node_waits_for_its_rendezvous_host(cold_start_node):
    job = cold_start_node
    node1 = job.processes[1]
    remaining = COLD_GAP_S - job.seconds
    if remaining > 0:  # the gap is the scenario itself: nothing to await but time
        time.sleep(remaining)
    assert node1.poll() is None, f"node 1 gave up after {job.seconds:.0f} s: {job.log_text()}"
    gap = job.seconds
    job.start_node(0)
    returncodes = job.wait()
    print(f"\ncold start: node 0 started {gap:.0f} s after node 1; job done after {job.seconds:.0f} s")
    assert returncodes == [0, 0], job.log_text()
    final = summary(job.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 2, STEPS), final
    assert starts(job.output) == [0], job.log_text()
