"""The command line and environment the launcher hands to torchrun, and ``--print``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import pytest
from training_run import REPO

from launcher.__main__ import main, split_arguments
from launcher.command import (
    TrainingSettings,
    apply_overrides,
    node_local_metrics_dir,
    rendezvous_conf,
    resolve_nproc,
    torchrun_command,
    torchrun_environment,
    training_settings,
)
from launcher.environment import LaunchEnvironmentError, detect

INDEXED = {"JOB_COMPLETION_INDEX": "1", "PARTIALFC_NNODES": "2", "PARTIALFC_RDZV_HOST": "r50-0.r50"}


def test_command_has_a_c10d_rendezvous_and_passes_training_arguments_through():
    placement = detect(INDEXED)
    command = torchrun_command(placement, 8, 3, "join_timeout=600", ["--config", "c.yaml", "--optim.lr", "0.2"])
    assert command[:3] == [sys.executable, "-m", "launcher.agent"]
    flags = dict(zip(command[3:-6:2], command[4:-6:2]))
    assert flags == {
        "--nnodes": "2",
        "--node-rank": "1",
        "--nproc-per-node": "8",
        "--rdzv-backend": "c10d",
        "--rdzv-endpoint": "r50-0.r50:29400",
        "--rdzv-id": "partialfc-r50-0.r50",
        "--rdzv-conf": "join_timeout=600",
        "--max-restarts": "3",
    }
    assert command[-6:] == ["-m", "partialfc.train", "--config", "c.yaml", "--optim.lr", "0.2"]
    assert "--node-rank" not in torchrun_command(detect({}), 1, 3, "", [])


def test_explicit_environment_and_options_win_over_what_the_scheduler_implies():
    env = {**INDEXED, "PET_NPROC_PER_NODE": "4", "PET_MAX_RESTARTS": "7", "PET_RDZV_ID": "mine"}
    placement = apply_overrides(detect(env), env, {})
    assert (placement.nproc_per_node, placement.max_restarts, placement.rdzv_id) == (4, 7, "mine")
    placement = apply_overrides(detect(env), env, {"max_restarts": 0, "nproc_per_node": None})
    assert (placement.nproc_per_node, placement.max_restarts) == (4, 0)
    with pytest.raises(LaunchEnvironmentError, match="PET_NNODES: node rank 1 is not below the node count 1"):
        apply_overrides(detect(INDEXED), {**INDEXED, "PET_NNODES": "1"}, {})
    with pytest.raises(
        LaunchEnvironmentError, match="PET_NNODES: 2 nodes but no scheduler variables name a rendezvous"
    ):
        apply_overrides(detect({"PET_NNODES": "2"}), {"PET_NNODES": "2"}, {})
    with pytest.raises(LaunchEnvironmentError, match="--nnodes='two' must be N or MIN:MAX"):
        apply_overrides(detect(INDEXED), INDEXED, {"nnodes": "two"})


def test_environment_defaults_never_replace_what_is_set():
    env, added = torchrun_environment({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "PATH": "/bin"})
    assert added == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "540"}
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_rendezvous_conf_hosts_the_store_on_node_0_and_waits_out_a_collective_timeout():
    """The store client waits as long as the join (read_timeout): a node may start minutes before node 0."""
    node1 = detect(INDEXED)
    assert rendezvous_conf(node1, 1800, {}) == "join_timeout=1860,read_timeout=1860,is_host=false"
    node0 = detect({**INDEXED, "JOB_COMPLETION_INDEX": "0"})
    assert rendezvous_conf(node0, 60, {}) == "join_timeout=600,read_timeout=600,is_host=true"
    assert (
        rendezvous_conf(node0, 60, {"PET_RDZV_CONF": "join_timeout=900,read_timeout=120"})
        == "join_timeout=900,read_timeout=120,is_host=true"
    )
    elastic = detect({"PET_RDZV_ENDPOINT": "10.0.0.1:29400", "PET_NNODES": "2"})
    assert rendezvous_conf(elastic, 60, {}) == "join_timeout=600,read_timeout=600"
    assert (
        rendezvous_conf(elastic, 60, {"PET_LOCAL_ADDR": "10.0.0.1"}) == "join_timeout=600,read_timeout=600,is_host=true"
    )


def test_an_external_store_is_hosted_by_no_node_and_needs_the_jobs_own_rendezvous_id():
    """k8s/indexed-job with the store Deployment: node 0 is a client like every other node, and the job is
    named by PET_RDZV_ID, since the store's host name is the same for every job using it."""
    env = {**INDEXED, "JOB_COMPLETION_INDEX": "0", "PARTIALFC_RDZV_HOST": "partialfc-rendezvous"}
    external = {**env, "PARTIALFC_RDZV_STORE": "external", "PET_RDZV_ID": "r50"}
    node0 = apply_overrides(detect(external), external, {})
    assert node0.external_store and node0.rdzv_id == "r50"
    assert rendezvous_conf(node0, 60, {}) == "join_timeout=600,read_timeout=600,is_host=false"
    assert rendezvous_conf(apply_overrides(detect(env), env, {}), 60, {}).endswith("is_host=true")
    flag = apply_overrides(detect(env), env, {"rdzv_store": "external", "rdzv_id": "r50"})
    assert flag.external_store and rendezvous_conf(flag, 60, {}).endswith("is_host=false")
    with pytest.raises(LaunchEnvironmentError, match=r"no rendezvous id names the job \(set PET_RDZV_ID"):
        apply_overrides(detect(env), {**env, "PARTIALFC_RDZV_STORE": "external"}, {})
    with pytest.raises(LaunchEnvironmentError, match="PARTIALFC_RDZV_STORE='elsewhere' must be one of node, external"):
        apply_overrides(detect(env), {**env, "PARTIALFC_RDZV_STORE": "elsewhere"}, {})


