"""Which images each rank reads in each epoch: the one plan that both loaders (DALI, PyTorch) follow.

:class:`LoaderParams` holds what every loader is built from; :class:`PlannedLoader` is the
epoch/position bookkeeping both backends share.

Every rank derives the same global order from ``(seed, epoch)`` alone, so no communication is
needed. The tail that does not fill a batch on every rank is dropped, so all ranks run the same
number of equally sized batches and collective calls in the training step never wait on a rank
that has run out of data. Global batch ``g`` goes to rank ``g % world_size``: with ``shuffle``
off, step ``s`` of all ranks together covers one contiguous slice of the dataset.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from partialfc.common.distributed import derive_seed
from partialfc.models.input_config import InputConfig


def batches_per_rank(num_images: int, batch_size: int, world_size: int) -> int:
    """Number of full batches every rank gets per epoch (the remainder is dropped globally)."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and world_size ({world_size}) must be positive")
    count = num_images // (batch_size * world_size)
    if count == 0:
        raise ValueError(
            f"dataset has {num_images} images: not enough for one batch of {batch_size} on each of {world_size} ranks"
        )
    return count


def rank_batches(
    num_images: int,
    batch_size: int,
    world_size: int,
    rank: int,
    seed: int,
    epoch: int,
    shuffle: bool,
) -> np.ndarray:
    """Image indices of every batch of ``rank`` in ``epoch``, shape ``[batches_per_rank, batch_size]``.

    The same arguments give the same plan on any machine (numpy's PCG64 stream from a
    SeedSequence of ``(seed, epoch)``); ranks of one job get disjoint batches.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed ({seed}) and epoch ({epoch}) must be non-negative")
    count = batches_per_rank(num_images, batch_size, world_size)
    used = count * batch_size * world_size
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_images)[:used]
    else:
        order = np.arange(used, dtype=np.int64)
    return order.reshape(count, world_size, batch_size)[:, rank].astype(np.int64)


class Stream(enum.IntEnum):
    """The loaders' random streams; each rank and epoch draws each from its own seed (:func:`stream_seed`)."""

    DALI_FLIPS = 0
    TORCH_FLIPS = 1
    TORCH_WORKERS = 2  # the DataLoader's worker base seed


def stream_seed(seed: int, epoch: int, rank: int, stream: Stream) -> int:
    """A 31-bit seed for one random stream of one rank in one epoch.

    Ranks and epochs must not share augmentation streams, and DALI takes only non-negative
    32-bit seeds.
    """
    return derive_seed(seed, epoch, rank, int(stream), bits=31)


def check_state(state: dict[str, Any], backend: str, loader: PlannedLoader) -> tuple[int, int]:
    """Validate a loader ``state_dict`` against ``loader``; returns the (epoch, batch) to continue at.

    A mid-epoch position means the same images only under the same plan: world size, rank,
    batch size, seed, shuffle and dataset size must all match, else ``ValueError`` names the field.
    At an epoch boundary only seed, shuffle and dataset size must match, so a job can restart on a
    different world size there.
    """
    params = loader.params
    where = f"rank {params.rank}: {backend} loader state"
    if state.get("backend") != backend:
        raise ValueError(f"{where}: field 'backend' is {state.get('backend')!r}, this loader is {backend!r}")
    for field in ("epoch", "batch", "num_batches", "world_size", "rank", "batch_size", "seed", "shuffle", "num_images"):
        if field not in state:
            raise ValueError(f"{where}: field {field!r} is missing")
    epoch, batch = int(state["epoch"]), int(state["batch"])
    if not 0 <= batch <= int(state["num_batches"]):
        raise ValueError(f"{where}: field 'batch' is {batch}, outside [0, {state['num_batches']}]")
    boundary = batch in (0, int(state["num_batches"]))
    expected = {"seed": params.seed, "shuffle": params.shuffle, "num_images": int(loader.dataset.num_images)}
    if not boundary:
        expected.update(world_size=params.world_size, rank=params.rank, batch_size=params.batch_size)
    for field, value in expected.items():
        if state[field] != value:
            hint = (
                f" (mid-epoch position, batch {batch}: resuming on another world size is only possible"
                " at an epoch boundary)"
                if field in ("world_size", "rank", "batch_size")
                else ""
            )
            raise ValueError(f"{where}: field {field!r} is {state[field]!r}, this loader has {value!r}{hint}")
    if batch == int(state["num_batches"]):
        return epoch + 1, 0
    return epoch, batch


@dataclass(frozen=True)
class LoaderParams:
    """What every loader backend is built from; all ranks of a job share it except ``rank``.

    ``batch_size`` is per rank; ``seed`` drives the shuffle and the flips; ``input_config`` is the
    backbone's (``model.input_config``), so images are normalised as the model expects.
    """

    batch_size: int
    input_config: InputConfig
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True
    flip: bool = True


class PlannedLoader(abc.ABC):
    """Epoch and position bookkeeping shared by the DALI and PyTorch loaders.

    The loader is inside epoch ``epoch`` after ``position`` batches; a complete pass moves it to
    the next epoch, and :meth:`set_epoch` jumps to another epoch's start (a no-op for the current
    one, so a trainer that calls it after :meth:`load_state_dict` keeps the restored position).
    """

    backend = ""

    def __init__(self, dataset: Any, params: LoaderParams) -> None:
        self.dataset = dataset
        self.params = params
        self._num_batches = batches_per_rank(dataset.num_images, params.batch_size, params.world_size)
        rank_batches(dataset.num_images, params.batch_size, params.world_size, params.rank, params.seed, 0, False)
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return self._num_batches

    @abc.abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches from the current position to the end of the epoch."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Epoch, position and the plan they belong to (a checkpoint's per-rank component)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuse one saved under a different sharding or data plan."""

    def plan(self, epoch: int) -> np.ndarray:
        """Image ids of this rank's batches in ``epoch`` (``[len(self), batch_size]``)."""
        p = self.params
        return rank_batches(self.dataset.num_images, p.batch_size, p.world_size, p.rank, p.seed, epoch, p.shuffle)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch, unless the loader is already inside that epoch."""
        if int(epoch) != self.epoch:
            self._forget_position()
            self.epoch = int(epoch)
            self.position = 0

    def _begin_pass(self) -> None:
        """Called by ``__iter__``: after a finished epoch, move to the next one."""
        if self.position >= self._num_batches:
            self._forget_position()
            self.epoch += 1
            self.position = 0

    def _end_pass(self) -> None:
        self._forget_position()
        self.epoch += 1
        self.position = 0

    def _forget_position(self) -> None:  # noqa: B027 (a hook: only DALI keeps state tied to the position)
        """Drop backend state tied to the current position (overridden by DALI)."""

    def _state(self) -> dict[str, Any]:
        p = self.params
        return {
            "backend": self.backend,
            "epoch": self.epoch,
            "batch": self.position,
            "num_batches": self._num_batches,
            "world_size": p.world_size,
            "rank": p.rank,
            "batch_size": p.batch_size,
            "seed": p.seed,
            "shuffle": p.shuffle,
            "flip": p.flip,
            "num_images": int(self.dataset.num_images),
        }
