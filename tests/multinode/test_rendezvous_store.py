"""No node is special: with the rendezvous store in a process of its own, losing node 0 (the node that
hosted the store in torchrun's default set-up) costs what losing any node costs, and the store itself
may restart. The jobs are tests/lost_node_zero.py's; these tests check their outcomes and print what each
loss cost, the figures of docs/deploy.md's "Losing
node 0". Before the store moved out, the elastic job below stopped with node 0: its survivors' agents
ended on RendezvousConnectionError and their containers failed (counted against backoffLimit)."""

from __future__ import annotations

import re
import sys

import pytest
from lost_node_zero import HOST_NAMES, RELAUNCHED, run_elastic, run_indexed
from netns_cluster import EVERY, STEPS, make_hosts, summary

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and /proc are Linux-only")

WORKER_FAILED = re.compile(r"failed \(exitcode: 1\) local_rank: 0")  # torchrun's agent, on its failed worker


def test_elastic_job_loses_node_0_for_good_then_its_store_and_finishes(tiny_dataset, tmp_path):
    """Three nodes (2:3): node 0 SIGKILLed, a phase on two (centres re-sharded, a checkpoint at world size
    2), the store's pod stopped and back while node 0's replacement starts, the end on three."""
    with make_hosts(HOST_NAMES) as hosts:
        run = run_elastic(hosts, tiny_dataset, tmp_path / "run")
    print(
        f"\nelastic PyTorchJob, 3 nodes (2:3), external store: node 0 lost -> first step on two nodes "
        f"{run.waited['loss']:.0f} s (one in-place restart of each survivor's workers, no container restart); "
        f"store back -> first step on three nodes {run.waited['store']:.0f} s (one uncounted agent start per "
        f"surviving node); whole job {run.seconds:.0f} s"
    )
    assert run.returncodes == [0, 0, 0], run.log
    final = summary(run.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 3, final["total_steps"]), final
    sizes = [start["world_size"] for start in run.starts]
    assert sizes[:2] == [3, 2] and sizes[-1] == 3, run.starts
    on_two = run.starts[1]
    assert on_two["start_step"] == EVERY and on_two["restart"] in (0, 1), on_two  # resumed, in place
    assert any(step > EVERY and size == 2 for step, size in run.checkpoints.items()), run.checkpoints
    train_log = (run.output / "train.log").read_text()
    assert "world size changed (3 -> 2): centres re-sharded" in train_log, train_log
    assert "world size changed (2 -> 3): centres re-sharded" in train_log, train_log
    assert run.store_exit == 0 and "launcher store: SIGTERM: stopped" in run.log, run.log
    # Node 0's loss restarts each survivor's workers once, in place: counted when they failed on the dead
    # peer; not counted when the agent, its workers still healthy, saw the other survivor waiting in a new
    # rendezvous round first (torch/distributed/elastic/agent/server/api.py, _invoke_run: "membership
    # changes do not count as retries"). Which one each survivor takes is timing; one at least fails.
    failed = []
    for node in (1, 2):
        (log,) = run.node_logs[node]  # one container all along
        failed.append(len(WORKER_FAILED.findall(log)))
        assert log.count(RELAUNCHED) == 1 and "(start 2, not counted as a failure)" in log, log
    assert sorted(failed) in ([0, 1], [1, 1]), (failed, run.log)
    assert len(run.node_logs[0]) == 2  # the lost node and its replacement


def test_indexed_job_loses_node_0_and_its_replacement_rejoins(tiny_dataset, tmp_path):
    """The reference manifest's set-up (PARTIALFC_RDZV_STORE=external, PET_RDZV_ID): node 1 restarts in
    place once and waits in the rendezvous for node 0's replacement; its container never fails."""
    with make_hosts(HOST_NAMES) as hosts:
        run = run_indexed(hosts, tiny_dataset, tmp_path / "run")
    print(
        f"\nIndexed Job, 2 nodes, external store: launchers started -> first step {run.waited['start']:.0f} s; "
        f"node 0 lost and replaced at once -> first step {run.waited['loss']:.0f} s (one in-place torchrun "
        f"restart on node 1); whole job {run.seconds:.0f} s"
    )
    assert run.returncodes == [0, 0], run.log
    final = summary(run.output)
    assert (final["status"], final["world_size"], final["step"]) == ("finished", 2, STEPS), final
    assert [(s["world_size"], s["start_step"]) for s in run.starts] == [(2, 0), (2, EVERY)], run.starts
    (log,) = run.node_logs[1]
    assert len(WORKER_FAILED.findall(log)) == 1 and RELAUNCHED not in log, log
