"""Which torch build `make setup` asks pip for (docker/torch-index.sh): PyPI's CUDA build on a GPU machine, a
local CPU build where pip already finds one, else PyTorch's CPU wheel index, so that a fresh CPU-only machine
never downloads the multi-GB CUDA build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIN = "torch==2.13.0"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def choose(tmp_path: Path, *, gpu: bool | None, local_wheel: bool, via_config: bool = False) -> str:
    """The script's choice with a fake nvidia-smi (None: absent) and a find-links folder, pip's config files off."""
    bin_dir, wheels = tmp_path / "bin", tmp_path / "wheels"
    bin_dir.mkdir(exist_ok=True)
    wheels.mkdir(exist_ok=True)
    if gpu is not None:  # nvidia-smi -L lists a GPU (exit 0), or finds no driver or device (exit 9 as it does)
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if gpu else 9}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    if local_wheel:
        (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (wheels / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")  # another version
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nfind-links = {wheels}\n" if via_config else "")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHON": sys.executable,
        "PIP_CONFIG_FILE": str(config),  # this machine's own pip config must not decide the test
        **({} if via_config else {"PIP_FIND_LINKS": str(wheels)}),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["sh", str(REPO / "docker" / "torch-index.sh"), PIN], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("gpu", "local_wheel", "via_config", "expected"),
    [
        (True, False, False, ""),  # a GPU machine: PyPI's CUDA build
        (None, False, False, CPU_INDEX),  # no driver at all: the CPU index
        (False, False, False, CPU_INDEX),  # a driver but no GPU: the CPU index
        (None, True, False, ""),  # the pinned CPU build in PIP_FIND_LINKS: pip finds it there
        (None, True, True, ""),  # ... or in pip's config
    ],
)
def test_the_choice(tmp_path, gpu, local_wheel, via_config, expected):
    assert choose(tmp_path, gpu=gpu, local_wheel=local_wheel, via_config=via_config) == expected


def test_the_makefile_installs_torch_through_it():
    makefile = (REPO / "Makefile").read_text()
    assert "TORCH_INDEX ?= $(shell PYTHON=$(PYTHON) sh docker/torch-index.sh '$(TORCH)')" in makefile
    installs = [line.strip() for line in makefile.splitlines() if "pip install -q" in line and '"$(TORCH)"' in line]
    assert installs and all("$(TORCH_INDEX)" in line for line in installs), installs
    assert os.access(REPO / "docker" / "torch-index.sh", os.X_OK)
