"""Checkpoints of named components: complete or absent, verifiable, re-shardable.

Layout of one checkpoint, ``<run>/checkpoints/step-00001234/``::

    trainer.pt                  shared components (identical on every rank: model, optimizer, progress,
                                the data epoch), written by rank 0
    centres-00001-of-00004.pt   rank 1's shard of the sharded component ``centres`` (Partial-FC: centres and
                                their optimizer state) with its class range; one such file set per sharded component
    rank-00001-of-00004.pt      rank 1's per-rank components (RNG states, data-loader position)
    meta.json                   the manifest, written last: format, step, world size, num_classes,
                                config hash, and the size and SHA-256 of every file

Every component is registered by name as a :class:`Component`: ``shared``, ``per_rank`` or
``sharded`` (it implements :class:`Sharded`: it says how its state is cut to a class range and how
pieces are joined), and ``optional`` when a checkpoint written before it existed may lack it (then
it keeps its initial state and the absence is logged). Every rank writes into ``step-….partial/``
and fsyncs; after a barrier rank 0 writes the manifest and renames the directory, so a directory
named ``step-…`` is always complete. Loading checks each file it reads against the manifest, so a
truncated or corrupted file is named instead of failing deep inside ``torch.load``;
:meth:`Checkpointer.newest_loadable` skips such checkpoints (every rank agrees) and falls back to
an older one. A job with another world size reads the shards overlapping its own class range
(memory-mapped, only the rows it needs) and joins them; per-rank components then do not apply.
A saved tensor whose shape differs from the job's is a :class:`CheckpointError` naming the
component and the key. Everything loads with ``torch.load(weights_only=True)``.

Manifest formats: 2 (this module) adds ``format``; 1 (no ``format`` field) kept the data epoch in
the manifest's ``epoch`` rather than in the shared component ``epoch``, and still loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, cast, runtime_checkable

import torch
import torch.distributed as dist

from partialfc.common.distributed import DistInfo, barrier, shard_range
from partialfc.config import flatten
from partialfc.core.partial_fc import PartialFC

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "Component",
    "LoadedCheckpoint",
    "Sharded",
    "Stateful",
    "find_latest_checkpoint",
]

FORMAT = 2
_PREFIX = "step-"
_SHARED = "trainer.pt"
_PER_RANK = "rank"
_MANIFEST = "meta.json"
_HASH_BLOCK = 8 << 20
_EPOCH = "epoch"  # the shared component that format 1 kept as the manifest field of the same name


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


@runtime_checkable
class Sharded(Stateful, Protocol):
    """A component split over ranks by contiguous class ranges (:class:`~partialfc.PartialFC`)."""

    num_classes: int
    class_start: int
    num_local: int

    def sharded_state_dict(self) -> Mapping[str, Any]:
        """This rank's state; refuses state it could not cut or join."""
        ...

    def cut_state(self, state: Mapping[str, Any], start: int, stop: int) -> Mapping[str, Any]:
        """The part of a saved shard's state for global classes ``[start, stop)``."""
        ...

    def join_states(self, parts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        """One state from parts of consecutive class ranges, in class order."""
        ...


@dataclass(frozen=True)
class Component:
    """A checkpointed object and where its state lives."""

    state: Stateful
    placement: Literal["shared", "per_rank", "sharded"]
    optional: bool = False
    """Absent from a checkpoint (written before it existed): keep the initial state and log it."""


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
        self.error: OSError | None = None  # torch.save's zip writer reports it only as a RuntimeError

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as error:
            self.error = error
            raise


def _save_synced(obj: Any, path: Path) -> dict[str, Any]:
    """torch.save + fsync; returns the file's manifest entry (size, SHA-256)."""
    writer = None
    try:
        with open(path, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(obj, cast(IO[bytes], writer))  # a binary file object that hashes what passes through
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as raised:
        error = raised if isinstance(raised, OSError) else writer.error if writer else None
        if error is None:
            raise
        raise CheckpointError(
            f"cannot write checkpoint file {path}: {error.strerror or error} ({_free_space(path.parent)})"
        ) from error
    return {"bytes": writer.size, "sha256": writer.sha256.hexdigest()}


def _free_space(directory: Path) -> str:
    """What an operator needs next to a failed write: how much room is left there."""
    try:
        return f"{shutil.disk_usage(directory).free / 2**30:.2f} GiB free on {directory}"
    except OSError:
        return f"free space on {directory} unknown"


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
    version = manifest.setdefault("format", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise CheckpointError(
            f"{manifest_path}: manifest format {version!r}; this partialfc reads formats 1 to "
            f"{FORMAT} (written by a newer release?)"
        )
    missing = {"step", "world_size", "num_classes", *(["epoch"] if version == 1 else [])} - set(manifest)
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
            raise CheckpointError(
                f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or replaced)"
            )
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    if digest.hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 differs from the manifest (corrupted)")


def _load(path: Path, manifest: Mapping[str, Any], mmap: bool = False, verified: bool = False) -> Any:
    if not verified:
        verify_file(path, manifest)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


@dataclass
class LoadedCheckpoint:
    path: Path
    manifest: dict[str, Any]
    resharded: bool
    """True when the world size changed: sharded components were re-sharded and per-rank ones not loaded."""


class Checkpointer:
    """Saves and loads a registry of named :class:`Component` s.

    ``log`` takes what loading skips (a broken checkpoint, an absent optional component).
    ``step_counters`` name counters that must equal the checkpoint's step once it is loaded (the
    trainer's progress, PartialFC's step count): a disagreement means the components come from
    different steps. Every method is collective: all ranks call it together.
    """

    def __init__(
        self,
        root: Path,
        info: DistInfo,
        keep: int,
        components: Mapping[str, Component],
        *,
        config: Mapping[str, Any] | None = None,
        step_counters: Mapping[str, Callable[[], int]] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.root, self.info, self.keep, self.log = root, info, keep, log
        self.components = dict(components)
        self.config = dict(config or {})
        self.step_counters = dict(step_counters or {})
        self._verified: dict[Path, tuple[int, int]] = {}
        """Files newest_loadable hashed, with (size, mtime_ns) then: load() does not hash them again."""
        self.sharded: dict[str, Sharded] = {}
        for name, c in self.components.items():
            if c.placement == "sharded":
                if not isinstance(c.state, Sharded):
                    raise TypeError(f"Checkpointer: component '{name}' is 'sharded' but has no shard contract")
                self.sharded[name] = c.state
        if _PER_RANK in self.sharded:
            raise ValueError(f"Checkpointer: a sharded component may not be named '{_PER_RANK}' (its files' prefix)")
        class_counts = {component.num_classes for component in self.sharded.values()}
        if len(class_counts) > 1:
            raise ValueError(f"Checkpointer: sharded components disagree on num_classes: {sorted(class_counts)}")
        self.num_classes = class_counts.pop() if class_counts else 0

    def _placed(self, placement: str) -> dict[str, Component]:
        return {name: c for name, c in self.components.items() if c.placement == placement}

    # ------------------------------------------------------------------ save
    def save(self, step: int) -> Path:
        """Write the checkpoint of ``step``; returns its directory. Rotation keeps the newest ``keep``."""
        info = self.info
        final = _step_dir(self.root, step)
        partial = final.with_name(final.name + ".partial")
        if info.is_main:
            shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
            try:
                partial.mkdir(parents=True)
            except OSError as mkdir_error:
                raise CheckpointError(
                    f"cannot create checkpoint directory {partial}: {mkdir_error.strerror}"
                ) from mkdir_error
        barrier()
        files: dict[str, Any] = {}
        error, entries = None, {}
        try:
            for name, sharded in self.sharded.items():
                try:
                    state = sharded.sharded_state_dict()
                except ValueError as refused:
                    raise CheckpointError(f"checkpoint {final}: cannot save '{name}': {refused}") from None
                files[_part_name(name, info.rank, info.world_size)] = {
                    "class_start": sharded.class_start,
                    "num_local": sharded.num_local,
                    "state": state,
                }
            files[_part_name(_PER_RANK, info.rank, info.world_size)] = {
                name: c.state.state_dict() for name, c in self._placed("per_rank").items()
            }
            if info.is_main:
                files[_SHARED] = {name: c.state.state_dict() for name, c in self._placed("shared").items()}
            entries = {name: _save_synced(obj, partial / name) for name, obj in files.items()}
        except CheckpointError as raised:
            error = raised
        all_entries = _gather_objects((str(error) if error else None, entries))
        failures = [message for message, _ in all_entries if message]
        if failures:
            if info.is_main:  # give back the room a partial save took (a full disk); the complete ones stay
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"checkpoint {final} not saved: {failures[0]}")
        if info.is_main:
            manifest = {
                "format": FORMAT,
                "step": step,
                "world_size": info.world_size,
                "num_classes": self.num_classes,
                "config": self.config,
                "config_hash": config_hash(self.config),
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

    def check_room(self, path: Path) -> None:
        """Fail at start, on every rank, when the checkpoint directory lacks the room for one more save of
        the size of ``path``: else each restart would train until its next save and fail there again.
        Rotation removes old checkpoints only after a save completed, so one full save must fit."""
        problem = None
        if self.info.is_main:
            need = sum(entry["bytes"] for entry in read_manifest(path)["files"].values())
            free = shutil.disk_usage(self.root).free
            if free < need:
                problem = (
                    f"no room for the next checkpoint: {_free_space(self.root)}, a checkpoint of this run takes "
                    f"{need / 2**30:.2f} GiB ({path.name}); free space or lower checkpoint.keep"
                )
        problem = _gather_objects(problem)[0]
        if problem:
            raise CheckpointError(problem)

    # ------------------------------------------------------------------ load
    def newest_loadable(self) -> Path | None:
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
            self.log(f"resume: skipping {path}: {problems[0]}")
        if reasons:
            raise CheckpointError(f"no loadable checkpoint in {self.root}: " + "; ".join(reasons))
        return None

    def _check(self, path: Path) -> str | None:
        """Why this rank cannot load ``path`` (None when every file it needs verifies)."""
        try:
            manifest = read_manifest(path)
            for name in self._files_needed(manifest):
                verify_file(path / name, manifest)
                stat = (path / name).stat()
                self._verified[path / name] = (stat.st_size, stat.st_mtime_ns)
        except CheckpointError as error:
            return str(error)
        return None

    def _files_needed(self, manifest: Mapping[str, Any]) -> list[str]:
        saved_world = int(manifest["world_size"])
        same_world = saved_world == self.info.world_size
        names = [_SHARED, *([_part_name(_PER_RANK, self.info.rank, saved_world)] if same_world else [])]
        for name, sharded in self.sharded.items():
            if not self._absent_optional(name, manifest, saved_world):
                ranks = [self.info.rank] if same_world else _overlapping_ranks(sharded, saved_world)
                names += [_part_name(name, r, saved_world) for r in ranks]
        return names

    def _absent_optional(self, name: str, manifest: Mapping[str, Any], saved_world: int) -> bool:
        """Whether the sharded component ``name`` is optional and the checkpoint has no shard of it."""
        return self.components[name].optional and _part_name(name, 0, saved_world) not in manifest.get("files", {})

    def load(self, path: Path) -> LoadedCheckpoint:
        """Load every component from ``path`` (re-sharding sharded ones if the world size changed)."""
        manifest = read_manifest(path)
        saved_world = int(manifest["world_size"])
        present = [name for name in self.sharded if not self._absent_optional(name, manifest, saved_world)]
        if present and manifest["num_classes"] != self.num_classes:
            raise CheckpointError(
                f"checkpoint {path} has num_classes={manifest['num_classes']}, this job has {self.num_classes} "
                "(data.path / data.num_classes)"
            )
        resharded = saved_world != self.info.world_size
        differing = _differing_fields(manifest.get("config", {}), self.config)
        shared = self._read(path / _SHARED, manifest)
        if manifest["format"] == 1:
            shared.setdefault(_EPOCH, {"epoch": int(manifest["epoch"])})
        self._load_all("shared", shared, path / _SHARED, differing)
        if not resharded:
            per_rank_path = path / _part_name(_PER_RANK, self.info.rank, saved_world)
            self._load_all("per_rank", self._read(per_rank_path, manifest), per_rank_path, differing)
        for name, sharded in self.sharded.items():
            if self._absent_optional(name, manifest, saved_world):
                self.log(f"{path}: no '{name}' component (written before it existed); it keeps its initial state")
                continue
            own = path / _part_name(name, self.info.rank, saved_world)
            if resharded:
                state, own = self._reshard(path, manifest, name, sharded), path / f"{name}-*-of-{saved_world:05d}.pt"
            else:
                state = self._read(own, manifest)["state"]
            _load_component(sharded, state, own, name, differing)
        self._check_step_counters(path, int(manifest["step"]))
        return LoadedCheckpoint(path, manifest, resharded)

    def _read(self, path: Path, manifest: Mapping[str, Any], mmap: bool = False) -> Any:
        """A checkpoint file, verified against the manifest unless newest_loadable just did (unchanged since)."""
        try:
            stat = path.stat()
            verified = self._verified.get(path) == (stat.st_size, stat.st_mtime_ns)
        except OSError:
            verified = False  # verify_file names the problem
        return _load(path, manifest, mmap=mmap, verified=verified)

    def _load_all(self, placement: str, saved: Mapping[str, Any], path: Path, differing: str) -> None:
        for name, component in self._placed(placement).items():
            if name not in saved and component.optional:
                self.log(f"{path}: no '{name}' component (written before it existed); it keeps its initial state")
                continue
            if name not in saved:
                raise CheckpointError(
                    f"{path}: has no '{name}' component (written by a job without it, e.g. "
                    f"without train.ema_decay); {differing}"
                )
            _load_component(component.state, saved[name], path, name, differing)

    def _reshard(self, path: Path, manifest: Mapping[str, Any], name: str, sharded: Sharded) -> Mapping[str, Any]:
        """This rank's state of ``name`` joined from the saved shards overlapping its class range."""
        saved_world = int(manifest["world_size"])
        start, end = sharded.class_start, sharded.class_start + sharded.num_local
        parts = []
        for saved_rank in _overlapping_ranks(sharded, saved_world):
            saved_start, saved_num = shard_range(sharded.num_classes, saved_rank, saved_world)
            piece_path = path / _part_name(name, saved_rank, saved_world)
            piece = self._read(piece_path, manifest, mmap=True)
            if piece["class_start"] != saved_start or piece["num_local"] != saved_num:
                raise CheckpointError(f"{piece_path}: covers an unexpected class range")
            try:
                parts.append(
                    sharded.cut_state(piece["state"], max(start, saved_start), min(end, saved_start + saved_num))
                )
            except (KeyError, ValueError) as error:
                raise CheckpointError(f"{piece_path}: cannot re-shard '{name}': {error}") from None
        try:
            return sharded.join_states(parts)
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot join the shards of '{name}': {error}") from None

    def _check_step_counters(self, path: Path, step: int) -> None:
        counts = {name: counter() for name, counter in self.step_counters.items()}
        if any(count != step for count in counts.values()):
            found = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise CheckpointError(f"{path}: step counters disagree: the checkpoint's step is {step}, {found}")


def _overlapping_ranks(sharded: Sharded, saved_world: int) -> list[int]:
    """Saved ranks whose class range overlaps this rank's range of ``sharded``."""
    start, end = sharded.class_start, sharded.class_start + sharded.num_local
    overlapping = []
    for saved_rank in range(saved_world):
        saved_start, saved_num = shard_range(sharded.num_classes, saved_rank, saved_world)
        if max(start, saved_start) < min(end, saved_start + saved_num):
            overlapping.append(saved_rank)
    return overlapping


def read_centres(path: Path, name: str = "centres") -> tuple[torch.Tensor, int]:
    """All class centres of checkpoint ``path`` as ``[C, K, D]`` fp32 (K sub-centres per class), and K.

    Every shard file of the component ``name`` is verified against the manifest; shards are joined
    in class order.
    """
    manifest = read_manifest(path)
    saved_world, num_classes = int(manifest["world_size"]), int(manifest["num_classes"])
    pieces: list[torch.Tensor] = []
    for rank in range(saved_world):
        piece_path = path / _part_name(name, rank, saved_world)
        piece = _load(piece_path, manifest, mmap=True)
        if piece["class_start"] != shard_range(num_classes, rank, saved_world)[0]:
            raise CheckpointError(f"{piece_path}: covers an unexpected class range")
        centres = PartialFC.class_centres(piece["state"])
        if pieces and centres.shape[1] != pieces[0].shape[1]:
            raise CheckpointError(
                f"{piece_path}: {centres.shape[1]} sub-centres per class, rank 0's shard has {pieces[0].shape[1]}"
            )
        pieces.append(centres)
    centres = torch.cat(pieces)
    if centres.shape[0] != num_classes:
        raise CheckpointError(f"{path}: centre shards hold {centres.shape[0]} classes, the manifest says {num_classes}")
    return centres, centres.shape[1]


def _load_component(component: Stateful, state: Any, path: Path, name: str, differing: str) -> None:
    _check_shapes(component.state_dict(), state, path, name, differing)
    try:
        component.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: cannot load '{name}' ({error}); {differing}") from None


def _check_shapes(ours: Any, saved: Any, path: Path, key: str, differing: str) -> None:
    """Name the checkpoint, the component's tensor and the config fields behind a shape mismatch."""
    if isinstance(ours, torch.Tensor) and isinstance(saved, torch.Tensor) and ours.shape != saved.shape:
        raise CheckpointError(
            f"{path}: tensor '{key}' has shape {tuple(saved.shape)} in the checkpoint, "
            f"{tuple(ours.shape)} in this job; {differing}"
        )
    if isinstance(ours, Mapping) and isinstance(saved, Mapping):
        for child in [child for child in ours if child in saved]:
            _check_shapes(ours[child], saved[child], path, f"{key}.{child}", differing)


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differing_fields(saved: Mapping[str, Any], ours: Mapping[str, Any]) -> str:
    """The model/loss config fields that differ between the checkpoint and this job, for error messages."""
    saved_flat, ours_flat = flatten(saved), flatten(ours)
    fields = [
        f"{key} (checkpoint {saved_flat.get(key)!r}, this job {ours_flat.get(key)!r})"
        for key in sorted(set(saved_flat) | set(ours_flat))
        if key.startswith(("model.", "loss.")) and saved_flat.get(key) != ours_flat.get(key)
    ]
    return "config fields that differ: " + ", ".join(fields) if fields else "no model/loss config field differs"


def _gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
