"""How a two-node job ends, as the cluster sees it: a crash that repeats until restarts are spent is a
counted failure that names the crashed worker, not a pre-emption, even when its peers hang as they do
under NCCL (tests/crash_loop.py). The pod's own SIGTERM
is checked in tests/multinode/test_two_nodes.py (the eviction test)."""

from __future__ import annotations

import shutil
import sys

import pytest
from crash_loop import HOST_NAMES, run_crash_loop
from endings_table import ending
from k8s_policies import Pod, policy_verdicts
from netns_cluster import make_hosts

from partialfc.common.exit_codes import ExitCode

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and /proc are Linux-only")


@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs `iptables` (Debian: apt-get install -y iptables)")
def test_a_crash_that_repeats_is_a_counted_failure_naming_rank_host_and_signal(tiny_dataset, tmp_path):
    """The old code recorded the blocked peers' ending as a pre-emption (143), which every shipped policy
    ignores: a repeatable OOM restarted forever, holding its GPUs."""
    with make_hosts(HOST_NAMES) as hosts:
        outcome = run_crash_loop(hosts, tiny_dataset, tmp_path / "run")
    print(f"\ntwo-node crash loop (elastic PyTorchJob, 2 x 2 workers, 2 attempts): {outcome.seconds:.1f} s")
    code, log = outcome.node1_exit, outcome.log
    assert code == ExitCode.FAILED == ending("worker killed by a signal").exit_code(), f"exit {code}\n{log}"
    verdicts = policy_verdicts(Pod(exit_code=code, disrupted=False, deleted=False))
    assert all(verdict.counted for verdict in verdicts.values()), verdicts
    pid, rank = outcome.killed[-1]
    record = outcome.first_failure
    assert record is not None and record["rank"] == rank, (record, outcome.killed, log)
    assert "on host pe-worker-1 was killed by signal 9 (SIGKILL)" in record["message"], record
    assert f"pid {pid}" in record["message"], record
    assert f"launcher: torchrun stopped: rank {rank} " in log and "; exit 1" in log, log
    assert log.count("SIGTERM from torchrun's agent while blocked in a collective: a peer failed") >= 2, log
