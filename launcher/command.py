"""From a placement and the training arguments to torchrun's command line and environment."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher.environment import (
    RDZV_STORE_VAR,
    RDZV_STORES,
    LaunchEnvironmentError,
    Placement,
    check_nnodes,
    default_rdzv_id,
    nproc_from,
    parse_nproc,
)
from partialfc.common.device_check import GpuRequest

DEFAULT_MAX_RESTARTS = 3
# torchrun's own default join timeout; a longer collective timeout raises it (see rendezvous_conf).
MIN_JOIN_TIMEOUT_S = 600

# Set for torchrun and its workers only where the environment does not set them already.
FIXED_DEFAULTS = {
    # torch 2.13 + gloo: without it in-place restarts fail in connectFullMesh or hang (FIELD_NOTES.md).
    # torchrun reads it itself, so it must be in torchrun's environment, not the workers'.
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    # A failed or timed-out NCCL collective ends the worker process (without a possibly hanging
    # communicator abort), so the agent sees a failure and restarts the group instead of hanging.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    # On SIGTERM (pod eviction) torchrun forwards it to the workers, which save a checkpoint at the
    # next log step, and SIGKILLs them after this many seconds (torch's default: 30, too short for a
    # large model's save). Just under the manifests' terminationGracePeriodSeconds (600).
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "540",
}

# torchrun reads each of its flags from PET_<FLAG> too; a user who set one meant it.
PET_OVERRIDES = {
    "nnodes": "PET_NNODES",
    "node_rank": "PET_NODE_RANK",
    "nproc_per_node": "PET_NPROC_PER_NODE",
    "max_restarts": "PET_MAX_RESTARTS",
    "rdzv_id": "PET_RDZV_ID",
}


@dataclass(frozen=True)
class TrainingSettings:
    """What the launcher needs to know of the training config (``--config`` + overrides)."""

    timeout_s: int
    metrics_port: int
    metrics_dir: str  # metrics.multiproc_dir; empty: the trainer's <output>/prometheus-<node>
    output: str  # the run directory, where the first failure is recorded
    device: str = "auto"  # dist.device
    compile: bool = False  # model.compile


def training_settings(train_args: Sequence[str]) -> TrainingSettings:
    """Read the collective timeout and metrics settings the way ``partialfc.train`` will; a training
    argument it would refuse (a typo'd option: SystemExit 2, a bad value: ConfigError) stops the
    launch here, before torchrun starts a worker per GPU to fail the same way."""
    from partialfc.config import config_from_args, train_argument_parser

    config = config_from_args(train_argument_parser().parse_args(list(train_args)))
    return TrainingSettings(
        config.dist.timeout_s,
        config.metrics.port,
        config.metrics.multiproc_dir,
        config.output,
        config.dist.device,
        config.model.compile,
    )


def node_local_metrics_dir(placement: Placement, settings: TrainingSettings, temp_dir: str, host: str) -> str | None:
    """A node-local metrics directory for a multi-node job that names none, else None.

    The trainer's default, ``<output>/prometheus-<node>``, lies on the storage every node shares, and
    the c10d rendezvous may give a node another number after a restart, so that node would adopt (and
    keep adding to) another node's counters. Local rank 0 empties it at this agent's first start and
    keeps it across in-place restarts (partialfc/metrics.py). Keyed by job (rendezvous id) and
    machine, so that launchers sharing a /tmp never share it.
    """
    if not settings.metrics_port or settings.metrics_dir or placement.nnodes == "1":
        return None
    return str(node_local_dir("metrics", placement, temp_dir, host))


def node_local_dir(kind: str, placement: Placement, temp_dir: str, host: str) -> Path:
    """``<temp>/partialfc-<kind>-<rendezvous id>-<host>``: per job and machine, never shared."""
    return Path(temp_dir) / re.sub(r"[^A-Za-z0-9_.-]", "_", f"partialfc-{kind}-{placement.rdzv_id}-{host}")


def apply_overrides(placement: Placement, env: Mapping[str, str], cli: Mapping[str, int | str | None]) -> Placement:
    """Command-line options beat PET_* variables the user set, which beat what the scheduler implies.

    ``cli["rdzv_store"]`` (else PARTIALFC_RDZV_STORE) says where the rendezvous store runs: "node" (the
    agent of node rank 0, torchrun's way) or "external" (``python -m launcher store``, outliving any
    node). An external store serves every job pointed at it, so the rendezvous id must name the job:
    the default one, derived from the rendezvous host, would be the same for all of them.
    """
    store = cli.get("rdzv_store") or env.get(RDZV_STORE_VAR) or "node"
    if store not in RDZV_STORES:
        raise LaunchEnvironmentError(f"{RDZV_STORE_VAR}={store!r} must be one of {', '.join(RDZV_STORES)}")
    changes: dict[str, Any] = {}  # Placement fields of several types; replace() checks the names
    for name, variable in PET_OVERRIDES.items():
        if not env.get(variable) or env[variable] == str(getattr(placement, name)):
            continue
        if name in ("nnodes", "rdzv_id"):
            changes[name] = env[variable]
        elif name == "nproc_per_node":
            changes[name] = nproc_from(env)
        else:
            try:
                changes[name] = int(env[variable])
            except ValueError:
                raise LaunchEnvironmentError(f"{variable}={env[variable]!r} is not an integer") from None
    sources = [PET_OVERRIDES[name] for name in changes]
    given = {name: value for name, value in cli.items() if value is not None and name != "rdzv_store"}
    changes.update(given)
    sources += [f"--{name.replace('_', '-')}" for name in given]
    if "nnodes" in changes:
        check_nnodes(str(changes["nnodes"]), "--nnodes" if "nnodes" in given else PET_OVERRIDES["nnodes"])
    resolved = replace(placement, **changes, external_store=store == "external")
    if resolved.external_store and resolved.rdzv_id == default_rdzv_id(resolved.rdzv_host):
        raise LaunchEnvironmentError(
            f"the rendezvous store is external ({RDZV_STORE_VAR}=external or --rdzv-store external) but no "
            "rendezvous id names the job (set PET_RDZV_ID, a PyTorchJob's elasticPolicy.rdzvId, or --rdzv-id): "
            f"the default, {resolved.rdzv_id}, comes from the store's host name, which every job using that "
            "store shares"
        )
    if resolved.rdzv_host == "localhost" and resolved.nnodes != "1":
        raise LaunchEnvironmentError(
            f"{', '.join(sources)}: {resolved.nnodes} nodes but no scheduler variables name a rendezvous host "
            "(set PET_RDZV_ENDPOINT=HOST:PORT, or run under one of the schedulers in --help)"
        )
    if resolved.node_rank is not None and resolved.node_rank >= resolved.max_nodes:
        raise LaunchEnvironmentError(
            f"{', '.join(sources)}: node rank {resolved.node_rank} is not below the node count {resolved.nnodes}"
        )
    return resolved


def rendezvous_conf(placement: Placement, timeout_s: int, env: Mapping[str, str]) -> str:
    """``--rdzv-conf``: who hosts the store, and how long a node waits for the store and its peers.

    No node hosts an external store (``is_host=false`` everywhere, whatever the node rank). Otherwise
    node rank 0 hosts the c10d store when the scheduler fixes node ranks (torch otherwise guesses by
    matching host names and addresses, which a DNS alias can defeat); without node ranks, the node
    whose torchrun local address (PET_LOCAL_ADDR) is the rendezvous host hosts it. A restarted node may wait for a
    peer that is still blocked in a collective until ``dist.timeout_s``, so the join timeout is at
    least that. A node may also start minutes before the store's host (an image pull, an autoscaled
    GPU node): torch's store client gives up after ``read_timeout`` (default 60 s: one 60 s connect,
    a random 30-90 s back-off, one more try; a 146 s gap measured fatal here), so it waits as long as
    the join. Keys in PET_RDZV_CONF (the operator's ``rdzvConf``) win.
    """
    join_timeout = str(max(MIN_JOIN_TIMEOUT_S, timeout_s + 60))
    conf = {"join_timeout": join_timeout, "read_timeout": join_timeout}
    if placement.external_store:
        conf["is_host"] = "false"
    elif placement.node_rank is not None and placement.rdzv_host != "localhost":
        conf["is_host"] = str(placement.node_rank == 0).lower()
    elif env.get("PET_LOCAL_ADDR") == placement.rdzv_host:  # torch's guess misses addresses of secondary NICs
        conf["is_host"] = "true"
    for item in filter(None, env.get("PET_RDZV_CONF", "").split(",")):
        key, _, value = item.partition("=")
        conf[key.strip()] = value.strip()
    return ",".join(f"{key}={value}" for key, value in conf.items())


def resolve_nproc(spec: int | str | None, gpus: int, cpus: int, device: str = "auto") -> int:
    """Worker processes for ``N|cpu|gpu`` or None ("auto": one per visible GPU, else one on CPU).

    "cpu" and "gpu" mean what they mean to torchrun (one process per CPU core / per GPU); "auto"
    differs from torchrun's on a CPU-only node (torchrun: one per core), where one process per node
    is what training wants, and so does a job whose workers run on the CPU (``dist.device cpu``).
    """
    if spec == "gpu" and not gpus:
        raise LaunchEnvironmentError("nproc-per-node 'gpu' but this node has no visible GPU")
    if spec == "cpu":
        return cpus
    if spec == "gpu":
        return gpus
    if spec is None:
        return (gpus if device != "cpu" else 0) or 1
    return int(spec)


def gpu_request(spec: int | str | None, given_as: str, device: str) -> GpuRequest | None:
    """The GPUs this node's launch asks for, or None when its workers may run on the CPU.

    ``--nproc-per-node gpu`` asks for at least one; with ``dist.device cuda`` a number N asks for N
    and auto for at least one. ``given_as`` says how the worker count was given (the flag or
    PET_NPROC_PER_NODE), for the message.
    """
    if spec == "gpu":
        return GpuRequest(1, f"{given_as}: one worker per GPU")
    if device != "cuda":
        return None
    if spec == "cpu":
        raise LaunchEnvironmentError(f"{given_as} (one worker per CPU core) contradicts dist.device=cuda")
    if spec is None:
        return GpuRequest(1, f"dist.device=cuda, {given_as}: one worker per GPU")
    return GpuRequest(int(spec), f"dist.device=cuda and {given_as}")


def cli_nproc(value: str) -> int | str | None:
    """argparse type of ``--nproc-per-node``."""
    try:
        return parse_nproc(value, "--nproc-per-node")
    except LaunchEnvironmentError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def torchrun_command(
    placement: Placement, nproc_per_node: int, max_restarts: int, rdzv_conf: str, train_args: Sequence[str]
) -> list[str]:
    """torchrun (``python -m launcher.agent``: torchrun in-process, its failure report kept) with a c10d
    rendezvous, then ``-m partialfc.train``."""
    command = [sys.executable, "-m", "launcher.agent", "--nnodes", placement.nnodes]
    if placement.node_rank is not None:
        command += ["--node-rank", str(placement.node_rank)]
    command += [
        "--nproc-per-node",
        str(nproc_per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        placement.rdzv_endpoint,
        "--rdzv-id",
        placement.rdzv_id,
        "--rdzv-conf",
        rdzv_conf,
        "--max-restarts",
        str(max_restarts),
        "-m",
        "partialfc.train",
        *train_args,
    ]
    return command


def torchrun_environment(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The environment for torchrun and the defaults it adds; variables already set are left alone."""
    added = {name: value for name, value in FIXED_DEFAULTS.items() if name not in env}
    return {**env, **added}, added
