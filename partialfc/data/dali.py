"""DALI input pipeline over the original RecordIO files: decode, flip, normalise, exact resume.

One code path for GPU and CPU: with ``device_id`` set, JPEGs are decoded by nvJPEG
(``device="mixed"``) and the batch stays on that GPU; with ``device_id=None`` everything runs on
CPU threads (tests, CPU-only machines).

Shuffling: DALI's ``random_shuffle`` only mixes inside a small buffer, and it ignores the order of
index lines (it sorts offsets), so on an identity-sorted ``.rec`` neither gives mixed batches.
Instead every epoch follows the plan of :mod:`partialfc.data.sampler` (a global permutation,
remainder dropped so all ranks run the same number of equal batches), and each rank gets its own
index in which batch ``j`` is placed in the ``j``-th repetition of the shard list
(:func:`partialfc.data.image_index.write_batch_index`). A batch is therefore a uniformly random
subset of the dataset, each image is read at most once per epoch, and nothing is rewritten.

Resume: the pipeline is built with ``enable_checkpointing=True``; :meth:`DaliLoader.state_dict`
holds the epoch, the number of batches already consumed and DALI's checkpoint (reader position and
the state of the flip generator), and a loader restored from it yields the same next batches bit
for bit.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from partialfc.data.dataset import RecordDataset
from partialfc.data.image_index import BatchIndex, write_batch_index
from partialfc.data.sampler import batches_per_rank, check_state, rank_batches, stream_seed

_READER = "Reader"
_STATE_VERSION = 1


@pipeline_def(enable_checkpointing=True)
def _face_pipeline(paths: list[str], index_path: str, gpu: bool, flip: bool, mean: float, std: float):
    """Read records, decode to RGB, mirror at random, normalise to CHW float32; labels to int64."""
    jpegs, labels = fn.readers.mxnet(
        path=paths,
        index_path=[index_path],
        name=_READER,
        random_shuffle=False,
        dont_use_mmap=False,
    )
    images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
    images = fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[mean] * 3,
        std=[std] * 3,
        mirror=fn.random.coin_flip(probability=0.5) if flip else 0,
    )
    # Labels are float32 of shape [1] (flag 0) or [flag] (label arrays): the class id is element 0.
    labels = fn.cast(labels[0], dtype=types.INT64)
    return images, labels.gpu() if gpu else labels


class DaliLoader:
    """Batches ``(images [B,3,H,W] float32 in [-1,1], labels [B] int64)`` of one rank, via DALI.

    Every rank of a job must use the same ``seed``, ``batch_size`` and ``world_size``; then all
    ranks yield ``len(loader)`` batches per epoch, disjoint across ranks. Call :meth:`set_epoch`
    before iterating (as with ``DistributedSampler``); without it, the loader moves to the next
    epoch by itself after a complete pass.
    """

    def __init__(
        self,
        dataset: RecordDataset,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device_id: int | None = None,
        num_threads: int = 4,
        shuffle: bool = True,
        flip: bool = True,
        prefetch_queue_depth: int = 2,
        work_dir: str | Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.device_id = device_id
        self.num_threads = int(num_threads)
        self.shuffle = bool(shuffle)
        self.flip = bool(flip)
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self._num_batches = batches_per_rank(dataset.num_images, self.batch_size, self.world_size)
        rank_batches(dataset.num_images, self.batch_size, self.world_size, self.rank, self.seed, 0, False)
        self._work_dir = Path(tempfile.mkdtemp(prefix=f"partialfc-dali-rank{self.rank}-", dir=work_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._work_dir, True)
        self._epoch = 0
        self._position = 0
        self._checkpoint: bytes | None = None
        self._live: DALIGenericIterator | None = None

    def __len__(self) -> int:
        return self._num_batches

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch, unless the loader is already inside that epoch."""
        if epoch != self._epoch:
            self._close_live()
            self._epoch = int(epoch)
            self._position = 0
            self._checkpoint = None

    def plan(self, epoch: int) -> np.ndarray:
        """Image ids of this rank's batches in ``epoch`` (``[len(self), batch_size]``)."""
        return rank_batches(
            self.dataset.num_images, self.batch_size, self.world_size, self.rank, self.seed, epoch, self.shuffle
        )

    def _open(self) -> tuple[DALIGenericIterator, BatchIndex]:
        index = write_batch_index(self.dataset, self.plan(self._epoch), self._work_dir / f"epoch{self._epoch}.idx")
        pipe = _face_pipeline(
            paths=index.paths,
            index_path=str(index.index_path),
            gpu=self.device_id is not None,
            flip=self.flip,
            mean=127.5,
            std=127.5,
            batch_size=self.batch_size + index.extra,
            num_threads=self.num_threads,
            device_id=self.device_id,
            seed=stream_seed(self.seed, self._epoch, self.rank, 0),
            prefetch_queue_depth=self.prefetch_queue_depth,
            checkpoint=self._checkpoint,
        )
        iterator = DALIGenericIterator(
            pipe,
            ["images", "labels"],
            reader_name=_READER,
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=False,
        )
        index.index_path.unlink()  # DALI has read it while building the pipeline
        return iterator, index

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._position >= self._num_batches:
            self._epoch += 1
            self._position = 0
            self._checkpoint = None
        self._close_live()
        iterator, index = self._open()
        self._live = iterator
        try:
            while self._position < self._num_batches:
                out = next(iterator)[0]
                keep = index.keep[self._position]
                images, labels = out["images"], out["labels"]
                if keep[-1] - keep[0] == len(keep) - 1:
                    images, labels = images[keep[0] : keep[-1] + 1], labels[keep[0] : keep[-1] + 1]
                else:
                    where = torch.from_numpy(keep).to(images.device)
                    images, labels = images.index_select(0, where), labels.index_select(0, where)
                self._position += 1
                yield images, labels
            self._epoch += 1
            self._position = 0
            self._checkpoint = None
        finally:
            if self._live is iterator:
                self._close_live()

    def _close_live(self) -> None:
        """Drop the running pipeline, keeping its position so that the next ``__iter__`` resumes there."""
        if self._live is not None:
            if 0 < self._position < self._num_batches:
                self._checkpoint = self._live.checkpoints()[0]
            self._live = None

    def state_dict(self) -> dict[str, Any]:
        """Position after the batches consumed so far (epoch, batch, DALI checkpoint)."""
        checkpoint = self._checkpoint
        if self._live is not None and 0 < self._position < self._num_batches:
            checkpoint = self._live.checkpoints()[0]
        return {
            "backend": "dali",
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "batch": self._position,
            "world_size": self.world_size,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "flip": self.flip,
            "num_images": int(self.dataset.num_images),
            "num_batches": self._num_batches,
            "dali_checkpoint": checkpoint if 0 < self._position < self._num_batches else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuse one saved under a different sharding or data plan."""
        epoch, position = check_state(state, "dali", self)
        self._close_live()
        self._epoch, self._position = epoch, position
        self._checkpoint = state["dali_checkpoint"] if 0 < position < self._num_batches else None
        if 0 < self._position < self._num_batches and self._checkpoint is None:
            raise ValueError(
                f"rank {self.rank}: DALI loader state is inside epoch {self._epoch} (batch {self._position}) "
                f"but field 'dali_checkpoint' is empty"
            )

    def close(self) -> None:
        """Release the pipeline and remove the per-epoch index files."""
        self._close_live()
        self._cleanup()

