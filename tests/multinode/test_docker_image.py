"""The image runs the stack the tests run: docker/constraints.txt pins every runtime dependency, the
image, CI and developers install through it, and nothing in the image shadows the installed package.
(No Docker engine runs here: `make install-check` runs the image's install step in a venv.)"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from training_run import REPO

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
INSTALL_SCRIPT = (REPO / "docker" / "install.sh").read_text()


def pins() -> dict[str, str]:
    lines = (REPO / "docker" / "constraints.txt").read_text().splitlines()
    return dict(line.strip().split("==") for line in lines if "==" in line and not line.lstrip().startswith("#"))


def test_every_runtime_dependency_is_pinned_and_the_running_torch_is_the_pinned_one():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dali"]]]
    assert {r.name for r in runtime} == set(pins()), "docker/constraints.txt must pin exactly the runtime dependencies"
    assert version("torch").split("+")[0] == pins()["torch"], (
        f"the tests run torch {version('torch')} but the image installs torch {pins()['torch']}"
        " (docker/constraints.txt)"
    )


def test_pyproject_lower_bounds_are_the_versions_ci_runs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["dali"]]:
        requirement = Requirement(text)
        bounds = {spec.operator: spec.version for spec in requirement.specifier}
        assert bounds == {">=": pins()[requirement.name]}, (
            f"{text}: lower bound must be the pinned {pins()[requirement.name]}"
        )


def test_image_ci_and_developers_install_through_the_constraints():
    assert re.search(r"--constraint \"\$\{source_dir\}/docker/constraints.txt\"", INSTALL_SCRIPT)
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS = docker/constraints.txt" in makefile
    assert re.search(r"^TORCH\s+\?= \$\(shell grep '\^torch==' \$\(CONSTRAINTS\)\)$", makefile, re.M)
    assert re.search(r"pip install -q --constraint \$\(CONSTRAINTS\) -e \"\.\[dev,dali\]\"", makefile)
    ci_make_lines = [
        line.split() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("make ")
    ]
    assert any("install-check" in line for line in ci_make_lines), ci_make_lines
    # The base ships no torch of its own: torch comes from the constraints like everything else.
    (base,) = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert base.startswith("python:3.12-") and "torch" not in base, base
    assert not re.search(r"pip3? install[^\n]*torch", DOCKERFILE)


def test_workdir_does_not_shadow_the_installed_package():
    """`python -m launcher` from a directory holding partialfc/ would import that source tree."""
    workdir, source_dirs, removed = None, set(), set()
    for line in DOCKERFILE.splitlines():
        if line.startswith("WORKDIR "):
            workdir = line.split()[1]
        elif line.startswith("COPY ") and line.split()[1] in ("partialfc", "launcher"):
            source_dirs.add(workdir)
        elif line.startswith(("RUN ", "    && rm -rf ")):
            removed.update(re.findall(r"rm -rf (\S+)", line))
    assert source_dirs and source_dirs <= removed, (source_dirs, removed)
    assert workdir not in source_dirs, f"the final WORKDIR {workdir} holds the package sources"


def test_entrypoint_user_ports_and_build_context():
    assert re.search(r"^RUN bash docker/install.sh /tmp/partialfc-src", DOCKERFILE, re.M)
    assert re.search(r"^ENTRYPOINT \[\"python\", \"-m\", \"launcher\"\]", DOCKERFILE, re.M)
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", DOCKERFILE, re.M) and "EXPOSE 9400" in DOCKERFILE
    included = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {src for line in DOCKERFILE.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]}
    assert {p.rstrip("/") for p in included} == {p.rstrip("/") for p in copied}
