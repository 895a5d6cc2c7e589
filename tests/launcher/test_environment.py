"""Scheduler detection: each environment, the precedence between them, and half-configured ones."""

from __future__ import annotations

import pytest

from launcher.environment import LaunchEnvironmentError, detect, expand_hostlist

PYTORCHJOB_WORKER_1 = {  # Master + Worker replicas, nprocPerNode "8": what the operator puts in worker-0's pod
    "MASTER_ADDR": "r50-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "16", "RANK": "1",
    "PET_MASTER_ADDR": "r50-master-0", "PET_MASTER_PORT": "23456", "PET_NNODES": "2", "PET_NODE_RANK": "1",
    "PET_NPROC_PER_NODE": "8", "PYTHONUNBUFFERED": "0",
}
PYTORCHJOB_ELASTIC = {"PET_RDZV_ENDPOINT": "r50-worker-0:29400", "PET_RDZV_BACKEND": "c10d", "PET_NNODES": "2:2",
                      "PET_MAX_RESTARTS": "3"}
TRAINER_V2_NODE_1 = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "1",
                     "PET_MASTER_ADDR": "r50-node-0-0.r50", "PET_MASTER_PORT": "29400", "JOB_COMPLETION_INDEX": "1"}
INDEXED_JOB_NODE_1 = {"JOB_COMPLETION_INDEX": "1", "PARTIALFC_NNODES": "2",
                      "PARTIALFC_RDZV_HOST": "r50-0.r50.train.svc.cluster.local"}
SLURM_NODE_2 = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "5", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[001-004,010]"}


def test_pytorchjob_with_master():
    placement = detect(PYTORCHJOB_WORKER_1)
    assert placement.source.startswith("Kubeflow PyTorchJob")
    assert (placement.nnodes, placement.node_rank, placement.nproc_per_node) == ("2", 1, 8)
    assert placement.rdzv_endpoint == "r50-master-0:23456"
    assert placement.rdzv_id == "partialfc-r50-master-0"


def test_pytorchjob_world_size_counts_processes_unless_nproc_is_unset():
    # Without PET_NNODES the node count is WORLD_SIZE / nprocPerNode; "auto" multiplies by 1.
    no_nnodes = {k: v for k, v in PYTORCHJOB_WORKER_1.items() if k != "PET_NNODES"}
    assert detect(no_nnodes).nnodes == "2"
    auto = {**no_nnodes, "WORLD_SIZE": "2", "PET_NPROC_PER_NODE": "auto"}
    assert (detect(auto).nnodes, detect(auto).nproc_per_node) == ("2", None)
    with pytest.raises(LaunchEnvironmentError, match="WORLD_SIZE=12 is not a multiple of PET_NPROC_PER_NODE=8"):
        detect({**no_nnodes, "WORLD_SIZE": "12"})


def test_pytorchjob_elastic_leaves_the_node_rank_to_the_rendezvous():
    placement = detect(PYTORCHJOB_ELASTIC)
    assert "elasticPolicy" in placement.source
    assert (placement.nnodes, placement.node_rank, placement.max_restarts) == ("2:2", None, 3)
    assert placement.rdzv_endpoint == "r50-worker-0:29400"


def test_trainer_v2_torch_runtime():
    placement = detect(TRAINER_V2_NODE_1)
    assert placement.source.startswith("Kubeflow Trainer v2")
    assert (placement.nnodes, placement.node_rank, placement.nproc_per_node) == ("2", 1, 8)
    assert placement.rdzv_endpoint == "r50-node-0-0.r50:29400"


def test_indexed_job_and_jobset():
    placement = detect(INDEXED_JOB_NODE_1)
    assert placement.source.startswith("Kubernetes Indexed Job")
    assert (placement.nnodes, placement.node_rank) == ("2", 1)
    assert placement.rdzv_endpoint == "r50-0.r50.train.svc.cluster.local:29400"
    jobset = detect({**INDEXED_JOB_NODE_1, "JOBSET_NAME": "r50", "PARTIALFC_RDZV_PORT": "12345"})
    assert jobset.source.startswith("Kubernetes JobSet") and jobset.rdzv_port == 12345


def test_slurm_takes_the_first_host_of_a_bracket_list():
    placement = detect(SLURM_NODE_2)
    assert (placement.source, placement.nnodes, placement.node_rank) == ("SLURM", "5", 2)
    assert placement.rdzv_endpoint == "gpu001:29400"
    assert placement.rdzv_id == "slurm-4242"


