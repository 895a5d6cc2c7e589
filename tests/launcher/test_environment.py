"""Scheduler detection: each environment, the precedence between them, and half-configured ones.

The fixtures copy what each scheduler injects, from its source:
- PyTorchJob: kubeflow/training-operator v1.9.0, pkg/controller.v1/pytorch/envvar.go (setPodEnv:
  PYTHONUNBUFFERED=1, WORLD_SIZE = replicas x nprocPerNode, RANK = PET_NODE_RANK = index (+1 for
  workers), PET_NPROC_PER_NODE = spec.nprocPerNode, defaulted to "auto" in pytorch_defaults.go;
  PET_NNODES = replicas without elasticPolicy), master.go (MASTER_ADDR/PET_MASTER_ADDR =
  <job>-master-0, MASTER_PORT/PET_MASTER_PORT = the master's pytorchjob-port, default 23456) and
  elastic.go (PET_RDZV_ENDPOINT = <job>-worker-0:<worker port>, PET_RDZV_BACKEND, PET_NNODES =
  MIN:MAX, PET_MAX_RESTARTS).
- Trainer v2: kubeflow/trainer pkg/runtime/framework/plugins/torch/torch.go (EnforceMLPolicy:
  PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK from the completion index,
  PET_MASTER_ADDR = <job>-node-0-0.<job>, PET_MASTER_PORT = 29400).
- SLURM: srun(1) and sbatch(1), "OUTPUT ENVIRONMENT VARIABLES".
"""

from __future__ import annotations

import pytest

from launcher.environment import LaunchEnvironmentError, Placement, detect, expand_hostlist

# Master (replicas 1) + Worker (replicas 1), nprocPerNode "8": worker-0's pod, node rank 1.
PYTORCHJOB_WORKER_1 = {
    "PYTHONUNBUFFERED": "1",
    "MASTER_PORT": "23456",
    "PET_MASTER_PORT": "23456",
    "MASTER_ADDR": "r50-master-0",
    "PET_MASTER_ADDR": "r50-master-0",
    "WORLD_SIZE": "16",
    "RANK": "1",
    "PET_NODE_RANK": "1",
    "PET_NPROC_PER_NODE": "8",
    "PET_NNODES": "2",
}
# Master (1) + Worker (2) with elasticPolicy {minReplicas 2, maxReplicas 3, maxRestarts 3}, nprocPerNode
# defaulted to "auto" (WORLD_SIZE = 3 replicas x 1): the webhook accepts it, worker-0's pod.
PYTORCHJOB_MASTER_ELASTIC_WORKER_0 = {
    "PYTHONUNBUFFERED": "1",
    "MASTER_PORT": "23456",
    "PET_MASTER_PORT": "23456",
    "MASTER_ADDR": "r50-master-0",
    "PET_MASTER_ADDR": "r50-master-0",
    "WORLD_SIZE": "3",
    "RANK": "1",
    "PET_NODE_RANK": "1",
    "PET_NPROC_PER_NODE": "auto",
    "PET_RDZV_ENDPOINT": "r50-worker-0:23456",
    "PET_RDZV_BACKEND": "c10d",
    "PET_NNODES": "2:3",
    "PET_MAX_RESTARTS": "3",
}
# Workers only (replicas 2) with elasticPolicy {minReplicas 2, maxReplicas 2, maxRestarts 3}, nprocPerNode "8".
PYTORCHJOB_ELASTIC = {
    "PYTHONUNBUFFERED": "1",
    "PET_NPROC_PER_NODE": "8",
    "PET_RDZV_ENDPOINT": "r50-worker-0:29400",
    "PET_RDZV_BACKEND": "c10d",
    "PET_NNODES": "2:2",
    "PET_MAX_RESTARTS": "3",
}
TRAINER_V2_NODE_1 = {
    "PET_NNODES": "2",
    "PET_NPROC_PER_NODE": "8",
    "PET_NODE_RANK": "1",
    "PET_MASTER_ADDR": "r50-node-0-0.r50",
    "PET_MASTER_PORT": "29400",
    "JOB_COMPLETION_INDEX": "1",
}
INDEXED_JOB_NODE_1 = {
    "JOB_COMPLETION_INDEX": "1",
    "PARTIALFC_NNODES": "2",
    "PARTIALFC_RDZV_HOST": "r50-0.r50.train.svc.cluster.local",
}
# sbatch -N 5 (the batch step: no SLURM_STEP_* variables), the launcher started by srun on node 2 would
# also carry the step's; this is the job's view.
SLURM_NODE_2 = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NNODES": "5",
    "SLURM_JOB_NUM_NODES": "5",
    "SLURM_NODEID": "2",
    "SLURM_JOB_NODELIST": "gpu[001-004,010]",
}
# `srun -N 2 --ntasks-per-node 1 python -m launcher` inside a 4-node allocation: the step runs on 2 of them.
SLURM_STEP_NODE_1 = {
    "SLURM_JOB_ID": "4243",
    "SLURM_NNODES": "4",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_JOB_NODELIST": "gpu[01-04]",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "gpu[03-04]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURMD_NODENAME": "gpu04",
}


