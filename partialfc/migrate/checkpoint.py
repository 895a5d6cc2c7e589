"""train_v2.py's checkpoints as a run directory that our trainer resumes on any world size.

What they save (insightface ``recognition/arcface_torch/train_v2.py``, at the end of each epoch when
``save_all_states`` is set): one ``checkpoint_gpu_{rank}.pt`` per rank holding ``epoch`` (the next epoch
to train), ``global_step`` (batches trained: their optimizer steps once every ``gradient_acc`` of them,
and their LR scheduler steps every batch), ``state_dict_backbone`` (the same on every rank),
``state_dict_softmax_fc`` (PartialFC_V2's ``weight``: this rank's contiguous block of class centres,
``num_classes // W`` rows plus one on the first ``num_classes % W`` ranks, partial_fc_v2.py's
``num_local``/``class_start``, which is :func:`~partialfc.common.distributed.shard_range`),
``state_optimizer`` (one torch SGD or AdamW over two groups: the backbone's parameters in
``parameters()`` order, then the centre shard; its per-parameter state is keyed by that index) and
``state_lr_scheduler`` (PolynomialLRWarmup: ``last_epoch``, ``warmup_iters``, ``total_iters`` in batches).
Their resume loads each rank's own file, so it needs the same W; ours does not.

:func:`migrate_checkpoint` builds every component our trainer checkpoints (training/trainer.py
``_checkpointer``) from the run's migrated config, at world size 1 in this process, fills them from
their files, and saves them through our :class:`~partialfc.training.checkpoint.Checkpointer`: the
manifest, hashes and format are ours, and a job on another world size re-shards the centres on load.
The backbone loads strictly (our IResNet and MobileFaceNet keep arcface_torch's key names); the
centres are joined in rank order, so class ``c`` is row ``c``; momentum (SGD) or the moments (AdamW)
are carried for the backbone and the centres; the step becomes optimizer steps (``global_step //
gradient_acc``), the run's plan their scheduler's length (``total_iters``), so that the LR schedule
continues where theirs stood; the data loader restarts at their next epoch.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from partialfc.common.distributed import DistInfo, shard_range
from partialfc.config import Config, to_dict
from partialfc.core.partial_fc import PartialFC
from partialfc.data.loaders.plan import batches_per_rank
from partialfc.migrate import MigrationError
from partialfc.models import input_config_of
from partialfc.training.checkpoint import Checkpointer, Component, Stateful, find_latest_checkpoint
from partialfc.training.ema import WeightAverage
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.prepare import prepare_dataset
from partialfc.training.run_plan import RunPlan
from partialfc.training.train_state import LoaderEpoch, RNGState, TrainProgress

__all__ = ["MigratedRun", "migrate_checkpoint", "read_rank_files"]

FILE = re.compile(r"checkpoint_gpu_(\d+)\.pt")
SAVED = (
    "epoch",
    "global_step",
    "state_dict_backbone",
    "state_dict_softmax_fc",
    "state_optimizer",
    "state_lr_scheduler",
)
"""The keys of train_v2.py's checkpoint dict."""

CENTRE_STATE = {"momentum_buffer": "optim_momentum", "exp_avg": "optim_exp_avg", "exp_avg_sq": "optim_exp_avg_sq"}
"""Their optimizer's state of the centre shard -> our centre optimizer's per-class state (PartialFC's keys)."""

_ROW_STEP = "optim_row_step"  # LazyAdamW's per-row step count: their dense AdamW stepped every row every time
_CPU = torch.device("cpu")
_DETAIL = 300  # characters of a state_dict error kept in the one-line message


@dataclass(frozen=True)
class RankFile:
    path: Path
    saved: dict[str, Any]


@dataclass(frozen=True)
class MigratedRun:
    """What was written, for the command's summary."""

    checkpoint: Path
    world_size: int
    num_classes: int
    step: int
    global_step: int
    epoch: int
    plan_steps: int
    lr: float
    their_lr: float | None


