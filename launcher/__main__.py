"""``python -m launcher``: detect the node's place in the job and run torchrun on ``partialfc.train``;
``python -m launcher store``: the job's rendezvous store as a process of its own (launcher/store.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from launcher.command import (
    DEFAULT_MAX_RESTARTS,
    TrainingSettings,
    apply_overrides,
    cli_nproc,
    gpu_request,
    node_local_dir,
    node_local_metrics_dir,
    rendezvous_conf,
    resolve_nproc,
    torchrun_command,
    torchrun_environment,
    training_settings,
)
from launcher.environment import (
    NNODES_VAR,
    RDZV_HOST_VAR,
    RDZV_PORT_VAR,
    RDZV_STORE_VAR,
    RDZV_STORES,
    LaunchEnvironmentError,
    Placement,
    detect,
)
from launcher.supervise import run_torchrun
from partialfc.common.cli import ArgumentParser
from partialfc.common.device_check import CudaProbe, GpuRequest, device_type, probe_cuda, require_compiler
from partialfc.common.exit_codes import ExitCode, help_text
from partialfc.common.options import ConfigError

EPILOG = f"""\
environments recognised (first match wins; variables a user sets explicitly, PET_* included, win):
  SLURM                     SLURM_JOB_ID, SLURM_NODEID, and SLURM_STEP_NODELIST + SLURM_STEP_NUM_NODES under srun
                            (else SLURM_JOB_NODELIST + SLURM_NNODES); rendezvous on MASTER_ADDR:MASTER_PORT when
                            exported, else on the first host
  Kubeflow PyTorchJob v1    Master: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, PET_MASTER_ADDR, PET_MASTER_PORT,
                            PET_NODE_RANK, PET_NNODES (N or MIN:MAX with elasticPolicy), PET_NPROC_PER_NODE;
                            workers only (elasticPolicy): PET_RDZV_ENDPOINT, PET_NNODES
  Kubeflow Trainer v2       PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, PET_NPROC_PER_NODE
  Indexed Job / JobSet      JOB_COMPLETION_INDEX, plus {NNODES_VAR} and {RDZV_HOST_VAR} (pod 0's DNS name, or
                            the external store's Service) from the manifest; {RDZV_PORT_VAR} (default 29400)
  none of these             a single node

rendezvous store: by default the torchrun agent of node rank 0 hosts it, and it dies with that node.
With --rdzv-store external ({RDZV_STORE_VAR}=external) it is `python -m launcher store` (see its
--help) at the rendezvous endpoint, no node hosts it (is_host=false on every node), and the job
needs a rendezvous id of its own (PET_RDZV_ID or --rdzv-id). When a node that does not host the store
loses its connection to it (the store restarted, or its host node died), the launcher starts torchrun
again for a new rendezvous round, uncounted: each new start first waits up to read_timeout for the
store, and a store that does not come back within it ends the container with exit code 1.

torchrun gets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, TORCH_NCCL_ASYNC_ERROR_HANDLING=3 and
TORCH_ELASTIC_SHUTDOWN_TIMEOUT=540 (time for the pre-emption checkpoint after SIGTERM) unless they are set.
The collective timeout is the training config's dist.timeout_s; the rendezvous join timeout is raised
to cover it, and the store client waits as long (read_timeout), so a node that starts minutes before
the rendezvous host still joins. PET_RDZV_CONF keys win. Metrics: local rank 0 empties the node's
metrics directory when each torchrun agent first starts its workers and keeps counters across
in-place restarts (partialfc/metrics.py);
a multi-node job without metrics.multiproc_dir gets a node-local one,
$TMPDIR/partialfc-metrics-<rdzv id>-<host name>.

The launcher stays torchrun's parent: it passes SIGTERM/SIGINT/SIGHUP on, and its exit code is the
job's (the workers record theirs in $TMPDIR/partialfc-exit-<rdzv id>-<host name>); 2 for a launch
environment or config it cannot use. A config error or a divergence stops torchrun at once instead
of letting it restart the workers into the same end.

GPUs: dist.device cuda in the training config (the Kubernetes ConfigMap and the GPU presets set it)
with --nproc-per-node N asks for N GPUs on this node (auto: at least one); --nproc-per-node gpu asks
for at least one whatever dist.device says. Where torch sees fewer (no device, CUDA_VISIBLE_DEVICES
empty, a driver too old for torch's CUDA build) the launcher exits 2 before starting torchrun,
naming the GPUs asked and found, torch's CUDA version, the driver's version and torch's warning.
--model.compile true exits 2 the same way when the compiler torch.compile needs is missing (GPU: CC,
gcc or clang for Triton; CPU: CXX or g++). --print plans without either check.

{help_text()}

example:
  python -m launcher --print -- --config configs/ms1mv3_r50.yaml --output /checkpoints/ms1mv3-r50
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m launcher",
        description="Start this node's part of a partialfc training job: detect the scheduler, then run torchrun "
        "(c10d rendezvous, elastic restarts) on `python -m partialfc.train TRAIN_ARGS`. Every argument the "
        "launcher does not own, or everything after `--`, is a training argument. `python -m launcher store "
        "[--port P] [--host H]` runs the job's rendezvous store instead (see `python -m launcher store --help`).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--nproc-per-node",
        type=cli_nproc,
        metavar="N|auto|cpu|gpu",
        help="worker processes on this node: a number, one per GPU (gpu), one per CPU core (cpu), or "
        "auto: one per visible GPU, 1 on a node without GPUs (default: the scheduler's value, else auto)",
    )
    parser.add_argument("--nnodes", metavar="N|MIN:MAX", help="node count (default: the scheduler's)")
    parser.add_argument("--node-rank", type=int, metavar="R", help="this node's rank (default: the scheduler's)")
    parser.add_argument(
        "--max-restarts",
        type=int,
        metavar="N",
        help=f"in-place restarts of the worker group after a failure (default: PET_MAX_RESTARTS, else "
        f"{DEFAULT_MAX_RESTARTS})",
    )
    parser.add_argument(
        "--rdzv-id",
        metavar="ID",
        help="rendezvous id, the same on every node (default: derived from "
        "the scheduler: the rendezvous host or the SLURM job id)",
    )
    parser.add_argument(
        "--rdzv-store",
        choices=RDZV_STORES,
        help=f"where the rendezvous store runs: node (node rank 0's torchrun agent hosts it) or external "
        f"(`python -m launcher store` at the rendezvous endpoint; no node hosts it) (default: {RDZV_STORE_VAR}, "
        "else node)",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print the detected environment and the exact command, then exit without running it",
    )
    return parser


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Launcher options and training arguments: ``--`` separates them; without it, unknown ones train."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def nproc_given_as(cli_value: int | str | None, env: Mapping[str, str]) -> str:
    """How the worker count was given (the flag wins over PET_NPROC_PER_NODE), as messages name it."""
    if cli_value is not None:
        return f"--nproc-per-node {cli_value}"
    if env.get("PET_NPROC_PER_NODE"):
        return f"PET_NPROC_PER_NODE={env['PET_NPROC_PER_NODE']}"
    return "--nproc-per-node auto (the default)"


def check_node(
    request: GpuRequest | None, settings: TrainingSettings, probe: CudaProbe, env: Mapping[str, str]
) -> None:
    """ConfigError when this node lacks the GPUs asked for, or the compiler ``model.compile`` needs."""
    if request:
        request.check(probe)
    if settings.compile:
        require_compiler(device_type(settings.device, probe), env)


def describe(
    placement: Placement,
    settings: TrainingSettings,
    request: GpuRequest | None,
    added: Mapping[str, str],
    command: list[str],
) -> str:
    lines = [f"environment: {placement.source}"]
    lines += [f"  {name}={value}" for name, value in placement.variables.items()]
    rank = "assigned by the rendezvous" if placement.node_rank is None else str(placement.node_rank)
    lines += [
        f"nodes: {placement.nnodes}, this node's rank: {rank}",
        f"rendezvous: c10d at {placement.rdzv_endpoint}, id {placement.rdzv_id}",
        f"rendezvous store: {store_host(placement)}",
        f"collective timeout (dist.timeout_s): {settings.timeout_s} s",
        f"GPUs asked: {request.count} ({request.asked_by}), checked before torchrun starts"
        if request
        else f"GPUs asked: none (dist.device={settings.device})",
    ]
    if settings.metrics_port:
        directory = settings.metrics_dir or "<output>/prometheus-<node>"
        lines.append(
            f"metrics: port {settings.metrics_port}, directory {directory} "
            "(emptied at this agent's first start, kept across in-place restarts)"
        )
    else:
        lines.append("metrics: off (metrics.port 0)")
    lines.append("set for torchrun (were unset): " + (" ".join(f"{k}={v}" for k, v in added.items()) or "nothing"))
    lines.append("command: " + shlex.join(command))
    return "\n".join(lines)


def store_host(placement: Placement) -> str:
    """Who runs the rendezvous store, for ``--print``."""
    if placement.external_store:
        return "external (python -m launcher store); no node hosts it"
    if placement.node_rank is not None and placement.rdzv_host != "localhost":
        return "the torchrun agent of node rank 0" + (" (this node)" if placement.node_rank == 0 else "")
    return "the torchrun agent on the rendezvous host (torch matches host names)"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["store"]:
        from launcher.store import main as store_main

        return store_main(argv[1:])
    env = dict(os.environ if env is None else env)
    own, train_args = split_arguments(argv)
    args, unknown = build_parser().parse_known_args(own)
    train_args = unknown + train_args
    try:
        settings = training_settings(train_args)
    except ValueError as error:  # partialfc.config.ConfigError
        print(f"launcher: training config: {error}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        cli = {
            "nproc_per_node": args.nproc_per_node,
            "nnodes": args.nnodes,
            "node_rank": args.node_rank,
            "max_restarts": args.max_restarts,
            "rdzv_id": args.rdzv_id,
            "rdzv_store": args.rdzv_store,
        }
        placement = apply_overrides(detect(env), env, cli)
    except LaunchEnvironmentError as error:
        print(f"launcher: {error}", file=sys.stderr)
        return ExitCode.CONFIG
    metrics_dir = node_local_metrics_dir(placement, settings, tempfile.gettempdir(), socket.gethostname())
    if metrics_dir:
        train_args += ["--metrics.multiproc_dir", metrics_dir]
        settings = replace(settings, metrics_dir=metrics_dir)
    probe = probe_cuda()  # the first CUDA query of this process: it alone sees torch's initialisation warning
    try:
        request = gpu_request(placement.nproc_per_node, nproc_given_as(args.nproc_per_node, env), settings.device)
        if not args.print_only:  # --print plans for the node it describes, which may be another
            check_node(request, settings, probe, env)
        nproc = resolve_nproc(placement.nproc_per_node, probe.gpus, os.cpu_count() or 1, settings.device)
    except (LaunchEnvironmentError, ConfigError) as error:
        print(f"launcher: {error}", file=sys.stderr)
        return ExitCode.CONFIG
    max_restarts = DEFAULT_MAX_RESTARTS if placement.max_restarts is None else placement.max_restarts
    command = torchrun_command(
        placement, nproc, max_restarts, rendezvous_conf(placement, settings.timeout_s, env), train_args
    )
    child_env, added = torchrun_environment(env)
    child_env[RDZV_STORE_VAR] = "external" if placement.external_store else "node"  # read by launcher.agent
    if args.print_only:
        print(describe(placement, settings, request, added, command))
        return ExitCode.FINISHED
    print(describe(placement, settings, request, added, command), file=sys.stderr, flush=True)
    return run_torchrun(
        command,
        child_env,
        node_local_dir("exit", placement, tempfile.gettempdir(), socket.gethostname()),
        Path(settings.output),
    )


if __name__ == "__main__":
    sys.exit(main())