def test_pytorchjob_with_master():
    placement = detect(PYTORCHJOB_WORKER_1)
    assert placement.source == "Kubeflow PyTorchJob (kubeflow.org/v1, Master)"
    assert (placement.nnodes, placement.node_rank, placement.nproc_per_node) == ("2", 1, 8)
    assert placement.rdzv_endpoint == "r50-master-0:23456"
    assert placement.rdzv_id == "partialfc-r50-master-0"


def test_pytorchjob_with_master_and_elastic_policy_keeps_node_ranks_and_the_node_range():
    """The operator sets RANK and MASTER_* and PET_NNODES=MIN:MAX together: the master hosts the store."""
    placement = detect(PYTORCHJOB_MASTER_ELASTIC_WORKER_0)
    assert placement.source == "Kubeflow PyTorchJob (kubeflow.org/v1, Master + elasticPolicy)"
    assert (placement.nnodes, placement.node_rank, placement.nproc_per_node, placement.max_restarts) == (
        "2:3",
        1,
        None,
        3,
    )
    assert placement.rdzv_endpoint == "r50-master-0:23456"
    # Node ranks run up to MAX - 1: the third replica of a 2:3 job is node rank 2.
    assert detect({**PYTORCHJOB_MASTER_ELASTIC_WORKER_0, "RANK": "2", "PET_NODE_RANK": "2"}).node_rank == 2
    with pytest.raises(LaunchEnvironmentError, match="RANK=3 but the job has 3 node"):
        detect({**PYTORCHJOB_MASTER_ELASTIC_WORKER_0, "RANK": "3", "PET_NODE_RANK": "3"})


@pytest.mark.parametrize("nproc, expected", [("8", 8), ("auto", None), ("cpu", "cpu"), ("gpu", "gpu")])
def test_pytorchjob_nproc_per_node_takes_every_documented_value(nproc, expected):
    """spec.nprocPerNode accepts auto|cpu|gpu|N and reaches the pod verbatim as PET_NPROC_PER_NODE;
    WORLD_SIZE is then replicas x N, or replicas for a word (envvar.go, getNprocPerNodeInt)."""
    world_size = "16" if nproc == "8" else "2"
    placement = detect({**PYTORCHJOB_WORKER_1, "PET_NPROC_PER_NODE": nproc, "WORLD_SIZE": world_size})
    assert (placement.nnodes, placement.nproc_per_node) == ("2", expected)