def read_rank_files(directory: Path) -> list[RankFile]:
    """Every rank's ``checkpoint_gpu_{rank}.pt`` in ``directory``, in rank order, checked for train_v2.py's keys."""
    ranks = {int(match.group(1)): path for path in directory.iterdir() if (match := FILE.fullmatch(path.name))}
    if not ranks:
        raise MigrationError(
            f"{directory}: no checkpoint_gpu_*.pt (train_v2.py writes one per rank at each epoch's end when "
            "config.save_all_states is True)"
        )
    missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
    if missing:
        raise MigrationError(
            f"{directory}: checkpoint_gpu_{missing[0]}.pt is missing; train_v2.py writes one file per rank, "
            f"ranks 0..{max(ranks)} here"
        )
    files = []
    for rank in range(len(ranks)):
        path = ranks[rank]
        try:
            saved = torch.load(path, map_location=_CPU, weights_only=True, mmap=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise MigrationError(f"{path}: cannot read ({str(error).splitlines()[0]})") from None
        absent = [key for key in SAVED if not isinstance(saved, dict) or key not in saved]
        if absent:
            raise MigrationError(f"{path}: no '{absent[0]}' (train_v2.py's checkpoint holds {', '.join(SAVED)})")
        files.append(RankFile(path, saved))
    for file in files[1:]:
        for key in ("epoch", "global_step"):
            if file.saved[key] != files[0].saved[key]:
                raise MigrationError(
                    f"{file.path}: {key} {file.saved[key]}, {files[0].path.name} has {files[0].saved[key]} "
                    "(files of different saves)"
                )
    return files


def migrate_checkpoint(directory: Path, config: Config, run_dir: Path) -> MigratedRun:
    """Write ``run_dir/checkpoints/step-…`` from the train_v2.py checkpoints in ``directory``.

    ``config`` is the run's config as migrated from its arcface_torch config (it must describe their
    run: backbone, embedding size, optimizer, batch size, gradient accumulation). Raises
    :class:`MigrationError` naming the file and what disagrees; a ConfigError for the dataset.
    """
    files = read_rank_files(directory)
    if find_latest_checkpoint(run_dir / "checkpoints") is not None:
        raise MigrationError(f"{run_dir}: already holds checkpoints; give an empty or new --out")
    if config.loss.sub_centers != 1:
        raise MigrationError(
            f"loss.sub_centers={config.loss.sub_centers}: train_v2.py's PartialFC_V2 has one centre per class"
        )
    dataset = prepare_dataset(config.data, config.train.seed, is_main=True)
    world_size, num_classes = len(files), dataset.num_classes
    first = files[0]

    backbone = config.model.build(_CPU)
    try:
        backbone.load_state_dict(first.saved["state_dict_backbone"])
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[min(1, len(lines) - 1)]  # the first of missing, unexpected and mismatched keys
        detail = detail if len(detail) <= _DETAIL else detail[:_DETAIL] + " ..."
        raise MigrationError(
            f"{first.path}: state_dict_backbone does not load into model.backbone={config.model.backbone} "
            f"(model.embedding_size={config.model.embedding_size}): {detail}"
        ) from None
    pfc = config.loss.build(
        config.model.embedding_size,
        num_classes,
        config.optim.build_centre_optimizer(),
        seed=config.train.seed,
        device=_CPU,
    )
    optimizer = TrainingOptimizer(config.optim, backbone, pfc, fp16=config.train.amp == "fp16")
    groups = _param_groups(first, config, len(optimizer.params))
    optimizer.load_state_dict(
        {
            "backbone": _backbone_optimizer_state(first, backbone, optimizer, groups[0]),
            "scaler": optimizer.scaler.state_dict(),
        }
    )

    grad_accum, batch = config.train.grad_accum, config.data.batch_size
    step = int(first.saved["global_step"]) // grad_accum
    scheduler = first.saved["state_lr_scheduler"]
    if "total_iters" not in scheduler:
        raise MigrationError(f"{first.path}: state_lr_scheduler has no total_iters (not PolynomialLRWarmup's)")
    plan_steps = math.ceil(int(scheduler["total_iters"]) / grad_accum)
    plan_batch = batch * world_size * grad_accum
    progress = TrainProgress(step=step, samples=step * plan_batch, plan_steps=plan_steps, plan_batch=plan_batch)
    _load_centres(files, pfc, config, num_classes, groups[1], step)

    loader = config.data.build_loader(
        dataset, input_config_of(backbone), rank=0, world_size=1, seed=config.train.seed, device_id=None
    )
    epoch = int(first.saved["epoch"])
    loader.set_epoch(epoch)
    shared: dict[str, Stateful] = {
        "model": backbone,
        "optimizer": optimizer,
        "progress": progress,
        "epoch": LoaderEpoch(loader),
        **({"ema": WeightAverage(backbone, config.train.ema_decay)} if config.train.ema_decay else {}),
    }
    run_config = dataclasses.replace(config, output=str(run_dir))
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        DistInfo(rank=0, world_size=1, local_rank=0, local_world_size=1, node=0, device=_CPU),
        config.checkpoint.keep,
        {
            **{name: Component(state, "shared") for name, state in shared.items()},
            "rng": Component(RNGState(), "per_rank"),
            "loader": Component(loader, "per_rank"),
            "centres": Component(pfc, "sharded"),
        },
        config=to_dict(run_config),
    )
    path = checkpointer.save(step)

    steps_per_epoch = batches_per_rank(dataset.num_images, batch, world_size) // grad_accum
    plan = RunPlan.for_start(config, steps_per_epoch, plan_batch, progress)
    their_lr = scheduler.get("_last_lr", [None])[0]
    return MigratedRun(
        path,
        world_size,
        num_classes,
        step,
        int(first.saved["global_step"]),
        epoch,
        plan_steps,
        plan.learning_rate(progress.position),
        float(their_lr) if their_lr is not None else None,
    )


