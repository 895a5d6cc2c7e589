"""GPUs asked for and absent stop the job at once: the launcher exits 2 before starting torchrun, a
worker under plain torchrun exits 2 at start, and the message says why (GPUs asked and found, torch's
CUDA build, the driver, torch's own warning). ``model.compile`` without a compiler is refused the same way."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from k8s_manifests import scheduler_env
from training_run import REPO

import launcher.__main__ as launcher_main
from launcher.command import gpu_request, resolve_nproc
from launcher.environment import LaunchEnvironmentError
from partialfc.common import device_check
from partialfc.common.device_check import CudaProbe, GpuRequest, missing_compiler, probe_cuda, worker_device
from partialfc.common.options import ConfigError
from partialfc.train import main as train_main

PYTORCHJOB = REPO / "k8s/pytorchjob/pytorchjob.yaml"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# What c10/cuda/CUDAFunctions.cpp warns when cudaGetDeviceCount reports cudaErrorInsufficientDriver.
TOO_OLD = (
    "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020). Please update your "
    "GPU driver by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx"
)


def no_gpus(**changes: object) -> CudaProbe:
    """A node whose 535 driver is too old for a CUDA 13.0 build of torch; ``changes`` alter it."""
    return dataclasses.replace(CudaProbe(0, "2.13.0", "13.0", "535.104.05", None, TOO_OLD), **changes)


def pytorchjob_pod() -> tuple[list[str], dict[str, str]]:
    """The PyTorchJob container's args, and the variables its pod gets: the manifest's env plus what
    training-operator v1.9 injects (tests/k8s_manifests.py ``scheduler_env`` spells out the operator's
    rules; here node 1 of the shipped job)."""
    job = yaml.safe_load(PYTORCHJOB.read_text())
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return container["args"], env | scheduler_env("pytorchjob", 1)


@pytest.fixture(scope="module")
def configmap_config(tiny_dataset, tmp_path_factory) -> Path:
    """The ConfigMap's train.yaml as shipped, its data path pointed at the tiny synthetic set."""
    documents = yaml.safe_load_all((REPO / "k8s/common/config.yaml").read_text())
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    train["data"]["path"] = str(tiny_dataset)
    path = tmp_path_factory.mktemp("configmap") / "train.yaml"
    path.write_text(yaml.safe_dump(train))
    return path


def with_config(args: list[str], config: Path) -> list[str]:
    return [str(config) if arg == "/etc/partialfc/train.yaml" else arg for arg in args]


