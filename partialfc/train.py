"""``python -m partialfc.train``: the training job (under torchrun, or as a single process).

torchrun --nproc_per_node 8 -m partialfc.train --config configs/ms1mv3_r50.yaml --optim.lr 0.2
python -m partialfc.train --config configs/quickstart.yaml --dry-run
"""

from __future__ import annotations

if __name__ == "__main__":
    # First of all, before numpy and torch start threads (OpenBLAS starts its pool when imported): a blocked
    # mask is inherited by every thread started later, so SIGTERM reaches only the trainer's own waiting
    # thread (preemption.py) and never a thread whose default action would end the process unsaved. Only
    # here, not in main(): the mask is inherited by every process started later, e.g. by a test.
    from partialfc.training.preemption import block_sigterm

    block_sigterm()

import os
import sys
from pathlib import Path

import torch
import yaml

from partialfc.common.device_check import require_compiler, worker_device
from partialfc.common.distributed import init_distributed, shutdown
from partialfc.common.exit_codes import ExitCode, record_exit
from partialfc.config import Config, ConfigError, config_from_args, to_dict, train_argument_parser
from partialfc.models import create_model
from partialfc.models.activation_memory import activation_bytes

# The launcher parses the training arguments with the same parser, to refuse a bad one before torchrun starts.
build_parser = train_argument_parser


def memory_plan(config: Config, num_classes: int, world_size: int) -> list[tuple[str, int]]:
    """Bytes per rank of what dominates memory (rank 0, the largest shard), activations included.

    The Partial-FC lines are the loss section's :meth:`~partialfc.config.LossConfig.buffer_plan`.
    """
    dim = config.model.embedding_size
    centres = config.loss.buffer_plan(
        dim,
        num_classes,
        world_size,
        config.data.batch_size * world_size,
        config.optim.build_centre_optimizer(),
        micro_batches=config.train.grad_accum,
    )
    with torch.device("meta"):
        backbone_params = sum(p.numel() for p in create_model(config.model.backbone, embedding_size=dim).parameters())
    backbone_states = 3 if config.optim.name == "adamw" else (2 if config.optim.momentum else 1)
    return [
        *((size_name, size) for size_name, size in centres if size),
        ("backbone weights + gradients + optimizer state", backbone_params * 4 * (1 + backbone_states)),
        (
            f"backbone activations kept for backward ({config.train.amp}, {config.data.batch_size} images)",
            activation_bytes(
                config.model.backbone, dim, config.train.amp, config.data.batch_size, config.model.backbone_options()
            ),
        ),
    ]


# Of a device's memory, the share the plan may take: the rest is the CUDA context, the caching allocator's
# slack and the kernels' workspaces, which the plan does not count.
PLANNED_SHARE = 0.9


def dry_run(config: Config, world_size: int, device_memory: float | None = None) -> None:
    """The resolved config and the memory plan per rank; whether it fits a device of ``device_memory``
    GiB (None: this machine's GPU, if it has one)."""
    from partialfc.training.prepare import is_synthetic_target

    num_classes = config.data.num_classes
    if not num_classes and is_synthetic_target(config.data) and not Path(config.data.path).exists():
        num_classes = config.data.synthetic.identities  # generated on the first real run
    elif not num_classes:
        from partialfc.data import DatasetError, RecordDataset

        try:
            num_classes = RecordDataset(config.data.path).num_classes
        except (DatasetError, OSError) as error:
            raise ConfigError(f"data.path={config.data.path!r}: {error}") from None
    if world_size > num_classes:
        raise ConfigError(
            f"--world-size {world_size} exceeds the {num_classes} classes: every rank must own at least one class "
            "centre; plan for fewer ranks or more classes"
        )
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    print(
        f"# memory plan per rank: W={world_size}, C={num_classes}, global batch {config.data.batch_size * world_size}"
    )
    plan = memory_plan(config, num_classes, world_size)
    for name, size in plan:
        print(f"#   {name:<60} {_human_bytes(size):>12}")
    total = sum(size for _, size in plan)
    print(f"#   {'total (without allocator slack and kernel workspaces)':<60} {_human_bytes(total):>12}")
    print(f"# {fit_verdict(total, device_memory)}")


def fit_verdict(total: int, device_memory: float | None) -> str:
    """Whether ``total`` bytes fit ``device_memory`` GiB (None: this machine's first GPU) within PLANNED_SHARE."""
    if device_memory is None:
        if not torch.cuda.is_available():
            return "fits a device: no GPU here to compare with; --device-memory GiB names one"
        properties = torch.cuda.get_device_properties(0)
        device_memory, name = properties.total_memory / 2**30, properties.name
    else:
        name = "a device"
    budget = PLANNED_SHARE * device_memory * 2**30
    share = f"{_human_bytes(total)} of {name}'s {device_memory:g} GiB ({100 * total / (device_memory * 2**30):.1f}%)"
    if total <= budget:
        return f"fits: {share}"
    return (
        f"does NOT fit: {share}, above the {100 * PLANNED_SHARE:.0f}% the plan may take (the rest: CUDA context, "
        "allocator slack, workspaces); lower data.batch_size (with train.grad_accum), loss.sample_rate, or plan "
        "for more ranks"
    )


def _human_bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def main(argv: list[str] | None = None) -> ExitCode:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.dry_run:
            dry_run(config, args.world_size or int(os.environ.get("WORLD_SIZE", "1")), args.device_memory)
            return ExitCode.FINISHED
        from partialfc.training.trainer import Trainer

        warn_if_restarts_unsafe()
        device = worker_device(config.dist.device)  # before the process group: a node without GPUs ends here
        if config.model.compile:
            require_compiler(device.type)
        info = init_distributed(config.dist.backend, config.dist.timeout_s, device)
        try:
            return Trainer(config, info).fit()
        finally:
            shutdown()
    except ConfigError as error:
        print(f"partialfc.train: config error: {error}", file=sys.stderr)
        return ExitCode.CONFIG


def warn_if_restarts_unsafe() -> None:
    """In-place restarts of torch 2.13 workers hang or are refused unless torchrun was started with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/operations.md); torchrun reads it, so only its caller can set it."""
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if (
        restarts > 0
        and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1"
        and os.environ.get("RANK", "0") == "0"
    ):
        print(
            f"partialfc.train: warning: torchrun runs with --max-restarts {restarts} but without "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1; restarted workers may hang in init_process_group. "
            "Start torchrun with that variable set (python -m launcher sets it).",
            file=sys.stderr,
        )


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as stop:  # argparse: 0 after --help, 2 for a mistake on the command line
        record_exit(ExitCode.FINISHED if not stop.code else ExitCode.CONFIG if stop.code == 2 else ExitCode.FAILED)
        raise
    except BaseException:
        record_exit(ExitCode.FAILED)
        raise
    record_exit(code)
    sys.exit(code)