def _param_groups(first: RankFile, config: Config, backbone_params: int) -> list[list[int]]:
    """Their optimizer's two groups (parameter indices), checked against what train_v2.py builds and our config."""
    groups = first.saved["state_optimizer"].get("param_groups", [])
    ids = [list(group.get("params", [])) for group in groups]
    if len(ids) != 2 or len(ids[0]) != backbone_params or len(ids[1]) != 1:
        raise MigrationError(
            f"{first.path}: state_optimizer has groups of {[len(group) for group in ids]} parameters; train_v2.py "
            f"builds [backbone ({backbone_params} for model.backbone={config.model.backbone}), centres (1)]"
        )
    family = "adamw" if "betas" in groups[0] else "sgd"
    if family != config.optim.name:
        raise MigrationError(
            f"{first.path}: their optimizer is {family}, this config's optim.name is {config.optim.name}"
        )
    return ids


def _backbone_optimizer_state(
    first: RankFile, backbone: torch.nn.Module, optimizer: TrainingOptimizer, their_ids: list[int]
) -> dict[str, Any]:
    """Our backbone optimizer's state with their per-parameter state (momentum, moments), matched by name.

    Their i-th backbone parameter is the i-th parameter key of their state_dict (``parameters()`` and
    ``state_dict()`` walk the modules in the same order); ours are matched to it by that name.
    """
    ours = [name for name, _ in backbone.named_parameters()]
    their_order = [key for key in first.saved["state_dict_backbone"] if key in set(ours)]
    saved = first.saved["state_optimizer"].get("state", {})
    state = {
        ours.index(name): dict(saved[their_id]) for name, their_id in zip(their_order, their_ids) if their_id in saved
    }
    return {**optimizer.backbone_optimizer.state_dict(), "state": state}


def _load_centres(
    files: list[RankFile], pfc: PartialFC, config: Config, num_classes: int, their_ids: list[int], step: int
) -> None:
    """Every rank's centre block (and its optimizer state) into our one shard, by class id."""
    state = pfc.state_dict()  # references to the module's tensors: filled in place
    dim = config.model.embedding_size
    for rank, file in enumerate(files):
        start, rows = shard_range(num_classes, rank, len(files))
        weight = file.saved["state_dict_softmax_fc"].get("weight")
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (rows, dim):
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
            raise MigrationError(
                f"{file.path}: state_dict_softmax_fc weight has shape {shape}; partial_fc_v2.py gives rank {rank} of "
                f"{len(files)} {rows} of the dataset's {num_classes} classes x model.embedding_size={dim}"
            )
        block = slice(start, start + rows)
        state["weight"][block] = weight
        saved: Mapping[str, Any] = file.saved["state_optimizer"].get("state", {}).get(their_ids[0], {})
        for theirs, ours in CENTRE_STATE.items():
            if ours in state and isinstance(saved.get(theirs), torch.Tensor):
                state[ours][block] = saved[theirs]
        if _ROW_STEP in state and "step" in saved:
            state[_ROW_STEP][block] = float(saved["step"])
    pfc.step_count = step
