"""Does this node have what the job asks for: the GPUs, and the compiler ``model.compile`` needs?

A node whose NVIDIA driver is too old for torch's CUDA build (or with no device, or an empty
``CUDA_VISIBLE_DEVICES``) shows torch no GPU, and training would fall back to gloo and the CPU: the
pods stay Running and the job fails a minute later without naming the GPU. One probe serves the
launcher, which checks before it starts torchrun (so before any rendezvous), and a worker started
by plain torchrun, which checks at start. Both refuse with a config error (exit 2).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from partialfc.common.options import ConfigError

# The loaded kernel module's version, readable without nvidia-smi (sysfs: "580.65.06"; the proc file:
# "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  <build date>").
DRIVER_VERSION_FILES = (Path("/sys/module/nvidia/version"), Path("/proc/driver/nvidia/version"))

# Oldest driver of each CUDA major release (minor-version compatibility): NVIDIA, "CUDA Compatibility",
# docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html, table 1.
MIN_DRIVER = {"11": 450, "12": 525, "13": 580}

GUIDE = 'docs/operations.md, "GPUs asked for and absent"'


@dataclass(frozen=True)
class CudaProbe:
    """What torch sees of this node's GPUs, and what explains it."""

    gpus: int  # usable GPUs (0 when torch.cuda.is_available() is False)
    torch_version: str
    cuda_build: str | None  # torch.version.cuda: None for a CPU-only build
    driver: str | None  # the loaded NVIDIA kernel module's version
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES
    warning: str  # what torch warned while probing, e.g. "CUDA initialization: The NVIDIA driver ... too old"

    def explain(self) -> str:
        """torch's build, the driver, CUDA_VISIBLE_DEVICES and torch's own warning, in one line."""
        needed = MIN_DRIVER.get((self.cuda_build or "").split(".")[0])
        if self.cuda_build is None:
            build = f"torch {self.torch_version} is a CPU-only build of torch (torch.version.cuda None)"
        else:
            build = f"torch {self.torch_version} is built for CUDA {self.cuda_build}"
            build += f" (needs an NVIDIA driver >= {needed})" if needed else ""
        if self.driver is None:
            driver = f"no NVIDIA driver loaded (no {' or '.join(map(str, DRIVER_VERSION_FILES))})"
        else:
            driver = f"NVIDIA driver {self.driver}"
            major = self.driver.split(".")[0]
            driver += ", too old for this build" if needed and major.isdigit() and int(major) < needed else ""
        visible = "unset" if self.visible_devices is None else repr(self.visible_devices)
        parts = [build, driver, f"CUDA_VISIBLE_DEVICES {visible}"]
        return "; ".join(parts + ([f"torch warned: {self.warning}"] if self.warning else []))


def probe_cuda() -> CudaProbe:
    """Ask torch how many GPUs it can use, keeping the warning it gives when CUDA fails to initialise.

    torch warns only at the first query in a process (c10/cuda/CUDAFunctions.cpp, ``device_count``
    caches its count in a static and warns "CUDA initialization: …" from there), so probe before
    anything else asks.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # C++ TORCH_WARN arrives as UserWarning; deprecation notices of torch's imports are other categories.
    warning = " ".join(str(w.message) for w in caught if w.category is UserWarning)
    return CudaProbe(
        gpus,
        torch.__version__,
        torch.version.cuda,
        nvidia_driver_version(),
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        warning,
    )


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel module's version from sysfs or /proc; None when no driver is loaded."""
    for path in DRIVER_VERSION_FILES:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = re.search(r"(?<![\w.])(\d+\.\d+(?:\.\d+)*)(?![\w.])", text)
        if found:
            return found.group(1)
    return None


@dataclass(frozen=True)
class GpuRequest:
    """At least ``count`` GPUs on this node, and what asked for them (a config field, a flag)."""

    count: int
    asked_by: str

    def check(self, probe: CudaProbe) -> None:
        """ConfigError naming GPUs asked and found, torch's CUDA build, the driver and torch's warning."""
        if probe.gpus >= self.count:
            return
        raise ConfigError(
            f"GPUs asked for and absent: {self.count} asked ({self.asked_by}), {probe.gpus} found; "
            f"{probe.explain()}. Fix the node (driver, device plugin, CUDA_VISIBLE_DEVICES) or ask for the "
            f"CPU with dist.device cpu; see {GUIDE}"
        )


def device_type(requested: str, probe: CudaProbe) -> str:
    """Where the workers run for ``dist.device``: auto takes a GPU when torch sees one."""
    return "cuda" if requested == "cuda" or (requested == "auto" and probe.gpus) else "cpu"


def worker_device(requested: str, env: Mapping[str, str] | None = None) -> torch.device:
    """This worker's device for ``dist.device``: its local rank's GPU, or the CPU.

    With ``cuda``, a node with fewer usable GPUs than torchrun's workers on it (LOCAL_WORLD_SIZE) is a
    ConfigError: under plain torchrun no launcher has checked the node.
    """
    env = os.environ if env is None else env
    if requested == "cpu":
        return torch.device("cpu")
    probe = probe_cuda()
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if requested == "cuda":
        workers = int(env.get("LOCAL_WORLD_SIZE", "1"))
        launched = f"; {workers} workers on this node (LOCAL_WORLD_SIZE)" if "LOCAL_WORLD_SIZE" in env else ""
        GpuRequest(max(workers, local_rank + 1), f"dist.device=cuda{launched}").check(probe)
    return torch.device("cuda", local_rank) if device_type(requested, probe) == "cuda" else torch.device("cpu")


def missing_compiler(device: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why torch.compile cannot build its kernels for ``device`` here, or None.

    Looked up the way torch and Triton do. GPU: Triton compiles a small C launcher with ``CC``, else
    ``gcc``, else ``clang`` from PATH (triton/runtime/build.py ``_build``; ``knobs.build.cc`` reads CC).
    CPU: inductor compiles C++ with ``CXX``, else ``g++`` (``clang++`` on macOS) (torch/_inductor/config.py
    ``cpp.cxx``, run by cpp_builder.py ``cpp_compiler_search``).
    """
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    defaults: tuple[str, ...]
    if device == "cuda":
        variable, defaults, needs = "CC", ("gcc", "clang"), "a C compiler for Triton's kernel launcher"
    else:
        variable, defaults = "CXX", ("clang++",) if sys.platform == "darwin" else ("g++",)
        needs = "a C++ compiler for inductor's CPU kernels"
    if variable in env:  # both use the variable as given, even an empty or missing one
        if shutil.which(env[variable], path=path):
            return None
        return (
            f"torch.compile on {device} needs {needs}: {variable}={env[variable]!r} is not an executable on PATH "
            f"({path})"
        )
    if any(shutil.which(name, path=path) for name in defaults):
        return None
    return (
        f"torch.compile on {device} needs {needs}: {variable} is unset and no {' or '.join(defaults)} is on "
        f"PATH ({path})"
    )


def require_compiler(device: str, env: Mapping[str, str] | None = None) -> None:
    """ConfigError when ``model.compile`` is on and the compiler it needs is missing."""
    reason = missing_compiler(device, env)
    if reason:
        raise ConfigError(
            f"model.compile=true: {reason}. Install one (the image has none: docs/deploy.md) or set model.compile false"
        )
