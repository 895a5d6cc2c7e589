"""Deployment files: the Kubernetes manifests and the Dockerfile pass their validators and linters,
and each manifest starts the job it claims to (the launcher's view of a node it would create)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from training_run import REPO

from launcher.__main__ import main as launcher_main
from partialfc.config import load_config

LINT = REPO / ".venv-lint" / "bin"
CHECKER = Path(__file__).with_name("check_custom_kinds.py")
VARIANTS = {"indexed-job": "k8s/indexed-job/job.yaml", "pytorchjob": "k8s/pytorchjob/pytorchjob.yaml",
            "jobset": "k8s/jobset/jobset.yaml"}
MANIFESTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "k8s").glob("*/*.yaml")
                   if p.parent.name in ("common", *VARIANTS)) + ["k8s/monitoring/podmonitor.yaml"]


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


# ---------------------------------------------------------------------- validators and linters
@pytest.fixture(scope="module")
def lint() -> Path:
    if not (LINT / "kubernetes-validate").exists():
        if os.environ.get("PARTIALFC_REQUIRE_LINT"):
            pytest.fail(f"{LINT} lacks the linters: run `make lint-venv`")
        pytest.skip("the manifest and Dockerfile linters are not installed: `make lint-venv`")
    return LINT


def run(*command: str | Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_yamllint_strict(lint):
    result = run(lint / "yamllint", "--strict", "-c", "k8s/.yamllint.yaml", *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_custom_kinds_match_their_published_schemas(lint, tmp_path):
    result = run(lint / "python", CHECKER, "--pod-templates", tmp_path / "pods.yaml", *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = set(re.findall(r"^PASS \S+: (\w+)/", result.stdout, re.M))
    assert checked == {"PyTorchJob", "JobSet", "PodMonitor"}, result.stdout


def test_builtin_kinds_and_embedded_pod_templates_validate_strictly(lint, tmp_path):
    templates = tmp_path / "pods.yaml"
    assert run(lint / "python", CHECKER, "--pod-templates", templates, *MANIFESTS).returncode == 0
    result = run(lint / "kubernetes-validate", "--strict", *MANIFESTS, templates)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every kind kubernetes-validate has no schema for is one the CRD check above covers.
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unknown == {"PyTorchJob", "JobSet", "PodMonitor"}, result.stdout + result.stderr
    assert len(re.findall(r"passed for resource podtemplate/", result.stdout + result.stderr)) == 2


def test_schema_check_rejects_unknown_and_mistyped_fields(lint, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((REPO / VARIANTS["pytorchjob"]).read_text().replace("    maxRestarts: 3", "    maxRestart: 3"))
    result = run(lint / "python", CHECKER, broken)
    assert result.returncode == 1 and "'maxRestart' was unexpected" in result.stdout, result.stdout


def test_checkov_with_every_skip_justified(lint):
    for target in (["-d", "k8s", "--framework", "kubernetes"], ["-f", "docker/Dockerfile", "--framework", "dockerfile"]):
        result = run(lint / "checkov", *target, "--quiet", "--compact", BC_SKIP_MAPPING="TRUE")
        assert result.returncode == 0, result.stdout + result.stderr
    for variant in VARIANTS:
        for key, value in workload(variant)["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV\w+=.{20,}", value), f"{variant}: {key} needs a reason: {value!r}"
    for line in (REPO / "docker/Dockerfile").read_text().splitlines():
        if "checkov:skip" in line:
            assert re.search(r"checkov:skip=CKV\w+: .{20,}", line), f"Dockerfile skip without a reason: {line}"


def test_hadolint_has_no_findings(lint):
    result = run(lint / "hadolint", "docker/Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    for line in (REPO / "docker/Dockerfile").read_text().splitlines():
        assert "hadolint ignore" not in line or re.search(r"hadolint ignore=\S+ .{20,}", line), line


# ---------------------------------------------------------------------- what the manifests say
@pytest.fixture(scope="module")
def training_config(tmp_path_factory) -> Path:
    """The ConfigMap's train.yaml as a file, as the pods see it at /etc/partialfc/train.yaml."""
    config_map = next(d for d in documents("k8s/common/config.yaml") if d["kind"] == "ConfigMap")
    path = tmp_path_factory.mktemp("configmap") / "train.yaml"
    path.write_text(config_map["data"]["train.yaml"])
    return path