@pytest.mark.parametrize(
    "spec, gpus, cpus, expected",
    [
        (None, 8, 64, 8),
        (None, 0, 64, 1),
        ("gpu", 4, 64, 4),
        ("cpu", 8, 64, 64),
        (3, 8, 64, 3),
        (3, 0, 2, 3),
    ],
)
def test_nproc_per_node_words_mean_what_they_mean_to_torchrun(spec, gpus, cpus, expected):
    assert resolve_nproc(spec, gpus, cpus) == expected


def test_nproc_gpu_without_a_gpu_is_an_error():
    with pytest.raises(LaunchEnvironmentError, match="nproc-per-node 'gpu' but this node has no visible GPU"):
        resolve_nproc("gpu", 0, 64)


def test_node_rank_is_bounded_by_the_largest_node_count():
    """--nnodes 2:3 admits node rank 2 (the third node); node rank 3 is refused."""
    assert apply_overrides(detect(INDEXED), INDEXED, {"nnodes": "2:3", "node_rank": 2}).node_rank == 2
    with pytest.raises(LaunchEnvironmentError, match="node rank 3 is not below the node count 2:3"):
        apply_overrides(detect(INDEXED), INDEXED, {"nnodes": "2:3", "node_rank": 3})


def test_training_settings_come_from_the_config_file_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("output: /ckpt/run\ndist:\n  timeout_s: 900\nmetrics:\n  port: 9400\n")
    settings = training_settings(["--config", str(config), "--data.path", "x"])
    assert (settings.timeout_s, settings.metrics_port, settings.metrics_dir) == (900, 9400, "")
    settings = training_settings(
        ["--config", str(config), "--dist.timeout_s", "30", "--metrics.multiproc_dir", "/tmp/m"]
    )
    assert (settings.timeout_s, settings.metrics_dir) == (30, "/tmp/m")


