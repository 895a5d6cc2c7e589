"""Checkpoints of a dict of components: complete or absent, verifiable, re-shardable.

Layout of one checkpoint, ``<run>/checkpoints/step-00001234/``::

    trainer.pt                  components identical on every rank (model, optimizer, progress), rank 0
    centres-00001-of-00004.pt   rank 1's Partial-FC state: centres + optimizer state, with its class range
    rank-00001-of-00004.pt      rank 1's own components (RNG states, data-loader position)
    meta.json                   the manifest, written last: step, epoch, world size, num_classes,
                                config hash, and the size and SHA-256 of every file

A component is anything with ``state_dict``/``load_state_dict``. Every rank writes into
``step-….partial/`` and fsyncs; after a barrier rank 0 writes the manifest and renames the
directory, so a directory named ``step-…`` is always complete. Loading checks each file it reads
against the manifest, so a truncated or corrupted file is named instead of failing deep inside
``torch.load``; :meth:`Checkpointer.newest_loadable` skips such checkpoints (every rank agrees)
and falls back to an older one. Centres are stored per class range: a job with another world size
reads the files overlapping its own range (memory-mapped, only the rows it needs) and re-shards;
per-rank components then do not apply, and the loader restarts its epoch.
Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from partialfc import shard_range
from partialfc.distributed import DistInfo, barrier
from partialfc.partial_fc import PartialFC
from partialfc.resume import flatten

__all__ = ["Checkpointer", "CheckpointError", "LoadedCheckpoint", "Stateful", "find_latest_checkpoint"]

_PREFIX = "step-"
_SHARED = "trainer.pt"
_MANIFEST = "meta.json"
_HASH_BLOCK = 8 << 20


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any], /) -> Any: ...


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or loaded; the message names the file."""


def _step_dir(root: Path, step: int) -> Path:
    return root / f"{_PREFIX}{step:08d}"


def _part_name(kind: str, rank: int, world_size: int) -> str:
    return f"{kind}-{rank:05d}-of-{world_size:05d}.pt"


