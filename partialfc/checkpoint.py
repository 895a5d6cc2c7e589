"""Checkpoints that are complete or absent, and whose class centres load on any world size.

Layout of one checkpoint, ``<run>/checkpoints/step-00001234/``::

    trainer.pt                  backbone, its optimizer, loss scaler, step, epoch, best scores, config
    centres-00001-of-00004.pt   rank 1's Partial-FC state: centres + optimizer state, with its class range
    rank-00001-of-00004.pt      rank 1's RNG states and data-loader position
    meta.json                   step, epoch, world size, num_classes: written last

Every rank writes into ``step-….partial/`` and fsyncs; after a barrier rank 0 writes
``meta.json`` and renames the directory, so a directory named ``step-…`` is always complete
(``--resume auto`` takes the newest). Centres are stored per class range: a job with another world
size reads the files overlapping its own range (memory-mapped, only the rows it needs) and
re-shards; per-rank RNG and loader states then do not apply, and the loader restarts its epoch.
Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from partialfc.distributed import DistInfo, barrier
from partialfc.partial_fc import PartialFC, shard_range

__all__ = ["save_checkpoint", "find_latest_checkpoint", "load_checkpoint", "LoadedCheckpoint"]

_PREFIX = "step-"


def _step_dir(root: Path, step: int) -> Path:
    return root / f"{_PREFIX}{step:08d}"


def _part_name(kind: str, rank: int, world_size: int) -> str:
    return f"{kind}-{rank:05d}-of-{world_size:05d}.pt"


def _save_synced(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    step: int,
    epoch: int,
    info: DistInfo,
    pfc: PartialFC,
    trainer_state: dict[str, Any] | None,
    rank_state: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every rank calls it; ``trainer_state`` is needed on rank 0 only. Returns the directory."""
    final = _step_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    if info.is_main:
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
        partial.mkdir(parents=True)
    barrier()
    centres = {"class_start": pfc.class_start, "num_local": pfc.num_local, "state": pfc.state_dict()}
    _save_synced(centres, partial / _part_name("centres", info.rank, info.world_size))
    _save_synced(rank_state, partial / _part_name("rank", info.rank, info.world_size))
    if info.is_main:
        assert trainer_state is not None, "rank 0 saves the trainer state"
        _save_synced(trainer_state, partial / "trainer.pt")
    barrier()
    if info.is_main:
        meta = {"step": step, "epoch": epoch, "world_size": info.world_size, "num_classes": pfc.num_classes}
        (partial / "meta.json").write_text(json.dumps(meta))
        _fsync_dir(partial)
        shutil.rmtree(final, ignore_errors=True)  # same step saved twice (e.g. final save after a periodic one)
        partial.rename(final)
        _fsync_dir(root)
        for old in _complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted((p for p in found if (p / "meta.json").is_file()), key=lambda p: p.name)


def find_latest_checkpoint(root: Path) -> Path | None:
    complete = _complete_checkpoints(root)
    return complete[-1] if complete else None


class LoadedCheckpoint:
    """What a resuming rank gets back; ``rank_state`` is None after a world-size change."""

    def __init__(self, path: Path, meta: dict[str, Any], trainer_state: dict[str, Any], rank_state: dict[str, Any] | None):
        self.path, self.meta, self.trainer_state, self.rank_state = path, meta, trainer_state, rank_state


def load_checkpoint(path: Path, info: DistInfo, pfc: PartialFC) -> LoadedCheckpoint:
    """Load ``path`` into ``pfc`` (re-sharding if the world size changed) and return the rest."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta["num_classes"] != pfc.num_classes:
        raise ValueError(
            f"checkpoint {path} has num_classes={meta['num_classes']}, the job has {pfc.num_classes}"
        )
    saved_world = meta["world_size"]
    trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    if saved_world == info.world_size:
        centres = torch.load(path / _part_name("centres", info.rank, saved_world), map_location="cpu", weights_only=True)
        pfc.load_state_dict(centres["state"])
        rank_state = torch.load(path / _part_name("rank", info.rank, saved_world), map_location="cpu", weights_only=True)
    else:
        pfc.load_state_dict(_reshard(path, saved_world, pfc))
        rank_state = None
    return LoadedCheckpoint(path, meta, trainer_state, rank_state)


def _reshard(path: Path, saved_world: int, pfc: PartialFC) -> dict[str, Any]:
    """This rank's state assembled from the saved shards overlapping its class range."""
    start, end = pfc.class_start, pfc.class_start + pfc.num_local
    template = pfc.state_dict()
    row_keys = [k for k, v in template.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == pfc.num_local]
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in row_keys}
    step_count = None
    for saved_rank in range(saved_world):
        saved_start, saved_num = shard_range(pfc.num_classes, saved_rank, saved_world)
        lo, hi = max(start, saved_start), min(end, saved_start + saved_num)
        if lo >= hi:
            continue
        piece = torch.load(path / _part_name("centres", saved_rank, saved_world), map_location="cpu",
                           weights_only=True, mmap=True)
        if piece["class_start"] != saved_start or piece["num_local"] != saved_num:
            raise ValueError(f"{path}: shard {saved_rank} covers an unexpected class range")
        for key in row_keys:
            rows[key].append(piece["state"][key][lo - saved_start : hi - saved_start].clone())
        step_count = piece["state"]["_extra_state"]["step_count"]
    state = {key: torch.cat(parts) for key, parts in rows.items()}
    state["_extra_state"] = {**template["_extra_state"], "step_count": step_count}
    return state