def test_pytorchjob_elastic_leaves_the_node_rank_to_the_rendezvous():
    placement = detect(PYTORCHJOB_ELASTIC)
    assert placement.source == "Kubeflow PyTorchJob (kubeflow.org/v1, elasticPolicy)"
    assert (placement.nnodes, placement.node_rank, placement.max_restarts, placement.nproc_per_node) == (
        "2:2",
        None,
        3,
        8,
    )
    assert placement.rdzv_endpoint == "r50-worker-0:29400"


def test_trainer_v2_torch_runtime():
    placement = detect(TRAINER_V2_NODE_1)
    assert placement.source.startswith("Kubeflow Trainer v2")
    assert (placement.nnodes, placement.node_rank, placement.nproc_per_node) == ("2", 1, 8)
    assert placement.rdzv_endpoint == "r50-node-0-0.r50:29400"
    assert detect({**TRAINER_V2_NODE_1, "PET_NPROC_PER_NODE": "gpu"}).nproc_per_node == "gpu"


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


def test_slurm_with_exported_master_addr_is_still_slurm():
    """The usual torch-on-SLURM batch script exports MASTER_ADDR/MASTER_PORT: they name the rendezvous."""
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "MASTER_ADDR": "gpu01",
        "MASTER_PORT": "29500",
    }
    placement = detect(env)
    assert (placement.source, placement.nnodes, placement.node_rank, placement.rdzv_endpoint) == (
        "SLURM",
        "2",
        1,
        "gpu01:29500",
    )
    assert detect({**SLURM_NODE_2, "MASTER_ADDR": "gpu002"}).rdzv_endpoint == "gpu002:29400"


def test_slurm_under_srun_uses_the_step_not_the_allocation():
    placement = detect(SLURM_STEP_NODE_1)
    assert (placement.source, placement.nnodes, placement.node_rank) == ("SLURM step (srun)", "2", 1)
    assert placement.rdzv_endpoint == "gpu03:29400"


def test_no_scheduler_is_a_single_node():
    placement = detect({"HOME": "/root", "PATH": "/usr/bin"})
    assert (placement.nnodes, placement.node_rank, placement.rdzv_endpoint) == ("1", None, "localhost:0")


def test_operators_that_run_on_indexed_jobs_win_over_the_plain_indexed_job():
    assert detect(TRAINER_V2_NODE_1).source.startswith("Kubeflow Trainer v2")
    assert detect({**PYTORCHJOB_WORKER_1, "JOB_COMPLETION_INDEX": "0"}).source.startswith("Kubeflow PyTorchJob")