def test_pytorchjob_on_a_node_without_usable_gpus_exits_2_before_torchrun(configmap_config, tmp_path):
    """`python -m launcher` with the manifest's args and the operator's variables, on this GPU-less
    machine: exit 2 in seconds, one message naming the GPUs asked and found and torch's CUDA build, and
    no other Python process started (a sitecustomize logs every one: torchrun and its workers would
    show). Before the check, 8 CPU workers started and the job failed about 55 s later."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "with open(os.environ['PROCESS_LOG'], 'a') as log:\n"
        "    log.write(open('/proc/self/cmdline').read().replace('\\0', ' ') + '\\n')\n"
    )
    log = tmp_path / "processes.log"
    args, pod_env = pytorchjob_pod()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join([str(REPO), str(hook)]),
        "PROCESS_LOG": str(log),
        **pod_env,
    }
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "launcher", *with_config(args, configmap_config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # torchrun and its workers, if started, go with it
    )
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    assert process.returncode == 2, out + err
    assert elapsed < 30, elapsed
    (message,) = err.strip().splitlines()
    assert message.startswith("launcher: GPUs asked for and absent: 8 asked (dist.device=cuda and --nproc-per-node 8)")
    assert ", 0 found; " in message
    assert (
        "a CPU-only build of torch (torch.version.cuda None)" in message
        if torch.version.cuda is None
        else f"built for CUDA {torch.version.cuda}" in message
    )
    assert "NVIDIA driver" in message and "CUDA_VISIBLE_DEVICES" in message
    processes = log.read_text().splitlines()
    assert len(processes) == 1 and " -m launcher " in processes[0], processes


def test_probe_sees_no_gpu_with_an_empty_cuda_visible_devices():
    code = (
        "import dataclasses, json\n"
        "from partialfc.common.device_check import probe_cuda\n"
        "probe = probe_cuda()\n"
        "print(json.dumps({**dataclasses.asdict(probe), 'explained': probe.explain()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    probe = json.loads(result.stdout)
    assert probe["gpus"] == 0 and probe["visible_devices"] == ""
    assert probe["cuda_build"] == torch.version.cuda
    assert "CUDA_VISIBLE_DEVICES ''" in probe["explained"]


def test_probe_keeps_torchs_warning_and_names_a_driver_too_old_for_the_build(monkeypatch, tmp_path):
    """torch reports a driver too old for its CUDA build only as a warning from is_available()."""

    def is_available() -> bool:
        warnings.warn(TOO_OLD, UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    sysfs = tmp_path / "version"
    sysfs.write_text("535.104.05\n")
    monkeypatch.setattr(device_check, "DRIVER_VERSION_FILES", (sysfs, tmp_path / "absent"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the probe sees the warning even where warnings are silenced
        probe = probe_cuda()
    assert probe.gpus == 0 and probe.warning == TOO_OLD
    with pytest.raises(ConfigError) as refused:
        GpuRequest(8, "dist.device=cuda and --nproc-per-node 8").check(probe)
    message = str(refused.value)
    assert "8 asked (dist.device=cuda and --nproc-per-node 8), 0 found;" in message
    assert "is built for CUDA 13.0 (needs an NVIDIA driver >= 580); NVIDIA driver 535.104.05, too old" in message
    assert "CUDA_VISIBLE_DEVICES unset" in message and f"torch warned: {TOO_OLD}" in message


def test_driver_version_is_read_without_nvidia_smi(monkeypatch, tmp_path):
    proc = tmp_path / "proc-version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    monkeypatch.setattr(device_check, "DRIVER_VERSION_FILES", (tmp_path / "no-sysfs", proc))
    assert device_check.nvidia_driver_version() == "580.65.06"
    monkeypatch.setattr(device_check, "DRIVER_VERSION_FILES", (tmp_path / "no-sysfs", tmp_path / "no-proc"))
    assert device_check.nvidia_driver_version() is None
    assert "no NVIDIA driver loaded" in no_gpus(driver=None).explain()
    assert "a CPU-only build of torch" in no_gpus(cuda_build=None).explain()


def test_fewer_gpus_than_asked_is_refused_and_enough_pass():
    with pytest.raises(ConfigError, match=r"8 asked \(x\), 4 found"):
        GpuRequest(8, "x").check(no_gpus(gpus=4, warning=""))
    GpuRequest(8, "x").check(no_gpus(gpus=8, warning=""))


def test_what_asks_for_gpus():
    """dist.device cuda with N workers asks for N; `gpu` asks for at least one whatever dist.device says."""
    assert gpu_request(8, "--nproc-per-node 8", "cuda") == GpuRequest(8, "dist.device=cuda and --nproc-per-node 8")
    assert gpu_request(None, "--nproc-per-node auto (the default)", "cuda").count == 1
    assert gpu_request("gpu", "PET_NPROC_PER_NODE=gpu", "auto") == GpuRequest(
        1, "PET_NPROC_PER_NODE=gpu: one worker per GPU"
    )
    assert gpu_request(8, "--nproc-per-node 8", "auto") is None
    assert gpu_request(8, "--nproc-per-node 8", "cpu") is None
    with pytest.raises(
        LaunchEnvironmentError, match=r"--nproc-per-node cpu \(one worker per CPU core\) contradicts dist\.device=cuda"
    ):
        gpu_request("cpu", "--nproc-per-node cpu", "cuda")
    assert resolve_nproc(None, 8, 64, "cpu") == 1  # CPU workers on a GPU node: one per node, as without GPUs


class Torchrun:
    """Stands in for run_torchrun: records the command instead of starting it."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command, env, exit_dir, run_dir) -> int:
        self.commands.append(list(command))
        return 0


@pytest.fixture
def torchrun(monkeypatch) -> Torchrun:
    recorder = Torchrun()
    monkeypatch.setattr(launcher_main, "run_torchrun", recorder)
    return recorder


def test_dist_device_cpu_with_eight_workers_still_starts(configmap_config, torchrun):
    args, env = pytorchjob_pod()
    assert launcher_main.main([*with_config(args, configmap_config), "--dist.device", "cpu"], env) == 0
    (command,) = torchrun.commands
    assert command[command.index("--nproc-per-node") + 1] == "8"


@pytest.mark.parametrize("preset", ["ms1mv3_r50", "ms1mv3_r100", "glint360k_r100", "webface42m_r100_pfc02"])
def test_gpu_presets_ask_for_gpus_and_quickstart_does_not(preset, torchrun, monkeypatch, capsys):
    monkeypatch.setattr(launcher_main, "probe_cuda", lambda: no_gpus(gpus=4))
    preset_args = ["--nproc-per-node", "8", "--", "--config", str(REPO / "configs" / f"{preset}.yaml")]
    assert launcher_main.main(preset_args, {}) == 2
    assert "8 asked (dist.device=cuda and --nproc-per-node 8), 4 found" in capsys.readouterr().err
    quickstart = ["--nproc-per-node", "2", "--", "--config", str(QUICKSTART)]
    assert launcher_main.main(quickstart, {}) == 0 and len(torchrun.commands) == 1