def test_no_scheduler_is_a_single_node():
    placement = detect({"HOME": "/root", "PATH": "/usr/bin"})
    assert (placement.nnodes, placement.node_rank, placement.rdzv_endpoint) == ("1", None, "localhost:0")


def test_operators_that_run_on_indexed_jobs_win_over_the_plain_indexed_job():
    assert detect(TRAINER_V2_NODE_1).source.startswith("Kubeflow Trainer v2")
    assert detect({**PYTORCHJOB_WORKER_1, "JOB_COMPLETION_INDEX": "0"}).source.startswith("Kubeflow PyTorchJob")


@pytest.mark.parametrize("env, message", [
    ({"RANK": "1"}, "RANK is set but MASTER_ADDR is not"),
    ({"MASTER_ADDR": "h", "MASTER_PORT": "1", "RANK": "0"}, "MASTER_ADDR is set but WORLD_SIZE is not"),
    ({**PYTORCHJOB_WORKER_1, "RANK": "2"}, "RANK=2 but the job has 2 node"),
    ({**PYTORCHJOB_WORKER_1, "MASTER_PORT": "http"}, "MASTER_PORT='http' is not an integer"),
    ({**PYTORCHJOB_WORKER_1, "MASTER_PORT": "70000"}, r"MASTER_PORT=70000 must be in \[1, 65535\]"),
    ({"PET_RDZV_ENDPOINT": "w-0:29400"}, "PET_RDZV_ENDPOINT is set but PET_NNODES is not"),
    ({"PET_RDZV_ENDPOINT": "w-0", "PET_NNODES": "2"}, "PET_RDZV_ENDPOINT='w-0' must be HOST:PORT"),
    ({**PYTORCHJOB_ELASTIC, "PET_NNODES": "3:2"}, "PET_NNODES='3:2' must be N or MIN:MAX"),
    ({**PYTORCHJOB_ELASTIC, "PET_RDZV_BACKEND": "etcd-v2"}, "PET_RDZV_BACKEND='etcd-v2': the launcher runs the c10d"),
    ({"PET_NODE_RANK": "0"}, "PET_NODE_RANK is set but PET_MASTER_ADDR is not"),
    ({**TRAINER_V2_NODE_1, "PET_NODE_RANK": "2"}, "PET_NODE_RANK=2 but the job has 2 node"),
    ({"JOB_COMPLETION_INDEX": "0", "PARTIALFC_RDZV_HOST": "h"}, "JOB_COMPLETION_INDEX is set but PARTIALFC_NNODES is not"),
    ({"JOB_COMPLETION_INDEX": "0", "PARTIALFC_NNODES": "2"}, "JOB_COMPLETION_INDEX is set but PARTIALFC_RDZV_HOST is not"),
    ({**INDEXED_JOB_NODE_1, "JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX=2 but the job has 2 node"),
    ({**INDEXED_JOB_NODE_1, "PARTIALFC_NNODES": "0"}, "PARTIALFC_NNODES=0 must be >= 1"),
    ({"SLURM_JOB_ID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "a[1-2]"}, "SLURM_JOB_ID is set but SLURM_NODEID is not"),
    ({**SLURM_NODE_2, "SLURM_NNODES": "4"}, "lists 5 hosts but SLURM_NNODES=4"),
    ({**SLURM_NODE_2, "SLURM_JOB_NODELIST": "gpu[001-004"}, "not a SLURM host list"),
    ({**SLURM_NODE_2, "SLURM_NODEID": "5"}, "SLURM_NODEID=5 but the job has 5 node"),
])
def test_half_configured_environment_is_one_error_naming_the_variable(env, message):
    with pytest.raises(LaunchEnvironmentError, match=message):
        detect(env)


@pytest.mark.parametrize("hostlist, hosts", [
    ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
    ("node7", ["node7"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("rack[1-2]-n[08-10]", ["rack1-n08", "rack1-n09", "rack1-n10", "rack2-n08", "rack2-n09", "rack2-n10"]),
    ("ib-[9-11].cluster", ["ib-9.cluster", "ib-10.cluster", "ib-11.cluster"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["", "a[1-2", "a[2-1]", "a[x]", "a,,b", "a]"])
def test_expand_hostlist_rejects_malformed_lists(hostlist):
    with pytest.raises(ValueError):
        expand_hostlist(hostlist)