@pytest.mark.parametrize(
    "host, endpoint", [("fd00::1", "[fd00::1]:29400"), ("10.0.0.1", "10.0.0.1:29400"), ("r50-0.r50", "r50-0.r50:29400")]
)
def test_ipv6_rendezvous_hosts_are_bracketed(host, endpoint):
    assert Placement("test", "2", host, 29400, "id").rdzv_endpoint == endpoint
    elastic = detect({**PYTORCHJOB_ELASTIC, "PET_RDZV_ENDPOINT": f"[{host}]:29400" if ":" in host else f"{host}:29400"})
    assert (elastic.rdzv_host, elastic.rdzv_endpoint) == (host, endpoint)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "1"}, "RANK is set but MASTER_ADDR is not"),
        ({"MASTER_ADDR": "h", "MASTER_PORT": "1", "RANK": "0"}, "MASTER_ADDR is set but WORLD_SIZE is not"),
        (
            {k: v for k, v in PYTORCHJOB_WORKER_1.items() if k != "PET_NODE_RANK"},
            "MASTER_ADDR is set but PET_NODE_RANK is not",
        ),
        (
            {k: v for k, v in PYTORCHJOB_WORKER_1.items() if k != "PET_NNODES"},
            "MASTER_ADDR is set but PET_NNODES is not",
        ),
        ({**PYTORCHJOB_WORKER_1, "PET_NODE_RANK": "0"}, "RANK=1 but PET_NODE_RANK=0"),
        ({**PYTORCHJOB_WORKER_1, "RANK": "2", "PET_NODE_RANK": "2"}, "RANK=2 but the job has 2 node"),
        ({**PYTORCHJOB_WORKER_1, "MASTER_PORT": "http"}, "MASTER_PORT='http' is not an integer"),
        ({**PYTORCHJOB_WORKER_1, "MASTER_PORT": "70000"}, r"MASTER_PORT=70000 must be in \[1, 65535\]"),
        (
            {**PYTORCHJOB_WORKER_1, "PET_NPROC_PER_NODE": "eight"},
            "PET_NPROC_PER_NODE='eight' must be a number or one of auto",
        ),
        ({**PYTORCHJOB_WORKER_1, "PET_NPROC_PER_NODE": "0"}, "PET_NPROC_PER_NODE=0 must be >= 1"),
        ({**PYTORCHJOB_MASTER_ELASTIC_WORKER_0, "PET_NNODES": "3:2"}, "PET_NNODES='3:2' must be N or MIN:MAX"),
        ({"PET_RDZV_ENDPOINT": "w-0:29400"}, "PET_RDZV_ENDPOINT is set but PET_NNODES is not"),
        ({"PET_RDZV_ENDPOINT": "w-0", "PET_NNODES": "2"}, "PET_RDZV_ENDPOINT='w-0' must be HOST:PORT"),
        ({**PYTORCHJOB_ELASTIC, "PET_NNODES": "3:2"}, "PET_NNODES='3:2' must be N or MIN:MAX"),
        (
            {**PYTORCHJOB_ELASTIC, "PET_RDZV_BACKEND": "etcd-v2"},
            "PET_RDZV_BACKEND='etcd-v2': the launcher runs the c10d",
        ),
        ({"PET_NODE_RANK": "0"}, "PET_NODE_RANK is set but PET_MASTER_ADDR is not"),
        ({**TRAINER_V2_NODE_1, "PET_NODE_RANK": "2"}, "PET_NODE_RANK=2 but the job has 2 node"),
        (
            {"JOB_COMPLETION_INDEX": "0", "PARTIALFC_RDZV_HOST": "h"},
            "JOB_COMPLETION_INDEX is set but PARTIALFC_NNODES is not",
        ),
        (
            {"JOB_COMPLETION_INDEX": "0", "PARTIALFC_NNODES": "2"},
            "JOB_COMPLETION_INDEX is set but PARTIALFC_RDZV_HOST is not",
        ),
        ({**INDEXED_JOB_NODE_1, "JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX=2 but the job has 2 node"),
        ({**INDEXED_JOB_NODE_1, "PARTIALFC_NNODES": "0"}, "PARTIALFC_NNODES=0 must be >= 1"),
        (
            {"SLURM_JOB_ID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "a[1-2]"},
            "SLURM_JOB_ID is set but SLURM_NODEID is not",
        ),
        (
            {"SLURM_JOB_ID": "1", "SLURM_NODEID": "0", "SLURM_STEP_NODELIST": "a[1-2]"},
            "SLURM_JOB_ID is set but SLURM_STEP_NUM_NODES is not",
        ),
        ({**SLURM_NODE_2, "SLURM_NNODES": "4"}, "lists 5 hosts but SLURM_NNODES=4"),
        (
            {**SLURM_STEP_NODE_1, "SLURM_STEP_NUM_NODES": "3"},
            "SLURM_STEP_NODELIST='gpu\\[03-04\\]' lists 2 hosts but SLURM_STEP_NUM_NODES=3",
        ),
        ({**SLURM_NODE_2, "SLURM_JOB_NODELIST": "gpu[001-004"}, "not a SLURM host list"),
        ({**SLURM_NODE_2, "SLURM_NODEID": "5"}, "SLURM_NODEID=5 but the job has 5 node"),
        ({**SLURM_NODE_2, "MASTER_PORT": "x"}, "MASTER_PORT='x' is not an integer"),
    ],
)
def test_half_configured_environment_is_one_error_naming_the_variable(env, message):
    with pytest.raises(LaunchEnvironmentError, match=message):
        detect(env)


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
        ("node7", ["node7"]),
        ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
        ("rack[1-2]-n[08-10]", ["rack1-n08", "rack1-n09", "rack1-n10", "rack2-n08", "rack2-n09", "rack2-n10"]),
        ("ib-[9-11].cluster", ["ib-9.cluster", "ib-10.cluster", "ib-11.cluster"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["", "a[1-2", "a[2-1]", "a[x]", "a,,b", "a]"])
def test_expand_hostlist_rejects_malformed_lists(hostlist):
    with pytest.raises(ValueError):
        expand_hostlist(hostlist)


PORT = r"must be in \[1, 65535\]"
# Every integer the launcher checks, on its bound and just past it: (environment, the variables changed,
# what detect() gives: (attribute, value), or the error). Ports run from 1 to 65535 inclusive; a node
# rank from 0 to below the node count (the largest of MIN:MAX).
BOUNDS = [
    (PYTORCHJOB_WORKER_1, {"MASTER_PORT": "1", "PET_MASTER_PORT": "1"}, ("rdzv_port", 1)),
    (PYTORCHJOB_WORKER_1, {"MASTER_PORT": "0", "PET_MASTER_PORT": "0"}, "MASTER_PORT=0 " + PORT),
    (PYTORCHJOB_WORKER_1, {"MASTER_PORT": "65535", "PET_MASTER_PORT": "65535"}, ("rdzv_port", 65535)),
    (PYTORCHJOB_WORKER_1, {"MASTER_PORT": "65536", "PET_MASTER_PORT": "65536"}, "MASTER_PORT=65536 " + PORT),
    (TRAINER_V2_NODE_1, {"PET_MASTER_PORT": "1"}, ("rdzv_port", 1)),
    (TRAINER_V2_NODE_1, {"PET_MASTER_PORT": "0"}, "PET_MASTER_PORT=0 " + PORT),
    (TRAINER_V2_NODE_1, {"PET_MASTER_PORT": "65535"}, ("rdzv_port", 65535)),
    (TRAINER_V2_NODE_1, {"PET_MASTER_PORT": "65536"}, "PET_MASTER_PORT=65536 " + PORT),
    (INDEXED_JOB_NODE_1, {"PARTIALFC_RDZV_PORT": "65535"}, ("rdzv_port", 65535)),
    (INDEXED_JOB_NODE_1, {"PARTIALFC_RDZV_PORT": "65536"}, "PARTIALFC_RDZV_PORT=65536 " + PORT),
    (SLURM_NODE_2, {"MASTER_PORT": "65535"}, ("rdzv_port", 65535)),
    (SLURM_NODE_2, {"MASTER_PORT": "65536"}, "MASTER_PORT=65536 " + PORT),
    (SLURM_NODE_2, {"PARTIALFC_RDZV_PORT": "1"}, ("rdzv_port", 1)),
    (SLURM_NODE_2, {"PARTIALFC_RDZV_PORT": "0"}, "PARTIALFC_RDZV_PORT=0 " + PORT),
    (PYTORCHJOB_ELASTIC, {"PET_RDZV_ENDPOINT": "w-0:1"}, ("rdzv_port", 1)),
    (PYTORCHJOB_ELASTIC, {"PET_RDZV_ENDPOINT": "w-0:0"}, "PET_RDZV_ENDPOINT='w-0:0' must be HOST:PORT"),
    (PYTORCHJOB_ELASTIC, {"PET_RDZV_ENDPOINT": "w-0:65535"}, ("rdzv_port", 65535)),
    (PYTORCHJOB_ELASTIC, {"PET_RDZV_ENDPOINT": "w-0:65536"}, "PET_RDZV_ENDPOINT='w-0:65536' must be HOST:PORT"),
    (PYTORCHJOB_WORKER_1, {"RANK": "0", "PET_NODE_RANK": "0"}, ("node_rank", 0)),
    (PYTORCHJOB_WORKER_1, {"RANK": "-1", "PET_NODE_RANK": "-1"}, "RANK=-1 must be >= 0"),
    (PYTORCHJOB_WORKER_1, {"WORLD_SIZE": "1"}, ("nnodes", "2")),
    (PYTORCHJOB_WORKER_1, {"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    (PYTORCHJOB_WORKER_1, {"PET_NPROC_PER_NODE": "1"}, ("nproc_per_node", 1)),
    (PYTORCHJOB_WORKER_1, {"PET_NPROC_PER_NODE": "0"}, "PET_NPROC_PER_NODE=0 must be >= 1"),
    (PYTORCHJOB_MASTER_ELASTIC_WORKER_0, {"PET_MAX_RESTARTS": "0"}, ("max_restarts", 0)),
    (PYTORCHJOB_MASTER_ELASTIC_WORKER_0, {"PET_MAX_RESTARTS": "-1"}, "PET_MAX_RESTARTS=-1 must be >= 0"),
    (PYTORCHJOB_ELASTIC, {"PET_NNODES": "1:2"}, ("nnodes", "1:2")),
    (PYTORCHJOB_ELASTIC, {"PET_NNODES": "0:2"}, "PET_NNODES='0:2' must be N or MIN:MAX"),
    (PYTORCHJOB_ELASTIC, {"PET_NNODES": "2:2"}, ("nnodes", "2:2")),
    (PYTORCHJOB_ELASTIC, {"PET_NNODES": "3:2"}, "PET_NNODES='3:2' must be N or MIN:MAX"),
    (TRAINER_V2_NODE_1, {"PET_NNODES": "3", "PET_NODE_RANK": "2"}, ("node_rank", 2)),
    (TRAINER_V2_NODE_1, {"PET_NNODES": "3", "PET_NODE_RANK": "3"}, "PET_NODE_RANK=3 but the job has 3 node"),
    (INDEXED_JOB_NODE_1, {"PARTIALFC_NNODES": "1", "JOB_COMPLETION_INDEX": "0"}, ("node_rank", 0)),
    (INDEXED_JOB_NODE_1, {"PARTIALFC_NNODES": "1", "JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX=1 but the job"),
    (INDEXED_JOB_NODE_1, {"JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX=-1 must be >= 0"),
    (INDEXED_JOB_NODE_1, {"PARTIALFC_NNODES": "0"}, "PARTIALFC_NNODES=0 must be >= 1"),
    (SLURM_NODE_2, {"SLURM_NODEID": "4"}, ("node_rank", 4)),
    (SLURM_NODE_2, {"SLURM_NODEID": "5"}, "SLURM_NODEID=5 but the job has 5 node"),
    (SLURM_NODE_2, {"SLURM_NNODES": "0"}, "SLURM_NNODES=0 must be >= 1"),
]


@pytest.mark.parametrize(
    "env, variables, expected",
    BOUNDS,
    ids=[" ".join(f"{name}={value}" for name, value in variables.items()) for _, variables, _ in BOUNDS],
)
def test_every_integer_is_checked_exactly_at_its_bounds(env, variables, expected):
    if isinstance(expected, str):
        with pytest.raises(LaunchEnvironmentError, match=expected):
            detect({**env, **variables})
    else:
        attribute, value = expected
        assert getattr(detect({**env, **variables}), attribute) == value


def test_a_slurm_host_range_may_hold_one_host_but_not_run_backwards():
    assert expand_hostlist("gpu[07-07]") == ["gpu07"]
    with pytest.raises(ValueError, match="range '07-06' runs backwards"):
        expand_hostlist("gpu[07-06]")
