"""Deployment files: the Kubernetes manifests and the Dockerfile pass their validators and linters,
each manifest starts the job it claims to (the launcher's view of a node it would create), the
controllers that run them (Job, JobSet, training-operator) would do what the comments say, and
docs/deploy.md shows the launcher's real output and Kueue objects the current API accepts."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from k8s_manifests import VARIANTS, documents, pod_template, scheduler_env, workload
from training_run import REPO

from launcher.__main__ import main as launcher_main
from partialfc.config import add_config_arguments, config_from_args, load_config

LINT = REPO / ".venv-lint" / "bin"
CHECKER = Path(__file__).with_name("check_custom_kinds.py")
MANIFESTS = [
    *sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "k8s").glob("*/*.yaml")
        if p.parent.name in ("common", "data", *VARIANTS)
    ),
    "k8s/monitoring/podmonitor.yaml",
]
DEPLOY_DOC = REPO / "docs" / "deploy.md"
PRINT_BEGIN, PRINT_END = "<!-- launcher-print:begin -->", "<!-- launcher-print:end -->"


def every_document() -> list[tuple[str, dict]]:
    return [(path, document) for path in MANIFESTS for document in documents(path) if document]


def every_pod_template() -> list[tuple[str, dict]]:
    """(where, pod template) of every workload in k8s/: the three variants and the data Jobs."""
    return [
        (f"{path}: {d['kind']}/{d['metadata']['name']}", pod_template(d))
        for path, d in every_document()
        if d["kind"] in ("Job", "PyTorchJob", "JobSet")
    ]


def data_job(name: str) -> dict:
    return next(
        d
        for path in MANIFESTS
        if path.startswith("k8s/data/")
        for d in documents(path)
        if d["kind"] == "Job" and d["metadata"]["name"] == name
    )


def claim_mounts(template: dict) -> dict[str, list[tuple[str, bool]]]:
    """claim name -> [(mount path, read-only)] for every container of a pod template."""
    spec = template["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
    mounts: dict[str, list[tuple[str, bool]]] = {}
    for container in spec.get("initContainers", []) + spec["containers"]:
        for mount in container.get("volumeMounts", []):
            if mount["name"] in claims:
                claim = claims[mount["name"]]
                read_only = bool(mount.get("readOnly")) or bool(claim.get("readOnly"))
                mounts.setdefault(claim["claimName"], []).append((mount["mountPath"], read_only))
    return mounts


# ---------------------------------------------------------------------- validators and linters
@pytest.fixture(scope="module")
def lint() -> Path:
    if not (LINT / "kubernetes-validate").exists():
        if os.environ.get("PARTIALFC_REQUIRE_LINT"):
            pytest.fail(f"{LINT} lacks the linters: run `make lint-venv`")
        pytest.skip("the manifest and Dockerfile linters are not installed: `make lint-venv`")
    return LINT


def run(*command: str | Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command], cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


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
    for target in (
        ["-d", "k8s", "--framework", "kubernetes"],
        ["-f", "docker/Dockerfile", "--framework", "dockerfile"],
    ):
        result = run(lint / "checkov", *target, "--quiet", "--compact", BC_SKIP_MAPPING="TRUE")
        assert result.returncode == 0, result.stdout + result.stderr
    for path, document in every_document():
        for key, value in document["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV\w+=.{20,}", value), f"{path}: {key} needs a reason: {value!r}"
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
    datasets = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claims[datasets]["spec"]["accessModes"] == ["ReadWriteMany"]  # fillable (see the dataset test)
    assert container["args"][container["args"].index("--config") + 1] == "/etc/partialfc/train.yaml"


def test_restart_policies_bring_a_failed_node_back():
    """A failed pod is replaced (Indexed Job: restartPolicy Never, as podFailurePolicy requires); a
    failed container restarts in its pod (PyTorchJob); JobSet recreates the whole gang. Every restart
    resumes from the newest checkpoint (checkpoint.resume auto, checked above)."""
    job, pytorchjob, jobset = (workload(variant) for variant in VARIANTS)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] > 0
    worker = pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["restartPolicy"] == "OnFailure" and pytorchjob["spec"]["runPolicy"]["backoffLimit"] > 0
    assert pytorchjob["spec"]["elasticPolicy"]["maxRestarts"] > 0
    nodes = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert nodes["template"]["spec"]["restartPolicy"] == "Never" and nodes["backoffLimit"] == 0
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] > 0


EXPECTED = {  # every variant's rendezvous: the store's Service (k8s/common/rendezvous-store.yaml), its own id
    "indexed-job": ("partialfc-rendezvous:29400", "2", "ms1mv3-r50-job"),
    "pytorchjob": ("partialfc-rendezvous:29400", "2:2", "ms1mv3-r50-pytorchjob"),
    "jobset": ("partialfc-rendezvous:29400", "2", "ms1mv3-r50-jobset"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_manifest_starts_a_two_node_eight_gpu_job(variant, training_config, capsys):
    container = pod_template(workload(variant))["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = [str(training_config) if a == "/etc/partialfc/train.yaml" else a for a in container["args"]]
    assert launcher_main(["--print", *args], {**env, **scheduler_env(variant, node=1)}) == 0
    out = capsys.readouterr().out
    endpoint, nnodes, rdzv_id = EXPECTED[variant]
    command = out.split("command: ", 1)[1]
    assert f"--rdzv-endpoint {endpoint} --rdzv-id {rdzv_id} " in command and f"--nnodes {nnodes} " in command, out
    assert "--nproc-per-node 8 " in command and "--max-restarts 3 " in command, out
    assert "collective timeout (dist.timeout_s): 1800 s" in out and "join_timeout=1860" in command


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_pod_hosts_the_rendezvous_store(variant, training_config, capsys):
    """Pod 0 is a store client like every other pod (is_host=false), so losing it costs what losing any
    pod costs (tests/multinode/test_rendezvous_store.py); the store is the Deployment's."""
    container = pod_template(workload(variant))["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = [str(training_config) if a == "/etc/partialfc/train.yaml" else a for a in container["args"]]
    for node in (0, 1):
        assert launcher_main(["--print", *args], {**env, **scheduler_env(variant, node)}) == 0
        out = capsys.readouterr().out
        assert "rendezvous store: external (python -m launcher store); no node hosts it" in out, out
        assert ",is_host=false " in out.split("command: ", 1)[1], out
    assert {p["name"] for p in container["ports"]} == {"metrics"}  # nothing in the pod serves a rendezvous


# ---------------------------------------------------------------------- names, order, storage
def service_names(variant: str) -> set[str]:
    """The Services a variant's controller gives its pods, derived the way each controller does it.

    Indexed Job: the Service documents in the manifest. JobSet: one headless Service named
    ``spec.network.subdomain``, defaulting to the JobSet's name (GetSubdomain and
    createHeadlessSvcIfNecessary, pkg/controllers/jobset_controller.go, JobSet v0.12.0).
    PyTorchJob: one Service per replica, ``<job>-<replica type lower-case>-<index>`` (GenGeneralName,
    pkg/core/utils.go, and pkg/controller.v1/common/service.go, training-operator v1.9.4)."""
    document = workload(variant)
    name = document["metadata"]["name"]
    if variant == "indexed-job":
        return {d["metadata"]["name"] for d in documents(VARIANTS[variant]) if d["kind"] == "Service"}
    if variant == "jobset":
        return {document["spec"].get("network", {}).get("subdomain", name)}
    return {
        f"{name}-{rtype.lower()}-{i}"
        for rtype, spec in document["spec"]["pytorchReplicaSpecs"].items()
        for i in range(spec["replicas"])
    }


def run_output(variant: str) -> str:
    """The run directory the variant's pods train into: the ConfigMap's, unless the args override it."""
    config_map = next(d for d in documents("k8s/common/config.yaml") if d["kind"] == "ConfigMap")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(config_map["data"]["train.yaml"])
        args = pod_template(workload(variant))["spec"]["containers"][0]["args"]
        train_args = [str(path) if a == "/etc/partialfc/train.yaml" else a for a in args[args.index("--") + 1 :]]
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--config")
        add_config_arguments(parser)
        return config_from_args(parser.parse_args(train_args)).output


def test_each_variant_has_its_own_names():
    """No two variants share a workload name, a Service, an instance label or a run directory: the
    JobSet controller adopts an existing Service of its name without checking the selector, so a
    Service shared with the Indexed Job would leave the JobSet's pods unresolvable."""
    names = {variant: workload(variant)["metadata"]["name"] for variant in VARIANTS}
    assert len(set(names.values())) == len(VARIANTS), names
    services = {variant: service_names(variant) for variant in VARIANTS}
    for a in VARIANTS:
        for b in VARIANTS:
            if a < b:
                assert not services[a] & services[b], (a, b, services)
    instances = {pod_template(workload(v))["metadata"]["labels"]["app.kubernetes.io/instance"] for v in VARIANTS}
    assert instances == set(names.values())
    outputs = {variant: run_output(variant) for variant in VARIANTS}
    assert outputs == {variant: f"/checkpoints/{names[variant]}" for variant in VARIANTS}, outputs


def test_pods_resolve_behind_the_variants_own_service_and_rendezvous_at_the_store():
    """Each pod resolves as ``<hostname>.<subdomain>`` (the workers find group rank 0's pod by it), with
    the Indexed Job's hostname ``<job>-<index>`` (its Service selecting the Job's pods by
    batch.kubernetes.io/job-name) and the JobSet's ``<jobset>-<replicated job>-<job index>-<pod
    index>`` (GenPodName, pkg/util/placement/placement.go, JobSet v0.12.0); the rendezvous host is the
    store's Service, and each variant names its rendezvous after itself."""
    store = store_documents()
    job = workload("indexed-job")
    (service,) = [d for d in documents(VARIANTS["indexed-job"]) if d["kind"] == "Service"]
    spec = job["spec"]["template"]["spec"]
    assert spec["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    assert service["spec"]["publishNotReadyAddresses"] is True
    jobset = workload("jobset")
    assert jobset["spec"]["network"]["enableDNSHostnames"] and jobset["spec"]["network"]["publishNotReadyAddresses"]
    for variant in ("indexed-job", "jobset"):
        env = {e["name"]: e.get("value") for e in pod_template(workload(variant))["spec"]["containers"][0]["env"]}
        assert env["PARTIALFC_RDZV_HOST"] == store["Service"]["metadata"]["name"], variant
        assert env["PARTIALFC_RDZV_STORE"] == "external", variant
        assert env["PET_RDZV_ID"] == workload(variant)["metadata"]["name"], variant
    pytorchjob = workload("pytorchjob")
    elastic = pytorchjob["spec"]["elasticPolicy"]
    assert (elastic["rdzvHost"], elastic["rdzvPort"]) == (store["Service"]["metadata"]["name"], store_port(store))
    assert elastic["rdzvId"] == pytorchjob["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in pod_template(pytorchjob)["spec"]["containers"][0]["env"]}
    assert env["PARTIALFC_RDZV_STORE"] == "external"


# ---------------------------------------------------------------------- the rendezvous store
STORE_FILE = "k8s/common/rendezvous-store.yaml"


def store_documents() -> dict[str, dict]:
    return {d["kind"]: d for d in documents(STORE_FILE)}


def store_port(store: dict[str, dict]) -> int:
    """The port the store's container listens on, read from its args the way `python -m launcher store` does."""
    from launcher.store import build_parser as store_parser

    (container,) = store["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "store"  # the image's entrypoint is `python -m launcher`
    return store_parser().parse_args(container["args"][1:]).port


def test_store_is_one_small_pod_behind_a_service_on_its_port():
    """One replica, replaced only after the old one stopped (Recreate: two stores behind one Service would
    split a rendezvous), ready once it listens; the training image without a GPU; the Service (not
    headless: one address that outlives the pod) sends the rendezvous port to it."""
    store = store_documents()
    deployment, service = store["Deployment"], store["Service"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    port = store_port(store)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"rendezvous": port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] in ("rendezvous", port), probe
    training = pod_template(workload("indexed-job"))["spec"]["containers"][0]
    assert container["image"] == training["image"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not template["spec"].get("tolerations")  # not on the GPU nodes
    assert service["spec"].get("clusterIP") != "None" and service["spec"]["selector"] == spec["selector"]["matchLabels"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] in ("rendezvous", port)
    security = container["securityContext"]
    assert template["spec"]["securityContext"]["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]


def ingress_allowed(policies: list[dict], pod: dict[str, str], peer: dict[str, str], port: int) -> bool:
    """Does a pod labelled ``pod`` accept TCP ``port`` from a pod labelled ``peer`` in its namespace?
    Kubernetes networking.k8s.io/v1 NetworkPolicy: a pod no Ingress policy selects accepts everything;
    otherwise the union of the rules of the policies that select it, a rule matching when one of its
    ``from`` peers' podSelector matches (no ``from``: any peer) and one of its ports (no ``ports``: any)."""

    def selects(selector: dict, labels: dict[str, str]) -> bool:
        assert set(selector) <= {"matchLabels"}, selector  # matchExpressions are not used in k8s/
        return selector.get("matchLabels", {}).items() <= labels.items()

    ingress = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]]
    selecting = [p for p in ingress if selects(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            peer_ok = peers is None or any("podSelector" in f and selects(f["podSelector"], peer) for f in peers)
            ports = rule.get("ports")
            port_ok = ports is None or any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports)
            if peer_ok and port_ok:
                return True
    return False


def test_network_policies_let_the_training_pods_and_no_others_reach_the_store():
    policies = [d for d in documents("k8s/common/networkpolicy.yaml") if d["kind"] == "NetworkPolicy"]
    store = store_documents()
    store_labels = store["Deployment"]["spec"]["template"]["metadata"]["labels"]
    port = store_port(store)
    for variant in VARIANTS:
        training = pod_template(workload(variant))["metadata"]["labels"]
        assert ingress_allowed(policies, store_labels, training, port), variant
        assert ingress_allowed(policies, training, training, 40000), variant  # NCCL/gloo between the nodes
    loader = data_job("partialfc-load-dataset")["spec"]["template"]["metadata"]["labels"]
    assert not ingress_allowed(policies, store_labels, loader, port)
    assert not ingress_allowed(policies, store_labels, {"app": "elsewhere"}, port)
    assert not ingress_allowed(policies, store_labels, training, port + 1)


def test_namespace_is_created_first():
    """kubectl applies a directory's files in file-name order (sorted), one document after another,
    so `kubectl apply -f k8s/common/` works on an empty cluster only if the Namespace comes first."""
    files = sorted((REPO / "k8s" / "common").glob("*.yaml"), key=lambda p: p.name)
    first = [d for d in yaml.safe_load_all(files[0].read_text()) if d]
    assert first[0]["kind"] == "Namespace", f"{files[0].name} sorts first but does not start with the Namespace"
    namespace = first[0]["metadata"]["name"]
    for path, document in every_document():
        if document["kind"] != "Namespace" and not path.startswith("k8s/monitoring/"):  # applied with -n
            assert document["metadata"].get("namespace") == namespace, f"{path}: {document['metadata']['name']}"


def test_dataset_claim_can_be_filled_and_training_only_reads_it():
    """A dynamically provisioned volume starts empty, so the dataset claim must be writable
    (ReadWriteMany: the data-load Job writes it, every training pod on any node reads it). Only the
    data Jobs mount it read-write; every training pod mounts it read-only."""
    claims = {d["metadata"]["name"]: d for d in documents("k8s/common/storage.yaml")}
    assert claims["partialfc-datasets"]["spec"]["accessModes"] == ["ReadWriteMany"]
    writers = set()
    for where, template in every_pod_template():
        for _path, read_only in claim_mounts(template).get("partialfc-datasets", []):
            if not read_only:
                writers.add(where.split(": ")[1])
    assert writers == {"Job/partialfc-load-dataset", "Job/partialfc-volume-owner"}, writers
    for variant in VARIANTS:
        assert claim_mounts(pod_template(workload(variant)))["partialfc-datasets"] == [("/data", True)], variant


@pytest.fixture(scope="module")
def source_dataset(tmp_path_factory) -> Path:
    from partialfc.data.synth import generate_synthetic_dataset

    path = tmp_path_factory.mktemp("source") / "ms1m"
    generate_synthetic_dataset(path, 4, 2, seed=5, workers=1, progress=False)
    return path


def run_load_script(source: Path, data: Path) -> subprocess.CompletedProcess:
    """The data-load Job's container command, run here with its mount points moved under tmp dirs and
    `python` this interpreter (the image's `python` runs the same partialfc.data)."""
    job = data_job("partialfc-load-dataset")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    script = container["args"][0].replace(mounts["source"], str(source)).replace(mounts["datasets"], str(data))
    bin_dir = data.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "python"  # a script, not a symlink: a venv's interpreter must be run by its own path
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    return subprocess.run([*container["command"], script], capture_output=True, text=True, timeout=300, env=env)


def test_data_load_job_copies_verifies_and_indexes_where_training_reads(source_dataset, tmp_path):
    """The data-load Job's own script, run on a small dataset: the data ends at the ConfigMap's
    data.path with DALI's index beside it; a corrupt source stops it before anything reaches that path."""
    job = data_job("partialfc-load-dataset")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    training = pod_template(workload("indexed-job"))["spec"]
    assert container["image"] == training["containers"][0]["image"]
    assert spec["securityContext"]["runAsUser"] == training["securityContext"]["runAsUser"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["restartPolicy"] == "Never"
    assert claim_mounts(job["spec"]["template"])["partialfc-datasets"] == [("/data", False)]  # as training sees it
    config_map = next(d for d in documents("k8s/common/config.yaml") if d["kind"] == "ConfigMap")
    data_path = yaml.safe_load(config_map["data"]["train.yaml"])["data"]["path"]
    assert "python -m partialfc.data verify" in container["args"][0] and f"dst={data_path}" in container["args"][0]

    data = tmp_path / "data"
    data.mkdir()
    result = run_load_script(source_dataset, data)
    assert result.returncode == 0, result.stdout + result.stderr
    target = Path(str(data) + data_path.removeprefix("/data"))
    assert {p.name for p in target.iterdir()} >= {"train.rec", "train.idx", "property", "train.images.idx"}
    assert not Path(f"{target}.incomplete").exists() and "0 problem(s)" in result.stdout

    corrupt = tmp_path / "corrupt"
    (corrupt / "source").mkdir(parents=True)
    (corrupt / "data").mkdir()
    for f in source_dataset.iterdir():
        (corrupt / "source" / f.name).write_bytes(f.read_bytes())
    rec = bytearray((corrupt / "source" / "train.rec").read_bytes())
    rec[len(rec) // 2 : len(rec) // 2 + 400] = bytes(400)
    (corrupt / "source" / "train.rec").write_bytes(bytes(rec))
    result = run_load_script(corrupt / "source", corrupt / "data")
    assert result.returncode != 0 and "CORRUPT" in result.stdout, result.stdout + result.stderr  # verify stopped it
    assert not Path(str(corrupt / "data") + data_path.removeprefix("/data")).exists()


def test_ownership_job_gives_the_checkpoint_volume_to_the_training_uid():
    """Most RWX volumes ignore fsGroup: the one-off Job chowns the checkpoint claim's mount point
    (and the dataset claim's) to the training pods' UID:GID, as root with CAP_CHOWN only."""
    job = data_job("partialfc-volume-owner")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = claim_mounts(job["spec"]["template"])
    training = pod_template(workload("indexed-job"))["spec"]["securityContext"]
    owner = f"{training['runAsUser']}:{training['runAsGroup']}"
    assert container["command"][:2] == ["chown", owner]
    (checkpoints,) = mounts["partialfc-checkpoints"]
    (datasets,) = mounts["partialfc-datasets"]
    assert checkpoints[0] in container["command"][2:] and datasets[0] in container["command"][2:]
    assert "-R" not in container["command"]  # the volumes are new: their roots are enough
    assert spec["securityContext"]["runAsUser"] == 0 and spec["restartPolicy"] == "Never"
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert security["allowPrivilegeEscalation"] is False and security.get("privileged") is not True


def test_fsgroup_is_applied_once_not_at_every_start():
    """Where kubelet applies fsGroup it chowns the whole volume at every pod start unless
    fsGroupChangePolicy is OnRootMismatch (core/v1 PodSecurityContext)."""
    checked = 0
    for where, template in every_pod_template():
        security = template["spec"].get("securityContext", {})
        if "fsGroup" in security:
            assert security.get("fsGroupChangePolicy") == "OnRootMismatch", where
            checked += 1
    assert checked >= len(VARIANTS) + 1


# ---------------------------------------------------------------------- disruptions and failure budgets
def job_pod_failure(job_spec: dict, pod_conditions: set[str], exit_code: int = 1) -> tuple[str, str]:
    """What the Job controller does with a failed pod of container ``pytorch``: (action, message) of the
    first podFailurePolicy rule that matches, else ("Count", "") against backoffLimit. A rule matches on
    one of its onPodConditions the pod has with that status, or on the container's exit code In (NotIn)
    its values, and FailJob's message is the controller's. Kubernetes batch/v1 Job pod failure policy
    (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy,
    pkg/controller/job/pod_failure_policy.go: matchPodFailurePolicy)."""
    for index, rule in enumerate(job_spec.get("podFailurePolicy", {}).get("rules", [])):
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes.get("containerName", "pytorch") == "pytorch"
            inside = exit_code in codes["values"]
            if exit_code != 0 and (inside if codes["operator"] == "In" else not inside):
                return rule["action"], (
                    f"Container pytorch for pod partialfc/node-1 failed with exit code {exit_code} "
                    f"matching {rule['action']} rule at index {index}"
                )
        else:
            for condition in rule["onPodConditions"]:
                if condition["type"] in pod_conditions and condition.get("status", "True") == "True":
                    return rule["action"], (
                        f"Pod partialfc/node-1 has condition {condition['type']} matching "
                        f"{rule['action']} rule at index {index}"
                    )
    return "Count", ""


def job_failure(job_spec: dict, pod_conditions: set[str], exit_code: int = 1) -> tuple[str | None, str]:
    """(reason, message) of the Job's Failed condition after one failed pod; reason None if it keeps running."""
    action, message = job_pod_failure(job_spec, pod_conditions, exit_code)
    if action == "FailJob":
        return "PodFailurePolicy", message
    if action == "Count" and job_spec.get("backoffLimit", 6) == 0:
        return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    return None, ""


def jobset_action(jobset: dict, replicated_job: str, reason: str, message: str = "") -> str:
    """The JobSet controller's response to a failed child Job: the first failurePolicy rule whose
    onJobFailureReasons (empty: any) holds the reason, whose onJobFailureMessagePatterns (empty: any)
    match the message and whose targetReplicatedJobs (empty: all) hold the replicated job, else
    RestartJobSet (findFirstFailedPolicyRuleAndJob, ruleIsApplicable and
    defaultFailurePolicyRuleAction, pkg/controllers/failure_policy.go, JobSet v0.12.0)."""
    for rule in jobset["spec"]["failurePolicy"].get("rules", []):
        if rule.get("onJobFailureReasons") and reason not in rule["onJobFailureReasons"]:
            continue
        patterns = rule.get("onJobFailureMessagePatterns")
        if patterns and not any(re.search(pattern, message) for pattern in patterns):
            continue
        if rule.get("targetReplicatedJobs") and replicated_job not in rule["targetReplicatedJobs"]:
            continue
        return rule["action"]
    return "RestartJobSet"


def test_indexed_job_replaces_disrupted_pods_without_counting():
    """Exit codes from partialfc/common/exit_codes.py: 143 pre-empted, 2 config, 3 diverged, 1 crash, 4 stall."""
    job = workload("indexed-job")["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # API validation: podFailurePolicy needs Never
    assert job_pod_failure(job, {"DisruptionTarget"}, 143)[0] == "Ignore"
    assert job_pod_failure(job, {"DisruptionTarget"}, 1)[0] == "Ignore"
    assert job_pod_failure(job, set(), 143)[0] == "Ignore"  # a pre-emption without the condition
    assert job_pod_failure(job, set(), 2)[0] == job_pod_failure(job, set(), 3)[0] == "FailJob"
    for crash in (1, 4, 137):  # a crash, a stall, the OOM killer: counted, retried up to backoffLimit
        assert job_pod_failure(job, set(), crash)[0] == "Count" and job["backoffLimit"] > 0
    assert job_pod_failure(job, {"ContainersReady"})[0] == "Count"


def test_jobset_restarts_after_a_disruption_without_counting():
    """A disruption or a pre-emption (143) fails the child Job with reason PodFailurePolicy, and the
    JobSet restarts without adding to restartsCountTowardsMax; a config error or divergence (2, 3)
    fails the JobSet; any other pod failure exceeds backoffLimit 0 and restarts it counted."""
    jobset = workload("jobset")
    policy = jobset["spec"]["failurePolicy"]
    (node,) = jobset["spec"]["replicatedJobs"]
    child = node["template"]["spec"]
    assert child["template"]["spec"]["restartPolicy"] == "Never"
    for conditions, code in (({"DisruptionTarget"}, 143), ({"DisruptionTarget"}, 1), (set(), 143)):
        reason, message = job_failure(child, conditions, code)
        assert reason == "PodFailurePolicy", (conditions, code)
        assert jobset_action(jobset, node["name"], reason, message) == "RestartJobSetAndIgnoreMaxRestarts"
    for code in (2, 3):
        reason, message = job_failure(child, set(), code)
        assert jobset_action(jobset, node["name"], reason, message) == "FailJobSet", code
    for code in (1, 4, 137):
        reason, message = job_failure(child, set(), code)
        assert (
            reason == "BackoffLimitExceeded" and jobset_action(jobset, node["name"], reason, message) == "RestartJobSet"
        )
    assert policy["maxRestarts"] > 0
    for rule in policy["rules"]:  # the webhook's rule-name format (pkg/webhooks/jobset_webhook.go, v0.12.0)
        assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", rule["name"]), rule["name"]


def test_pytorchjob_v1_has_no_pod_failure_policy():
    """training-operator v1's runPolicy has no podFailurePolicy (vendored v1.9.4 schema), so the
    PyTorchJob cannot tell disruptions apart; docs/deploy.md says why drains still do not count."""
    schema = json.loads((REPO / "k8s/schemas/pytorchjob_kubeflow.org_v1.json").read_text())
    run_policy = schema["properties"]["spec"]["properties"]["runPolicy"]["properties"]
    assert "podFailurePolicy" not in run_policy and "backoffLimit" in run_policy
    assert workload("pytorchjob")["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] == "OnFailure"
    assert "runPolicy has no podFailurePolicy" in " ".join(DEPLOY_DOC.read_text().split())


# ---------------------------------------------------------------------- docs/deploy.md
def test_docs_name_each_variant_by_its_own_name():
    """No bare `ms1mv3-r50` left in the deployment guide: only the variants' names, the ConfigMap
    `partialfc-ms1mv3-r50` and the preset's file name."""
    text = DEPLOY_DOC.read_text()
    stale = [m.group(0) for m in re.finditer(r"(?<![\w-])ms1mv3-r50(?!-(job|pytorchjob|jobset)\b)[\w.-]*", text)]
    assert not stale, stale
    for variant in VARIANTS:
        assert workload(variant)["metadata"]["name"] in text, variant


def test_docs_kueue_objects_are_v1beta2_and_match_kueues_schemas(lint, tmp_path):
    """The queue objects the guide tells users to create, against Kueue v0.19.2's v1beta2 CRDs
    (v1beta1 is deprecated since 0.15); the LocalQueue is the one the manifests' queue label names."""
    text = DEPLOY_DOC.read_text()
    assert "kueue.x-k8s.io/v1beta1" not in text
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kueue.x-k8s.io/" in b]
    assert len(blocks) == 1, blocks
    objects = tmp_path / "kueue.yaml"
    objects.write_text(blocks[0])
    result = run(lint / "python", CHECKER, objects)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = set(re.findall(r"^PASS \S+: (\w+)/", result.stdout, re.M))
    assert checked == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}, result.stdout
    (local_queue,) = [d for d in yaml.safe_load_all(blocks[0]) if d["kind"] == "LocalQueue"]
    for variant in VARIANTS:
        labels = workload(variant)["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == local_queue["metadata"]["name"], variant
        assert workload(variant)["metadata"]["namespace"] == local_queue["metadata"]["namespace"]


def launcher_print_block(variant: str, node: int, config: Path) -> str:
    """`python -m launcher --print` as node ``node`` of the variant's manifest would run it: the
    manifest's args and env plus what Kubernetes adds (scheduler_env), with the parts that depend on
    this machine (config path, interpreter, temp dir, host name) written as they are in the pod."""
    container = pod_template(workload(variant))["spec"]["containers"][0]
    env = {**{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}, **scheduler_env(variant, node)}
    args = ["--print", *container["args"]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launcher_main([str(config) if a == "/etc/partialfc/train.yaml" else a for a in args], env) == 0
    text = out.getvalue().replace(str(config), "/etc/partialfc/train.yaml").replace(sys.executable, "python")
    text = re.sub(
        re.escape(tempfile.gettempdir().rstrip("/"))
        + r"/(partialfc-metrics-[\w.-]*?)-"
        + re.escape(socket.gethostname())
        + r"\b",
        r"$TMPDIR/\1-<host name>",
        text,
    )
    added = scheduler_env(variant, node)
    ordered = {**added, **{k: v for k, v in env.items() if k not in added}}  # what Kubernetes adds, then the manifest's
    variables = " ".join(f"{k}={shlex.quote(v)}" for k, v in ordered.items())
    command = f"$ {variables} \\\n    python -m launcher {shlex.join(args)}\n"
    return f"```\n{command}{text.rstrip()}\n```"


def test_docs_print_example_is_the_launchers_output(training_config):
    """docs/deploy.md shows `--print` for node 1 of the Indexed Job exactly as the launcher prints it.
    PARTIALFC_REGENERATE_DOCS=1 rewrites the block instead (after a change to the launcher's output)."""
    text = DEPLOY_DOC.read_text()
    assert text.count(PRINT_BEGIN) == 1 and text.count(PRINT_END) == 1
    head, rest = text.split(PRINT_BEGIN)
    current, tail = rest.split(PRINT_END)
    expected = "\n" + launcher_print_block("indexed-job", 1, training_config) + "\n"
    if os.environ.get("PARTIALFC_REGENERATE_DOCS") == "1":
        DEPLOY_DOC.write_text(head + PRINT_BEGIN + expected + PRINT_END + tail)
        return
    assert current == expected, "docs/deploy.md's --print block is stale: rerun with PARTIALFC_REGENERATE_DOCS=1"