def test_configmap_is_a_valid_training_config(training_config):
    config = load_config(training_config)
    assert config.output.startswith("/checkpoints/") and config.data.path.startswith("/data/")
    assert config.metrics.port == 9400 and config.metrics.multiproc_dir.startswith("/tmp/")
    assert config.checkpoint.resume == "auto"


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_is_unprivileged_with_gpus_storage_and_metrics(variant):
    template = pod_template(workload(variant))
    spec, (container,) = template["spec"], template["spec"]["containers"]
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "partialfc"  # PodMonitor selector
    assert "app.kubernetes.io/instance" in template["metadata"]["labels"]  # PodMonitor jobLabel
    assert container["name"] == "pytorch"
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert security.get("privileged") is not True
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "8" and {"cpu", "memory"} <= set(resources["requests"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == 9400
    podmonitor = documents("k8s/monitoring/podmonitor.yaml")[0]
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert mounts["/data"]["readOnly"] and volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["readOnly"]
    claims = {d["metadata"]["name"]: d for d in documents("k8s/common/storage.yaml")}
    checkpoints = volumes[mounts["/checkpoints"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claims[checkpoints]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert container["args"][-2:] == ["--config", "/etc/partialfc/train.yaml"]


def test_restart_policies_bring_a_failed_node_back():
    """A failed container restarts in its pod (Job, PyTorchJob); JobSet recreates the whole gang.
    Every restart resumes from the newest checkpoint (checkpoint.resume auto, checked above)."""
    job, pytorchjob, jobset = (workload(variant) for variant in VARIANTS)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] > 0
    worker = pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["restartPolicy"] == "OnFailure" and pytorchjob["spec"]["runPolicy"]["backoffLimit"] > 0
    assert pytorchjob["spec"]["elasticPolicy"]["maxRestarts"] > 0
    nodes = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert nodes["template"]["spec"]["restartPolicy"] == "Never" and nodes["backoffLimit"] == 0
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] > 0


def scheduler_env(variant: str, node: int) -> dict[str, str]:
    """What Kubernetes (and the operator) add to the manifest's env in the pod of node ``node``."""
    document = workload(variant)
    name = document["metadata"]["name"]
    if variant == "pytorchjob":
        elastic = document["spec"]["elasticPolicy"]
        (port,) = [p["containerPort"] for p in pod_template(document)["spec"]["containers"][0]["ports"]
                   if p["name"] == "pytorchjob-port"]
        return {"PET_RDZV_ENDPOINT": f"{name}-worker-0:{port}", "PET_RDZV_BACKEND": elastic["rdzvBackend"],
                "PET_NNODES": f"{elastic['minReplicas']}:{elastic['maxReplicas']}",
                "PET_MAX_RESTARTS": str(elastic["maxRestarts"])}
    env = {"JOB_COMPLETION_INDEX": str(node)}
    if variant == "jobset":
        env["JOBSET_NAME"] = name
    return env


EXPECTED = {  # rendezvous host: the DNS name Kubernetes gives pod 0 (see each manifest's header)
    "indexed-job": ("ms1mv3-r50-0.ms1mv3-r50:29400", "2"),
    "pytorchjob": ("ms1mv3-r50-worker-0:29400", "2:2"),
    "jobset": ("ms1mv3-r50-node-0-0.ms1mv3-r50:29400", "2"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_manifest_starts_a_two_node_eight_gpu_job(variant, training_config, capsys):
    container = pod_template(workload(variant))["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = [str(training_config) if a == "/etc/partialfc/train.yaml" else a for a in container["args"]]
    assert launcher_main(["--print", *args], {**env, **scheduler_env(variant, node=1)}) == 0
    out = capsys.readouterr().out
    endpoint, nnodes = EXPECTED[variant]
    command = out.split("command: ", 1)[1]
    assert f"--rdzv-endpoint {endpoint} " in command and f"--nnodes {nnodes} " in command, out
    assert "--nproc-per-node 8 " in command and "--max-restarts 3 " in command, out
    assert "collective timeout (dist.timeout_s): 1800 s" in out and "join_timeout=1860" in command


def test_install_script_is_what_the_dockerfile_runs():
    dockerfile = (REPO / "docker/Dockerfile").read_text()
    assert re.search(r"^RUN bash docker/install.sh /opt/partialfc", dockerfile, re.M)
    assert re.search(r"^ENTRYPOINT \[\"python\", \"-m\", \"launcher\"\]", dockerfile, re.M)
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", dockerfile, re.M) and "EXPOSE 9400" in dockerfile
    assert re.search(r"^FROM \S+:\S*cuda12\S*$", dockerfile, re.M), "base must be pinned by a CUDA 12 tag"
    included = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {src for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]}
    assert {p.rstrip("/") for p in included} == {p.rstrip("/") for p in copied}
