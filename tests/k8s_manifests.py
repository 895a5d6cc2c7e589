"""The shipped workload manifests as the cluster reads them: each variant's workload, its pod template, and
the variables Kubernetes and the operator add to a pod (from their sources, cited below)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "indexed-job": "k8s/indexed-job/job.yaml",
    "pytorchjob": "k8s/pytorchjob/pytorchjob.yaml",
    "jobset": "k8s/jobset/jobset.yaml",
}


def documents(path: str) -> list[dict]:
    return list(yaml.safe_load_all((REPO / path).read_text()))


def workload(variant: str) -> dict:
    return next(d for d in documents(VARIANTS[variant]) if d["kind"] in ("Job", "PyTorchJob", "JobSet"))


def pod_template(document: dict) -> dict:
    if document["kind"] == "Job":
        return document["spec"]["template"]
    if document["kind"] == "PyTorchJob":
        return document["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    return document["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]


def pytorchjob_elastic_env(name: str, nproc_per_node: str, elastic: dict, ports: dict[str, int]) -> dict[str, str]:
    """What training-operator v1.9.4 puts in every pod of an elastic PyTorchJob ``name`` with Worker replicas
    only (pkg/controller.v1/pytorch/envvar.go setPodEnv and elastic.go ElasticEnvVarGenerator.Generate):
    PYTHONUNBUFFERED, PET_NPROC_PER_NODE from spec.nprocPerNode, then
    PET_RDZV_ENDPOINT (generateEnvRDZVEndpoint: ``rdzvHost``, else ``<job>-worker-0``, and ``rdzvPort``, else
    the container port named pytorchjob-port, which the defaulter adds as 23456 when the container has
    none), PET_RDZV_BACKEND, PET_NNODES (``MIN:MAX``), PET_MAX_RESTARTS and, when set, PET_RDZV_ID
    (``rdzvId``) and PET_RDZV_CONF (``rdzvConf`` as ``key=value`` pairs joined by commas); no MASTER_*,
    RANK or WORLD_SIZE without a Master."""
    port = elastic.get("rdzvPort", ports.get("pytorchjob-port", 23456))
    env = {
        "PYTHONUNBUFFERED": "1",
        "PET_NPROC_PER_NODE": nproc_per_node,
        "PET_RDZV_ENDPOINT": f"{elastic.get('rdzvHost', f'{name}-worker-0')}:{port}",
        "PET_RDZV_BACKEND": elastic["rdzvBackend"],
        "PET_NNODES": f"{elastic['minReplicas']}:{elastic['maxReplicas']}",
        "PET_MAX_RESTARTS": str(elastic["maxRestarts"]),
    }
    if "rdzvId" in elastic:
        env["PET_RDZV_ID"] = elastic["rdzvId"]
    if "rdzvConf" in elastic:
        env["PET_RDZV_CONF"] = ",".join(f"{item['key']}={item['value']}" for item in elastic["rdzvConf"])
    return env


def scheduler_env(variant: str, node: int) -> dict[str, str]:
    """What Kubernetes (and the operator) add to the manifest's env in the pod of node ``node``: for the
    PyTorchJob, :func:`pytorchjob_elastic_env` on the manifest's own elasticPolicy; for the Indexed Job and
    the JobSet, JOB_COMPLETION_INDEX (and the manifest's JOBSET_NAME from the pod label)."""
    document = workload(variant)
    name = document["metadata"]["name"]
    if variant == "pytorchjob":
        assert "Master" not in document["spec"]["pytorchReplicaSpecs"]
        ports = {p["name"]: p["containerPort"] for p in pod_template(document)["spec"]["containers"][0]["ports"]}
        return pytorchjob_elastic_env(name, document["spec"]["nprocPerNode"], document["spec"]["elasticPolicy"], ports)
    env = {"JOB_COMPLETION_INDEX": str(node)}
    if variant == "jobset":
        env["JOBSET_NAME"] = name
    return env
