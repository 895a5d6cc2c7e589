"""DALI input pipeline over the original RecordIO files: decode, flip, normalise, exact resume.

One code path for GPU and CPU: with ``device_id`` set, JPEGs are decoded by nvJPEG
(``device="mixed"``) and the batch stays on that GPU; with ``device_id=None`` everything runs on
CPU threads (tests, CPU-only machines).

Shuffling: DALI's ``random_shuffle`` only mixes inside a small buffer, and it ignores the order of
index lines (it sorts offsets), so on an identity-sorted ``.rec`` neither gives mixed batches.
Instead every epoch follows the plan of :mod:`partialfc.data.loaders.plan` (a global permutation,
remainder dropped so all ranks run the same number of equal batches), and each rank gets its own
index in which batch ``j`` is placed in the ``j``-th repetition of the shard list
(:func:`partialfc.data.loaders.dali_index.write_batch_index`). A batch is therefore a uniformly random
subset of the dataset, each image is read at most once per epoch, and nothing is rewritten.

Resume: the pipeline is built with ``enable_checkpointing=True``; :meth:`DaliLoader.state_dict`
holds the epoch, the number of batches already consumed and DALI's checkpoint (reader position and
the state of the flip generator), and a loader restored from it yields the same next batches bit
for bit.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from partialfc.data.dataset import RecordDataset, RecordDecodeError
from partialfc.data.loaders.dali_index import BatchIndex, write_batch_index
from partialfc.data.loaders.plan import LoaderParams, PlannedLoader, Stream, check_state, stream_seed
from partialfc.models.input_config import InputConfig

_READER = "Reader"


@pipeline_def(enable_checkpointing=True)
def _face_pipeline(paths: list[str], index_path: str, gpu: bool, flip: bool, input_config: InputConfig):
    """Read records, decode to RGB, mirror at random, normalise to CHW float32; labels to int64."""
    jpegs, labels = fn.readers.mxnet(
        path=paths,
        index_path=[index_path],
        name=_READER,
        random_shuffle=False,
        dont_use_mmap=False,
    )
    images = fn.decoders.image(
        jpegs, device="mixed" if gpu else "cpu", output_type=getattr(types, input_config.channel_order)
    )
    images = fn.crop_mirror_normalize(
        images,
        dtype=types.DALIDataType.FLOAT,
        output_layout="CHW",
        mean=list(input_config.mean),
        std=list(input_config.std),
        mirror=fn.random.coin_flip(probability=0.5) if flip else 0,
    )
    # Labels are float32 of shape [1] (flag 0) or [flag] (label arrays): the class id is element 0.
    labels = fn.cast(labels[0], dtype=types.DALIDataType.INT64)
    return images, labels.gpu() if gpu else labels


class DaliLoader(PlannedLoader):
    """Batches ``(images [B,3,H,W] float32, labels [B] int64)`` of one rank, via DALI.

    Every rank of a job must use the same ``params`` except the rank; then all ranks yield
    ``len(loader)`` batches per epoch, disjoint across ranks. Call ``set_epoch`` before iterating
    (as with ``DistributedSampler``); without it, the loader moves to the next epoch by itself
    after a complete pass. The ``.rec`` files must be memory-mappable (local disk or a file
    system with mmap): DALI maps the unlisted bytes between two planned records instead of
    copying them.
    """

    backend = "dali"

    def __init__(
        self,
        dataset: RecordDataset,
        params: LoaderParams,
        *,
        device_id: int | None = None,
        num_threads: int = 4,
        prefetch_queue_depth: int = 2,
        work_dir: str | Path | None = None,
    ) -> None:
        super().__init__(dataset, params)
        self.device_id = device_id
        self.num_threads = int(num_threads)
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self._work_dir = Path(tempfile.mkdtemp(prefix=f"partialfc-dali-rank{params.rank}-", dir=work_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._work_dir, True)
        self._checkpoint: bytes | None = None
        self._live: DALIGenericIterator | None = None

    def _open(self, index: BatchIndex) -> DALIGenericIterator:
        pipe = _face_pipeline(
            paths=index.paths,
            index_path=str(index.index_path),
            gpu=self.device_id is not None,
            flip=self.params.flip,
            input_config=self.params.input_config,
            batch_size=self.params.batch_size + index.extra,
            num_threads=self.num_threads,
            device_id=self.device_id,
            seed=stream_seed(self.params.seed, self.epoch, self.params.rank, Stream.DALI_FLIPS),
            prefetch_queue_depth=self.prefetch_queue_depth,
            checkpoint=self._checkpoint,
        )
        try:
            return DALIGenericIterator(  # starts the pipeline: prefetches the first batches
                pipe,
                ["images", "labels"],
                reader_name=_READER,
                last_batch_policy=LastBatchPolicy.DROP,
                auto_reset=False,
            )
        finally:
            index.index_path.unlink()  # DALI has read it while building the pipeline

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._begin_pass()
        self._park()
        index = write_batch_index(self.dataset, self.plan(self.epoch), self._work_dir / f"epoch{self.epoch}.idx")
        with self._naming_undecodable(index):
            iterator = self._open(index)
        self._live = iterator
        try:
            while self.position < len(self):
                with self._naming_undecodable(index):
                    out = next(iterator)[0]
                keep = index.keep[self.position]
                images, labels = out["images"], out["labels"]
                if keep[-1] - keep[0] == len(keep) - 1:
                    images, labels = images[keep[0] : keep[-1] + 1], labels[keep[0] : keep[-1] + 1]
                else:
                    where = torch.from_numpy(keep).to(images.device)
                    images, labels = images.index_select(0, where), labels.index_select(0, where)
                self.position += 1
                yield images, labels
            self._end_pass()
        finally:
            if self._live is iterator:
                self._park()

    @contextlib.contextmanager
    def _naming_undecodable(self, index: BatchIndex) -> Iterator[None]:
        """Turn DALI's decoder failure, which names no record ("nvImageCodec failure"), into a
        :class:`RecordDecodeError` naming the shard file and record key.

        The culprit is found by decoding, with the project's own reader, every record DALI may
        have been reading: the current batch and those it prefetches. Other failures pass unchanged.
        """
        try:
            yield
        except RuntimeError as err:
            self._live = None  # DALI: "Current pipeline object is no longer valid"
            last = min(len(self), self.position + self.prefetch_queue_depth + 1)
            for i in index.listed[self.position : last].ravel().tolist():
                try:
                    self.dataset.decode_image(i)
                except RecordDecodeError as undecodable:
                    raise undecodable from err
            raise

    def _park(self) -> None:
        """Drop the running pipeline, keeping its checkpoint so that the next ``__iter__`` resumes there."""
        if self._live is not None:
            if 0 < self.position < len(self):
                self._checkpoint = self._live.checkpoints()[0]
            self._live = None

    def _forget_position(self) -> None:
        self._live = None
        self._checkpoint = None

    def state_dict(self) -> dict[str, Any]:
        """Position after the batches consumed so far: epoch, batch and DALI's checkpoint."""
        checkpoint = None
        if 0 < self.position < len(self):
            checkpoint = self._live.checkpoints()[0] if self._live is not None else self._checkpoint
        return {**self._state(), "dali_checkpoint": checkpoint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuse one saved under a different sharding or data plan."""
        epoch, position = check_state(state, self.backend, self)
        self._forget_position()
        self.epoch, self.position = epoch, position
        if 0 < position < len(self):
            if not state.get("dali_checkpoint"):
                raise ValueError(
                    f"rank {self.params.rank}: dali loader state is inside epoch {epoch} (batch {position}) "
                    f"but field 'dali_checkpoint' is empty"
                )
            self._checkpoint = state["dali_checkpoint"]

    def close(self) -> None:
        """Release the pipeline and remove the per-epoch index files."""
        self._forget_position()
        self._cleanup()