def test_nproc_gpu_asks_for_a_gpu(torchrun, monkeypatch, capsys):
    monkeypatch.setattr(launcher_main, "probe_cuda", lambda: no_gpus())
    quickstart = ["--", "--config", str(QUICKSTART)]
    assert launcher_main.main(quickstart, {"PET_NPROC_PER_NODE": "gpu"}) == 2
    err = capsys.readouterr().err
    assert "1 asked (PET_NPROC_PER_NODE=gpu: one worker per GPU), 0 found" in err and TOO_OLD in err
    assert not torchrun.commands


def test_print_plans_without_the_check_and_names_the_gpus_asked(configmap_config, torchrun, capsys):
    """--print describes the launch for the node it is about (docs/deploy.md shows its output)."""
    args, env = pytorchjob_pod()
    assert launcher_main.main(["--print", *with_config(args, configmap_config)], env) == 0
    assert (
        "GPUs asked: 8 (dist.device=cuda and --nproc-per-node 8), checked before torchrun starts"
        in capsys.readouterr().out
    )


def test_worker_under_plain_python_refuses_dist_device_cuda_without_gpus(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "partialfc.train",
            "--config",
            str(QUICKSTART),
            "--dist.device",
            "cuda",
            "--output",
            run,
        ],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "partialfc.train: config error: GPUs asked for and absent: 1 asked (dist.device=cuda), 0 found;" in (
        result.stderr
    )
    assert "CUDA_VISIBLE_DEVICES ''" in result.stderr
    assert not run.exists()  # nothing done before the check


def test_worker_under_torchrun_needs_a_gpu_per_local_worker(monkeypatch):
    monkeypatch.setattr(device_check, "probe_cuda", lambda: no_gpus(gpus=4, warning=""))
    with pytest.raises(ConfigError, match=r"8 asked \(dist.device=cuda; 8 workers on this node \(LOCAL_WORLD_SIZE\)\)"):
        worker_device("cuda", {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "8"})
    assert worker_device("cuda", {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}) == torch.device("cuda", 3)
    assert worker_device("auto", {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}) == torch.device("cuda", 3)
    monkeypatch.setattr(device_check, "probe_cuda", lambda: no_gpus())
    assert worker_device("auto", {}) == torch.device("cpu")
    assert worker_device("cpu", {"LOCAL_RANK": "3"}) == torch.device("cpu")


def executable(directory: Path, name: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text("#!/bin/sh\n")
    (directory / name).chmod(stat.S_IRWXU)


def test_compile_needs_the_compiler_torch_and_triton_look_for(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert missing_compiler("cuda", {"PATH": str(empty)}) == (
        "torch.compile on cuda needs a C compiler for Triton's kernel launcher: CC is unset and no gcc or clang is "
        f"on PATH ({empty})"
    )
    assert "CXX is unset and no g++ is on PATH" in missing_compiler("cpu", {"PATH": str(empty)})
    assert "CC='/opt/no/cc' is not an executable" in missing_compiler("cuda", {"PATH": str(empty), "CC": "/opt/no/cc"})
    executable(tmp_path / "clang", "clang")
    assert missing_compiler("cuda", {"PATH": str(tmp_path / "clang")}) is None
    executable(tmp_path / "gxx", "g++")
    assert missing_compiler("cpu", {"PATH": str(tmp_path / "gxx")}) is None
    assert missing_compiler("cpu", {"PATH": str(empty), "CXX": str(tmp_path / "gxx" / "g++")}) is None


def test_compile_without_a_compiler_stops_launcher_and_worker_before_any_work(
    tiny_dataset, tmp_path, torchrun, monkeypatch, capsys
):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(launcher_main, "probe_cuda", lambda: no_gpus())
    quickstart = ["--config", str(QUICKSTART), "--model.compile", "true"]
    assert launcher_main.main(["--", *quickstart], {"PATH": str(empty)}) == 2
    assert "launcher: model.compile=true: torch.compile on cpu needs a C++ compiler" in capsys.readouterr().err
    assert not torchrun.commands
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    run = ["--output", str(tmp_path / "run"), "--data.path", str(tiny_dataset), "--train.max_steps", "1"]
    assert train_main([*quickstart, *run]) == 2
    assert "config error: model.compile=true: torch.compile on " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