def test_multi_node_metrics_go_to_a_node_local_directory_unless_one_is_named():
    # The trainer's default lies on shared storage under a node number the rendezvous may change.
    multi, single = detect(INDEXED), detect({})
    assert (
        node_local_metrics_dir(multi, TrainingSettings(1800, 9400, "", "runs/x"), "/tmp", "gpu/7")
        == "/tmp/partialfc-metrics-partialfc-r50-0.r50-gpu_7"
    )
    assert node_local_metrics_dir(multi, TrainingSettings(1800, 9400, "/run/m", "runs/x"), "/tmp", "gpu7") is None
    assert node_local_metrics_dir(multi, TrainingSettings(1800, 0, "", "runs/x"), "/tmp", "gpu7") is None
    assert node_local_metrics_dir(single, TrainingSettings(1800, 9400, "", "runs/x"), "/tmp", "gpu7") is None


def test_split_arguments():
    assert split_arguments(["--print", "--", "--config", "a"]) == (["--print"], ["--config", "a"])
    assert split_arguments(["--print", "--config", "a"]) == (["--print", "--config", "a"], [])


def test_print_shows_the_environment_and_the_exact_command(capsys):
    env = {**INDEXED, "PATH": "/bin"}
    assert (
        main(
            [
                "--print",
                "--nproc-per-node",
                "2",
                "--config",
                "configs/quickstart.yaml",
                "--dist.timeout_s",
                "120",
                "--metrics.port",
                "9400",
            ],
            env,
        )
        == 0
    )
    out = capsys.readouterr().out
    local_dir = f"{tempfile.gettempdir()}/partialfc-metrics-partialfc-r50-0.r50-{socket.gethostname()}"
    assert "environment: Kubernetes Indexed Job" in out and "JOB_COMPLETION_INDEX=1" in out
    assert "collective timeout (dist.timeout_s): 120 s" in out
    assert (
        "set for torchrun (were unset): TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=3 "
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=540"
    ) in out
    command = out.split("command: ", 1)[1].strip()
    assert command.endswith(
        "--nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint r50-0.r50:29400 --rdzv-id "
        "partialfc-r50-0.r50 --rdzv-conf join_timeout=600,read_timeout=600,is_host=false "
        "--max-restarts 3 "
        "-m partialfc.train --config configs/quickstart.yaml --dist.timeout_s 120 --metrics.port 9400 "
        f"--metrics.multiproc_dir {local_dir}"
    )
    assert f"metrics: port 9400, directory {local_dir} " in out
    assert "rendezvous store: the torchrun agent of node rank 0\n" in out


def test_slurm_batch_script_with_master_addr_prints_its_command(capsys):
    """`MASTER_ADDR=gpu01 MASTER_PORT=29500` exported by an sbatch script, launcher on node 1 by srun."""
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "MASTER_ADDR": "gpu01",
        "MASTER_PORT": "29500",
        "PATH": "/bin",
    }
    assert main(["--print", "--nproc-per-node", "cpu", "--config", "configs/quickstart.yaml"], env) == 0
    out = capsys.readouterr().out
    assert "environment: SLURM" in out and "MASTER_ADDR=gpu01" in out
    assert f"--nnodes 2 --node-rank 1 --nproc-per-node {os.cpu_count()} " in out
    assert "--rdzv-endpoint gpu01:29500 --rdzv-id slurm-1 " in out


def test_errors_exit_2_with_one_line(capsys):
    assert main(["--print"], {"RANK": "1"}) == 2
    assert (
        capsys.readouterr().err == "launcher: RANK is set but MASTER_ADDR is not: the environment is half-configured\n"
    )
    assert main(["--print", "--train.epochs", "-1"], {}) == 2
    assert "launcher: training config: train.epochs=-1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--print", "--nproc-per-node", "many"], {})
    assert "--nproc-per-node='many' must be a number or one of auto, cpu, gpu" in capsys.readouterr().err


def test_module_entry_point_help_lists_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    for option in (
        "--nproc-per-node",
        "--nnodes",
        "--node-rank",
        "--max-restarts",
        "--rdzv-id",
        "--rdzv-store",
        "PARTIALFC_RDZV_STORE=external",
        "python -m launcher store",
        "--print",
        "JOB_COMPLETION_INDEX",
        "SLURM_JOB_NODELIST",
        "PET_MASTER_ADDR",
    ):
        assert option in result.stdout, option