class _HashingWriter(io.RawIOBase):
    """A file that hashes what is written to it, so saving costs no second read."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self.size += len(data)
        return self.f.write(data)


def _save_synced(obj: Any, path: Path) -> dict[str, Any]:
    """torch.save + fsync; returns the file's manifest entry (size, SHA-256)."""
    try:
        with open(path, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint file {path}: {error.strerror or error}") from error
    return {"bytes": writer.size, "sha256": writer.sha256.hexdigest()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted((p for p in found if (p / _MANIFEST).is_file()), key=lambda p: p.name)


def find_latest_checkpoint(root: Path) -> Path | None:
    """Newest complete checkpoint directory (not verified; see :meth:`Checkpointer.newest_loadable`)."""
    complete = _complete_checkpoints(root)
    return complete[-1] if complete else None


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a complete checkpoint (no {_MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({error})") from None
    missing = {"step", "epoch", "world_size", "num_classes"} - set(manifest)
    if missing:
        raise CheckpointError(f"{manifest_path}: manifest lacks {', '.join(sorted(missing))}")
    return manifest


def verify_file(path: Path, manifest: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` naming ``path`` when its size or SHA-256 differs from the manifest."""
    expected = manifest.get("files", {}).get(path.name)
    if expected is None:
        raise CheckpointError(f"{path}: not listed in {path.parent / _MANIFEST}")
    try:
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or replaced)")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    if digest.hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 differs from the manifest (corrupted)")


def _load(path: Path, manifest: Mapping[str, Any], mmap: bool = False) -> Any:
    verify_file(path, manifest)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


@dataclass
class LoadedCheckpoint:
    path: Path
    manifest: dict[str, Any]
    resharded: bool
    """True when the world size changed: centres were re-sharded and per-rank components not loaded."""


class Checkpointer:
    """Saves and loads ``shared`` (identical on every rank), ``per_rank`` components and the centres.

    Every method is collective: all ranks call it together.
    """

    def __init__(
        self,
        root: Path,
        info: DistInfo,
        keep: int,
        *,
        shared: Mapping[str, Stateful],
        per_rank: Mapping[str, Stateful],
        pfc: PartialFC,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.root, self.info, self.keep = root, info, keep
        self.shared, self.per_rank, self.pfc = shared, per_rank, pfc
        self.config = dict(config or {})

    # ------------------------------------------------------------------ save
    def save(self, step: int, epoch: int) -> Path:
        """Write the checkpoint of ``step``; returns its directory. Rotation keeps the newest ``keep``."""
        info = self.info
        final = _step_dir(self.root, step)
        partial = final.with_name(final.name + ".partial")
        if info.is_main:
            shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
            try:
                partial.mkdir(parents=True)
            except OSError as error:
                raise CheckpointError(f"cannot create checkpoint directory {partial}: {error.strerror}") from error
        barrier()
        pfc = self.pfc
        files: dict[str, Any] = {}
        centres = {"class_start": pfc.class_start, "num_local": pfc.num_local, "state": pfc.state_dict()}
        files[_part_name("centres", info.rank, info.world_size)] = centres
        files[_part_name("rank", info.rank, info.world_size)] = {k: c.state_dict() for k, c in self.per_rank.items()}
        if info.is_main:
            files[_SHARED] = {k: c.state_dict() for k, c in self.shared.items()}
        error, entries = None, {}
        try:
            entries = {name: _save_synced(obj, partial / name) for name, obj in files.items()}
        except CheckpointError as raised:
            error = raised
        all_entries = _gather_objects((str(error) if error else None, entries))
        failures = [message for message, _ in all_entries if message]
        if failures:
            raise CheckpointError(f"checkpoint {final} not saved: {failures[0]}")
        if info.is_main:
            manifest = {
                "step": step, "epoch": epoch, "world_size": info.world_size, "num_classes": pfc.num_classes,
                "config": self.config, "config_hash": config_hash(self.config),
                "files": {name: entry for _, rank_entries in all_entries for name, entry in rank_entries.items()},
            }
            try:
                (partial / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
                _fsync_dir(partial)
                shutil.rmtree(final, ignore_errors=True)  # same step saved twice (final save after a periodic one)
                partial.rename(final)
                _fsync_dir(self.root)
            except OSError as raised:
                raise CheckpointError(f"cannot finish checkpoint {final}: {raised.strerror or raised}") from raised
            for old in _complete_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    # ------------------------------------------------------------------ load
    def newest_loadable(self, log: Callable[[str], None]) -> Path | None:
        """Newest checkpoint whose files verify on every rank; newer broken ones are logged and skipped.

        Raises :class:`CheckpointError` when checkpoints exist but none verifies.
        """
        candidates = _gather_objects(_complete_checkpoints(self.root))[0]  # rank 0's listing decides for all
        reasons = []
        for path in reversed(candidates):
            problems = [problem for problem in _gather_objects(self._check(path)) if problem]
            if not problems:
                return path
            reasons.append(problems[0])
            log(f"resume: skipping {path}: {problems[0]}")
        if reasons:
            raise CheckpointError(f"no loadable checkpoint in {self.root}: " + "; ".join(reasons))
        return None

    def _check(self, path: Path) -> str | None:
        """Why this rank cannot load ``path`` (None when every file it needs verifies)."""
        try:
            manifest = read_manifest(path)
            for name in self._files_needed(manifest):
                verify_file(path / name, manifest)
        except CheckpointError as error:
            return str(error)
        return None

    def _files_needed(self, manifest: Mapping[str, Any]) -> list[str]:
        saved_world = int(manifest["world_size"])
        if saved_world == self.info.world_size:
            ranks = [self.info.rank]
            names = [_part_name("rank", self.info.rank, saved_world)]
        else:
            ranks, names = self._overlapping_ranks(saved_world), []
        return [_SHARED, *names, *(_part_name("centres", r, saved_world) for r in ranks)]

    def _overlapping_ranks(self, saved_world: int) -> list[int]:
        start, end = self.pfc.class_start, self.pfc.class_start + self.pfc.num_local
        overlapping = []
        for saved_rank in range(saved_world):
            saved_start, saved_num = shard_range(self.pfc.num_classes, saved_rank, saved_world)
            if max(start, saved_start) < min(end, saved_start + saved_num):
                overlapping.append(saved_rank)
        return overlapping

    def load(self, path: Path) -> LoadedCheckpoint:
        """Load every component from ``path`` (re-sharding the centres if the world size changed)."""
        manifest = read_manifest(path)
        if manifest["num_classes"] != self.pfc.num_classes:
            raise CheckpointError(
                f"checkpoint {path} has num_classes={manifest['num_classes']}, this job has {self.pfc.num_classes} "
                "(data.path / data.num_classes)"
            )
        saved_world = int(manifest["world_size"])
        differing = _differing_fields(manifest.get("config", {}), self.config)
        shared = _load(path / _SHARED, manifest)
        for name, component in self.shared.items():
            _load_component(component, shared.get(name), path / _SHARED, name, differing)
        resharded = saved_world != self.info.world_size
        if resharded:
            centres_state = self._reshard(path, manifest)
        else:
            centres_path = path / _part_name("centres", self.info.rank, saved_world)
            centres_state = _load(centres_path, manifest)["state"]
            per_rank_path = path / _part_name("rank", self.info.rank, saved_world)
            per_rank = _load(per_rank_path, manifest)
            for name, component in self.per_rank.items():
                _load_component(component, per_rank.get(name), per_rank_path, name, differing)
        _check_shapes(self.pfc.state_dict(), centres_state, path / _part_name("centres", 0, saved_world), "centres",
                      differing)
        self.pfc.load_state_dict(centres_state)
        return LoadedCheckpoint(path, manifest, resharded)

    def _reshard(self, path: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """This rank's state assembled from the saved shards overlapping its class range."""
        pfc, saved_world = self.pfc, int(manifest["world_size"])
        start, end = pfc.class_start, pfc.class_start + pfc.num_local
        per_class = pfc.sub_centers  # rows per class: a class's sub-centres move together
        template = pfc.state_dict()
        row_keys = [k for k, v in template.items()
                    if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == pfc.num_local * per_class]
        rows: dict[str, list[torch.Tensor]] = {key: [] for key in row_keys}
        extra_state = None
        for saved_rank in self._overlapping_ranks(saved_world):
            saved_start, saved_num = shard_range(pfc.num_classes, saved_rank, saved_world)
            piece_path = path / _part_name("centres", saved_rank, saved_world)
            piece = _load(piece_path, manifest, mmap=True)
            if piece["class_start"] != saved_start or piece["num_local"] != saved_num:
                raise CheckpointError(f"{piece_path}: covers an unexpected class range")
            saved_per_class = int(piece["state"]["_extra_state"].get("sub_centers", 1))
            if saved_per_class != per_class:
                raise CheckpointError(
                    f"{piece_path}: saved with loss.sub_centers={saved_per_class}, this job has {per_class}"
                )
            lo, hi = max(start, saved_start), min(end, saved_start + saved_num)
            for key in row_keys:
                rows[key].append(piece["state"][key][(lo - saved_start) * per_class : (hi - saved_start) * per_class].clone())
            extra_state = piece["state"]["_extra_state"]
        state = {key: torch.cat(parts) for key, parts in rows.items()}
        # Replicated (non-row) state such as the step count and margin statistics: equal on every saved rank.
        state["_extra_state"] = {**extra_state, **{k: template["_extra_state"][k] for k in ("class_start", "num_local")}}
        return state


def read_centres(path: Path) -> tuple[torch.Tensor, int]:
    """All class centres of checkpoint ``path`` as ``[C, K, D]`` fp32 (K sub-centres per class), and K.

    Every shard file is verified against the manifest; shards are joined in class order.
    """
    manifest = read_manifest(path)
    saved_world, num_classes = int(manifest["world_size"]), int(manifest["num_classes"])
    pieces, sub_centers = [], None
    for rank in range(saved_world):
        piece_path = path / _part_name("centres", rank, saved_world)
        piece = _load(piece_path, manifest, mmap=True)
        if piece["class_start"] != shard_range(num_classes, rank, saved_world)[0]:
            raise CheckpointError(f"{piece_path}: covers an unexpected class range")
        per_class = int(piece["state"]["_extra_state"].get("sub_centers", 1))
        if sub_centers not in (None, per_class):
            raise CheckpointError(f"{piece_path}: {per_class} sub-centres per class, rank 0's shard has {sub_centers}")
        sub_centers = per_class
        pieces.append(piece["state"]["weight"].float().view(piece["num_local"], per_class, -1))
    centres = torch.cat(pieces)
    if centres.shape[0] != num_classes:
        raise CheckpointError(f"{path}: centre shards hold {centres.shape[0]} classes, the manifest says {num_classes}")
    return centres, int(sub_centers)


def _load_component(component: Stateful, state: Any, path: Path, name: str, differing: str) -> None:
    if state is None:
        raise CheckpointError(f"{path}: has no '{name}' component (written by a job without it, e.g. without "
                              f"train.ema_decay); {differing}")
    if isinstance(component, torch.nn.Module):
        _check_shapes(component.state_dict(), state, path, name, differing)
    try:
        component.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot load '{name}' ({error}); {differing}") from None


def _check_shapes(ours: Mapping[str, Any], saved: Mapping[str, Any], path: Path, name: str, differing: str) -> None:
    """Name the checkpoint, the tensor and the config fields behind a shape mismatch."""
    for key, tensor in ours.items():
        other = saved.get(key)
        if isinstance(tensor, torch.Tensor) and isinstance(other, torch.Tensor) and tensor.shape != other.shape:
            raise CheckpointError(
                f"{path}: tensor '{name}.{key}' has shape {tuple(other.shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} in this job; {differing}"
            )


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differing_fields(saved: Mapping[str, Any], ours: Mapping[str, Any]) -> str:
    """The model/loss config fields that differ between the checkpoint and this job, for error messages."""
    saved_flat, ours_flat = flatten(saved), flatten(ours)
    fields = [f"{key} (checkpoint {saved_flat.get(key)!r}, this job {ours_flat.get(key)!r})"
              for key in sorted(set(saved_flat) | set(ours_flat))
              if key.startswith(("model.", "loss.")) and saved_flat.get(key) != ours_flat.get(key)]
    return "config fields that differ: " + ", ".join(fields) if fields else "no model/loss config field differs"


def _gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
