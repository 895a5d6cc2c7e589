"""Versions and platforms that are true: each manifest states the minimum Kubernetes and operator
releases its fields need, as read in those projects' sources, and docs/deploy.md says the same; the
image builds for linux/amd64 and linux/arm64, which docker/check_wheels.py proves from the package
index's metadata (a wheel for every pinned package on both, a CUDA torch on both)."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from packaging.version import Version
from training_run import REPO

DEPLOY_DOC = REPO / "docs" / "deploy.md"
CHECK_WHEELS = REPO / "docker" / "check_wheels.py"
WHEELS_BEGIN, WHEELS_END = "<!-- wheel-check:begin -->", "<!-- wheel-check:end -->"
VARIANTS = {
    "k8s/indexed-job/": "k8s/indexed-job/job.yaml",
    "k8s/pytorchjob/": "k8s/pytorchjob/pytorchjob.yaml",
    "k8s/jobset/": "k8s/jobset/jobset.yaml",
}
# Every manifest but the training config's ConfigMap (k8s/common/config.yaml: a core/v1 ConfigMap,
# whose header describes the configuration).
MANIFESTS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "k8s").glob("*/*.yaml")
    if (p.parent.name in ("common", "data", "indexed-job", "jobset", "pytorchjob") or p.name == "podmonitor.yaml")
    and p.name != "config.yaml"
)


# ---------------------------------------------------------------------- the versions the fields need
@dataclass(frozen=True)
class Floor:
    """A field (regular expression over a manifest's ``Kind:path=value`` entries) and the first release
    of ``component`` that has it, with where that was read."""

    component: str
    version: str
    field: str
    source: str


K8S_FEATURES = "kubernetes pkg/features/kube_features.go (v1.23: alpha/beta/GA comments)"
K8S_VERSIONED = "kubernetes pkg/features/versioned_kube_features.go (v1.33)"
FLOORS = [
    Floor("Kubernetes", "1.0", r"^(Namespace|PersistentVolumeClaim):apiVersion=v1$", "core/v1 since Kubernetes 1.0"),
    Floor(
        "Kubernetes",
        "1.8",
        r"^NetworkPolicy:spec/policyTypes=",
        "staging/src/k8s.io/api/networking/v1/types.go: policyTypes 'beta-level in 1.8'",
    ),
    Floor(
        "Kubernetes",
        "1.19",
        r"/securityContext/seccompProfile/type=",
        "seccomp stable in 1.19, kubernetes.io/docs/reference/node/seccomp (KEP sig-node/135-seccomp)",
    ),
    Floor(
        "Kubernetes",
        "1.20",
        r"/securityContext/fsGroupChangePolicy=",
        f"ConfigurableFSGroupPolicy beta (on by default) in 1.20, {K8S_FEATURES}",
    ),
    Floor(
        "Kubernetes",
        "1.21",
        r"^Job:spec/ttlSecondsAfterFinished=",
        f"TTLAfterFinished beta (on by default) in 1.21, {K8S_FEATURES}",
    ),
    Floor("Kubernetes", "1.22", r"/completionMode=Indexed$", f"IndexedJob beta in 1.22, {K8S_FEATURES}"),
    Floor(
        "Kubernetes",
        "1.26",
        r"/podFailurePolicy/",
        f"JobPodFailurePolicy beta, on by default, in 1.26, {K8S_VERSIONED}",
    ),
    Floor(
        "Kubernetes",
        "1.26",
        r"/onPodConditions/type=DisruptionTarget$",
        f"PodDisruptionConditions beta (on by default) in 1.26, {K8S_VERSIONED}",
    ),
    Floor(
        "Kubernetes",
        "1.27",
        r"^Service:spec/selector/batch\.kubernetes\.io/job-name=",
        "label set by the Job controller since 1.27, kubernetes/website docs/reference/labels-annotations-taints",
    ),
    Floor("JobSet", "v0.2.0", r"^JobSet:apiVersion=jobset\.x-k8s\.io/v1alpha2$", "api/jobset/v1alpha2 at v0.2.0"),
    Floor(
        "JobSet",
        "v0.6.0",
        r"^JobSet:spec/(network/publishNotReadyAddresses|failurePolicy/rules/onJobFailureReasons)=",
        "api/jobset/v1alpha2/jobset_types.go at v0.6.0",
    ),
    Floor(
        "JobSet",
        "v0.10.0",
        r"^JobSet:spec/failurePolicy/rules/onJobFailureMessagePatterns=",
        "api/jobset/v1alpha2/jobset_types.go at v0.10.0",
    ),
    Floor(
        "Kubeflow training-operator",
        "v1.4.0",
        r"^PyTorchJob:spec/elasticPolicy/",
        "pkg/apis/pytorch/v1/types.go at v1.4.0",
    ),
    Floor(
        "Kubeflow training-operator",
        "v1.7.0",
        r"^PyTorchJob:spec/nprocPerNode=",
        "pkg/apis/kubeflow.org/v1/pytorch_types.go at v1.7.0",
    ),
    Floor(
        "Kueue",
        "v0.3.0",
        r"^Job:metadata/labels/kueue\.x-k8s\.io/queue-name=",
        "QueueLabel, pkg/controller/jobframework/constants.go at v0.3.0",
    ),
    Floor(
        "Kueue",
        "v0.4.0",
        r"^JobSet:metadata/labels/kueue\.x-k8s\.io/queue-name=",
        "pkg/controller/jobs/jobset at v0.4.0",
    ),
    Floor(
        "Kueue",
        "v0.5.0",
        r"^PyTorchJob:metadata/labels/kueue\.x-k8s\.io/queue-name=",
        "pkg/controller/jobs/kubeflow/jobs/pytorchjob at v0.5.0",
    ),
    Floor("Prometheus Operator", "v0.31.0", r"^PodMonitor:", "pkg/apis/monitoring/v1/types.go at v0.31.0"),
]
NEEDS = re.compile(r"([A-Za-z][\w -]*?) (?:>=|≥) (v?\d+(?:\.\d+)+)")


def flatten(kind: str, node: object, path: tuple[str, ...] = ()) -> Iterator[str]:
    """``Kind:a/b/c=value`` for every scalar of a manifest document (list positions dropped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from flatten(kind, value, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            yield from flatten(kind, item, path)
    else:
        yield f"{kind}:{'/'.join(path)}={node}"


@functools.cache
def entries(path: str) -> list[str]:
    return [e for d in yaml.safe_load_all((REPO / path).read_text()) if d for e in flatten(d["kind"], d)]


def needed(path: str) -> dict[str, Version]:
    """component -> the newest first release among the floors whose field the manifest uses."""
    versions: dict[str, Version] = {}
    for floor in FLOORS:
        if any(re.search(floor.field, entry) for entry in entries(path)):
            versions[floor.component] = max(versions.get(floor.component, Version("0")), Version(floor.version))
    return versions


def stated(path: str) -> dict[str, Version]:
    """component -> version of the manifest's ``# Needs:`` line (in its leading comment block)."""
    header = []
    for line in (REPO / path).read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    lines = [line for line in header if line.startswith("# Needs: ")]
    assert len(lines) == 1, f"{path}: its header needs exactly one `# Needs: ...` line, found {lines}"
    return {name: Version(version) for name, version in NEEDS.findall(lines[0])}


@pytest.mark.parametrize("path", MANIFESTS)
def test_manifest_header_states_the_versions_its_fields_need(path):
    """The header's versions are those of the newest field the manifest uses: not lower (the
    manifest would be refused or misread), not higher (an unneeded upgrade)."""
    assert stated(path) == needed(path), (
        f"{path}: the header says {stated(path)}, the fields need {needed(path)} (FLOORS in {__file__})"
    )


def test_every_floor_is_used_by_some_manifest():
    """No stale row: each version in the table is the floor of a field some manifest has."""
    unused = [f for f in FLOORS if not any(re.search(f.field, e) for path in MANIFESTS for e in entries(path))]
    assert not unused, unused


def test_jobset_manifest_needs_jobset_0_10_for_message_patterns():
    """onJobFailureMessagePatterns first appears in JobSet v0.10.0; Kubeflow Trainer v2.0 installs
    v0.8.2, whose CRD does not have it."""
    path = VARIANTS["k8s/jobset/"]
    assert any("onJobFailureMessagePatterns=" in e for e in entries(path))
    assert stated(path)["JobSet"] >= Version("0.10.0")


def deploy_table_needs() -> dict[str, dict[str, Version]]:
    """Variant directory -> the versions of its row's Needs column in docs/deploy.md's first table."""
    rows = {}
    for line in DEPLOY_DOC.read_text().splitlines():
        match = re.match(r"\| \[`(k8s/[\w-]+/)`\]", line)
        if match:
            columns = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[match[1]] = {name: Version(v) for name, v in NEEDS.findall(columns[2])}
    return rows


def test_deploy_guide_states_the_versions_of_the_manifest_headers():
    table = deploy_table_needs()
    assert set(table) == set(VARIANTS), table
    for variant, path in VARIANTS.items():
        assert table[variant] == stated(path), f"docs/deploy.md, {variant} row: {table[variant]} vs {path}"
    text = " ".join(DEPLOY_DOC.read_text().split())
    (podmonitor,) = re.findall(r"the PodMonitor needs Prometheus Operator ≥ (v[\d.]+)", text)
    assert {"Prometheus Operator": Version(podmonitor)} == stated("k8s/monitoring/podmonitor.yaml")


def test_deploy_guide_tells_how_to_read_each_running_version():
    """The names in the commands are those of the projects' release manifests: JobSet config/default
    (namespace jobset-system, prefix jobset-, container manager), training-operator
    manifests/overlays/standalone (namespace kubeflow, Deployment and container training-operator),
    Kueue config/default (kueue-system, kueue-, manager), Prometheus Operator's CRD annotation
    operator.prometheus.io/version (written since v0.69.0)."""
    text = DEPLOY_DOC.read_text()
    for command in (
        "kubectl version",
        "kubectl -n jobset-system get deploy jobset-controller-manager",
        '[?(@.name=="manager")].image',
        "kubectl explain jobset.spec.failurePolicy.rules.onJobFailureMessagePatterns",
        "kubectl -n kubeflow get deploy training-operator",
        '[?(@.name=="training-operator")].image',
        "kubectl explain pytorchjob.spec.nprocPerNode",
        "kubectl -n kueue-system get deploy kueue-controller-manager",
        "kubectl get crd podmonitors.monitoring.coreos.com",
        r"operator\.prometheus\.io/version",
    ):
        assert command in text, command


# ---------------------------------------------------------------------- the image's two platforms
def load_check_wheels():
    spec = importlib.util.spec_from_file_location("check_wheels", CHECK_WHEELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_wheels"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


check_wheels = load_check_wheels()
TARGET = check_wheels.Target((3, 12), (2, 36))


def test_dockerfile_and_docs_build_for_the_platforms_the_check_covers():
    """The buildx command in the guide and the Dockerfile's header build exactly the platforms the
    wheel check covers; nothing the image runs at build time names an architecture."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    platforms = ",".join(check_wheels.PLATFORMS)
    assert f"docker buildx build --platform {platforms} -f docker/Dockerfile" in DEPLOY_DOC.read_text()
    assert f"docker buildx build --platform {platforms} -f docker/Dockerfile" in dockerfile
    assert check_wheels.base_image(dockerfile) == TARGET
    (base,) = re.findall(r"^FROM .*$", dockerfile, re.M)
    assert "--platform" not in base, base  # a pinned platform would build amd64 layers into the arm64 image
    for path in ("docker/Dockerfile", "docker/install.sh"):
        code = [line for line in (REPO / path).read_text().splitlines() if not line.lstrip().startswith("#")]
        arch = [line for line in code if re.search(r"x86_64|amd64|aarch64|arm64|TARGETARCH", line)]
        assert not arch, f"{path}: architecture-specific lines {arch}"


def test_image_ships_no_compiler_and_the_guide_says_so():
    """The slim base purges the gcc it builds CPython with; the guide warns torch.compile off."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert not re.search(r"apt-get install|apk add|\b(gcc|g\+\+|clang|build-essential)\b", dockerfile.split("FROM")[1])
    text = " ".join(DEPLOY_DOC.read_text().split())
    assert "**No compiler in the image.**" in text and "--model.compile true" in text


@pytest.mark.parametrize(
    ("filename", "amd64", "arm64"),
    [
        ("torch-2.13.0-cp312-cp312-manylinux_2_28_aarch64.whl", None, "cp312-cp312-manylinux_2_28_aarch64"),
        (
            "pyyaml-6.0.4-cp312-cp312-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl",
            None,
            "cp312-cp312-manylinux_2_28_aarch64",
        ),
        (
            "numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "cp312-cp312-manylinux_2_28_x86_64",
            None,
        ),
        ("prometheus_client-0.26.0-py3-none-any.whl", "py3-none-any", "py3-none-any"),
        ("nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_aarch64.whl", None, "py3-none-manylinux_2_28_aarch64"),
        ("x-1.0-cp39-abi3-manylinux_2_17_aarch64.whl", None, "cp39-abi3-manylinux_2_17_aarch64"),
        ("x-1.0-cp312-cp312-manylinux1_x86_64.whl", "cp312-cp312-manylinux1_x86_64", None),
        ("x-1.0-cp312-cp312-manylinux_2_39_aarch64.whl", None, None),  # newer glibc than bookworm's 2.36
        ("x-1.0-cp312-cp312-musllinux_1_2_aarch64.whl", None, None),  # Alpine's C library
        ("x-1.0-cp313-cp313-manylinux_2_28_aarch64.whl", None, None),  # another CPython
        ("x-1.0-cp312-cp312-macosx_11_0_arm64.whl", None, None),
        ("x-1.0-cp312-cp312-win_arm64.whl", None, None),
        ("x-1.0.tar.gz", None, None),  # a source distribution needs a compiler the image lacks
    ],
)
def test_wheel_tags_accepted_on_each_platform(filename, amd64, arm64):
    for machine, expected in (("x86_64", amd64), ("aarch64", arm64)):
        found = check_wheels.best_wheel([filename], check_wheels.supported_tags(TARGET, machine))
        assert (None if found is None else str(found[1])) == expected, (filename, machine)


def test_best_wheel_is_the_one_pip_prefers():
    """Among several installable wheels pip takes the most specific: cp312 over abi3 over pure Python."""
    files = [
        "a-1-py3-none-any.whl",
        "a-1-cp38-abi3-manylinux_2_17_aarch64.whl",
        "a-1-cp312-cp312-manylinux_2_28_aarch64.whl",
    ]
    best = check_wheels.best_wheel(files, check_wheels.supported_tags(TARGET, "aarch64"))
    assert best is not None and best[0] == files[2]
    best = check_wheels.best_wheel(files[:2], check_wheels.supported_tags(TARGET, "aarch64"))
    assert best is not None and best[0] == files[1]


# A fake PEP 691 index: the real client code against fixed files, offline.
def wheel(name: str, version: str, tag: str, requires: list[str], padding: int = 0) -> tuple[str, bytes]:
    """A minimal wheel (filename, bytes): METADATA with ``requires``, plus ``padding`` stored bytes
    standing for the libraries a real wheel carries."""
    dist = f"{name.replace('-', '_')}-{version}"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{dist}.data/purelib/lib.so", os.urandom(padding))
        archive.writestr(f"{dist}.dist-info/METADATA", metadata)
        archive.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return f"{dist}-{tag}.whl", buffer.getvalue()


class FakeIndex:
    """Serves /simple/<project>/ (PEP 691 JSON), the files, their PEP 658 .metadata where marked, and
    range requests; counts the bytes sent per file."""

    def __init__(self) -> None:
        self.projects: dict[str, list[dict]] = {}
        self.routes: dict[str, bytes] = {}
        self.sent: dict[str, int] = {}
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = index.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                status, ranged = 200, re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                if ranged:
                    status, body = 206, body[int(ranged[1]) : int(ranged[2]) + 1]
                index.sent[self.path] = index.sent.get(self.path, 0) + len(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, project: str, filename: str, data: bytes, pep658: bool = False) -> None:
        path = f"/files/{filename}"
        self.routes[path] = data
        entry = {"filename": filename, "url": self.url + path, "size": len(data), "requires-python": ">=3.10"}
        if pep658:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                (member,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
                self.routes[path + ".metadata"] = archive.read(member)
            entry["core-metadata"] = True
        self.projects.setdefault(project, []).append(entry)
        self.routes[f"/simple/{project}/"] = json.dumps(
            {"meta": {"api-version": "1.1"}, "files": self.projects[project]}
        ).encode()


@pytest.fixture
def fake_index() -> Iterator[FakeIndex]:
    index = FakeIndex()
    yield index
    index.server.shutdown()
    index.server.server_close()


CUDA_TORCH = (
    "nvidia-nccl-cu13==2.29.7; platform_system == 'Linux'",
    "filelock",
    "nvidia-x86only==1.0; platform_machine == 'x86_64'",
)


def populate(
    index: FakeIndex, torch_arm64: tuple[str, ...] = CUDA_TORCH, nccl_arm64: bool = True, numpy_arm64: bool = True
) -> None:
    """torch (the arm64 wheel large and without a PEP 658 file, read by range requests), its pinned
    nvidia-nccl-cu13, a requirement only x86_64 installs, numpy and a pure-Python package."""
    releases = [
        ("torch", "2.13.0", "cp312-cp312-manylinux_2_28_x86_64", CUDA_TORCH, 0, True),
        ("torch", "2.13.0", "cp312-cp312-manylinux_2_28_aarch64", torch_arm64, 2**22, False),
        ("torch", "2.12.0", "cp312-cp312-manylinux_2_28_aarch64", CUDA_TORCH, 0, False),
        ("nvidia-nccl-cu13", "2.29.7", "py3-none-manylinux_2_18_x86_64", (), 0, True),
        ("nvidia-nccl-cu13", "2.29.7", "py3-none-manylinux_2_18_aarch64", (), 0, True),
        ("nvidia-x86only", "1.0", "py3-none-manylinux_2_17_x86_64", (), 0, True),
        ("numpy", "2.4.6", "cp312-cp312-manylinux_2_28_x86_64", (), 0, False),
        ("numpy", "2.4.6", "cp312-cp312-manylinux_2_28_aarch64", (), 0, False),
        ("prometheus-client", "0.26.0", "py3-none-any", (), 0, False),
    ]
    for name, version, tag, requires, padding, pep658 in releases:
        if tag.endswith("aarch64") and not {"nvidia-nccl-cu13": nccl_arm64, "numpy": numpy_arm64}.get(name, True):
            continue
        index.add(name, *wheel(name, version, tag, list(requires), padding), pep658=pep658)
    index.add("numpy", "numpy-2.4.6.tar.gz", b"sdist")


def run_check(index_url: str, tmp_path: Path, timeout: float = 10) -> subprocess.CompletedProcess:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pins\ntorch==2.13.0\nnumpy==2.4.6\nprometheus-client==0.26.0\n")
    command = [sys.executable, str(CHECK_WHEELS), "--index-url", f"{index_url}/simple/", "--timeout", str(timeout)]
    return subprocess.run([*command, "--constraints", str(constraints)], capture_output=True, text=True, timeout=120)


def table(stdout: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_check_passes_with_a_wheel_everywhere_reading_only_metadata(fake_index, tmp_path):
    populate(fake_index)
    result = run_check(fake_index.url, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert rows["torch"] == [
        "2.13.0",
        "docker/constraints.txt",
        "`cp312-cp312-manylinux_2_28_x86_64`",
        "`cp312-cp312-manylinux_2_28_aarch64`",
    ]
    assert rows["nvidia-nccl-cu13"][1:] == [
        "torch",
        "`py3-none-manylinux_2_18_x86_64`",
        "`py3-none-manylinux_2_18_aarch64`",
    ]
    assert rows["nvidia-x86only"][2:] == ["`py3-none-manylinux_2_17_x86_64`", "not installed"]  # its marker
    assert rows["prometheus-client"][2:] == ["`py3-none-any`", "`py3-none-any`"]
    assert "filelock" not in rows  # a range: pip resolves it at build time
    big = "/files/torch-2.13.0-cp312-cp312-manylinux_2_28_aarch64.whl"
    assert 0 < fake_index.sent[big] < len(fake_index.routes[big]) // 8, fake_index.sent  # range requests only
    assert "/files/torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl" not in fake_index.sent  # its PEP 658 file


def test_missing_arm64_wheel_fails_naming_the_package(fake_index, tmp_path):
    populate(fake_index, numpy_arm64=False)
    result = run_check(fake_index.url, tmp_path)
    assert result.returncode == 1
    assert table(result.stdout)["numpy"][2:] == ["`cp312-cp312-manylinux_2_28_x86_64`", "**none**"]
    assert "numpy 2.4.6 (required by docker/constraints.txt): no wheel for CPython 3.12 on linux/arm64" in result.stderr


def test_missing_arm64_wheel_of_torchs_cuda_stack_fails_naming_it(fake_index, tmp_path):
    populate(fake_index, nccl_arm64=False)
    result = run_check(fake_index.url, tmp_path)
    assert result.returncode == 1
    assert "nvidia-nccl-cu13 2.29.7 (required by torch): no wheel for CPython 3.12 on linux/arm64" in result.stderr


def test_cpu_only_torch_on_arm64_fails(fake_index, tmp_path):
    populate(fake_index, torch_arm64=("filelock",))
    result = run_check(fake_index.url, tmp_path)
    assert result.returncode == 1
    assert re.search(r"torch 2\.13\.0: its linux/arm64 wheel \S+ requires no CUDA library", result.stderr), (
        result.stderr
    )


def test_unreachable_index_is_a_clean_error_within_the_timeout(tmp_path):
    """A server that accepts connections and never answers (the kernel completes the handshake for
    a listening socket nobody accepts on): each request gives up after --timeout seconds; a closed
    port fails at once. Exit status 2 and the URL, no traceback."""
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        for sock, timeout, reason in ((silent, 1.0, "timed out"), (closed, 30.0, "Connection refused")):
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            start = time.monotonic()
            result = run_check(url, tmp_path, timeout=timeout)
            elapsed = time.monotonic() - start
            assert result.returncode == 2, result.stdout + result.stderr
            assert f"{url}/simple/torch/: " in result.stderr and reason in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and elapsed < 15, (elapsed, result.stderr)


def test_every_pinned_package_has_a_wheel_for_both_platforms_on_pypi():
    """The real check against PyPI (CI reaches it), and docs/deploy.md shows its current table.
    PARTIALFC_REGENERATE_DOCS=1 rewrites the table instead of comparing."""
    result = subprocess.run([sys.executable, str(CHECK_WHEELS)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    pins = check_wheels.read_pins((REPO / "docker" / "constraints.txt").read_text())
    assert {name: rows[name][0] for name in pins} == pins
    text = DEPLOY_DOC.read_text()
    head, rest = text.split(WHEELS_BEGIN)
    current, tail = rest.split(WHEELS_END)
    expected = "\n" + result.stdout
    if os.environ.get("PARTIALFC_REGENERATE_DOCS") == "1":
        DEPLOY_DOC.write_text(head + WHEELS_BEGIN + expected + WHEELS_END + tail)
        return
    assert current == expected, "docs/deploy.md's wheel table is stale: rerun with PARTIALFC_REGENERATE_DOCS=1"
