"""PyTorch input pipeline: the fallback when DALI is not installed.

It follows the same epoch plan as the DALI loader (:mod:`partialfc.data.loaders.plan`), so it
gives the same guarantees: equal batch counts on all ranks, a global shuffle seeded by
``(seed, epoch)``, seeded flips, and a position that resumes exactly. One DataLoader item is one
whole batch, decoded by a worker into shared memory, which keeps inter-process traffic to one
tensor per batch. Workers are fork-safe: the record readers map their files again in each process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from partialfc.data.dataset import RecordDataset
from partialfc.data.loaders.plan import LoaderParams, PlannedLoader, Stream, check_state, stream_seed
from partialfc.models.input_config import InputConfig


class _EpochBatches(Dataset):
    """Item ``b`` is batch ``b`` of one rank's epoch: decoded, flipped, normalised, in shared memory."""

    def __init__(self, dataset: RecordDataset, plan: np.ndarray, flips: np.ndarray, input_config: InputConfig) -> None:
        self.dataset = dataset
        self.plan = plan
        self.flips = flips
        self.input_config = input_config

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, flips = self.plan[b], self.flips[b]
        first = self.dataset.decode_image(int(ids[0]))
        images = torch.empty((len(ids), 3, *first.shape[:2]), dtype=torch.float32)
        if torch.utils.data.get_worker_info() is not None:
            images.share_memory_()  # filled in place, so the hand-over to the trainer copies nothing
        for k, i in enumerate(ids.tolist()):
            image = first if k == 0 else self.dataset.decode_image(i)
            if image.shape != first.shape:
                raise ValueError(
                    f"{self.dataset.describe(i)} is {image.shape}, {self.dataset.describe(int(ids[0]))} of the same "
                    f"batch is {first.shape}; images must share one size"
                )
            # One image at a time stays in cache; the mirrored view is read in the same pass.
            self.input_config.normalize((image[:, ::-1] if flips[k] else image)[None], out=images[k : k + 1])
        return images, torch.from_numpy(self.dataset.labels[ids])


def end_on_the_trainers_sigterm(worker_id: int) -> None:
    """A decoder process ends on SIGTERM from its trainer only.

    torchrun signals a training worker's whole process group; the trainer answers SIGTERM by saving a
    checkpoint at its next log step, which needs its decoders, so theirs must not end them. But the
    trainer itself stops its decoders with SIGTERM when it exits with them still running
    (multiprocessing's exit handler terminates, then joins, its daemon children): a decoder that
    ignored every SIGTERM would hang that join, and the trainer with it, until torchrun's SIGKILL
    minutes later. So SIGTERM stays blocked (the trainer's mask, inherited) and a thread takes each
    one with ``sigwaitinfo``, which names the sender: the trainer's ends the process, others are dropped.
    """
    trainer = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored signal is discarded before sigwaitinfo sees it

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="partialfc-decoder-sigterm", daemon=True).start()


class TorchLoader(PlannedLoader):
    """Batches ``(images [B,3,H,W] float32, labels [B] int64)`` of one rank, via a DataLoader.

    Same contract as :class:`partialfc.data.loaders.dali.DaliLoader`; ``num_workers`` processes
    decode whole batches (0 decodes in the calling process).
    """

    backend = "torch"

    def __init__(
        self,
        dataset: RecordDataset,
        params: LoaderParams,
        *,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        multiprocessing_context: str | None = None,
    ) -> None:
        super().__init__(dataset, params)
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.pin_memory = bool(pin_memory)
        self.multiprocessing_context = multiprocessing_context

    def flips(self, epoch: int) -> np.ndarray:
        """Which planned images of ``epoch`` are mirrored (``[len(self), batch_size]`` bool)."""
        p = self.params
        shape = (len(self), p.batch_size)
        if not p.flip:
            return np.zeros(shape, bool)
        return np.random.default_rng(stream_seed(p.seed, epoch, p.rank, Stream.TORCH_FLIPS)).random(shape) < 0.5

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._begin_pass()
        batches = _EpochBatches(self.dataset, self.plan(self.epoch), self.flips(self.epoch), self.params.input_config)
        workers = self.num_workers > 0
        p = self.params
        loader = DataLoader(
            batches,
            batch_size=None,
            sampler=range(self.position, len(self)),
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if workers else None,
            pin_memory=self.pin_memory,
            multiprocessing_context=self.multiprocessing_context if workers else None,
            worker_init_fn=end_on_the_trainers_sigterm if workers else None,
            # Its own generator: the workers' base seed must not be drawn from the global RNG, whose
            # stream (dropout, user code) a resume restores and this would shift.
            generator=torch.Generator().manual_seed(stream_seed(p.seed, self.epoch, p.rank, Stream.TORCH_WORKERS)),
        )
        for images, labels in loader:
            self.position += 1
            yield images, labels
        self._end_pass()

    def state_dict(self) -> dict[str, Any]:
        """Position after the batches consumed so far (epoch and batch index)."""
        return self._state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuse one saved under a different sharding or data plan."""
        self.epoch, self.position = check_state(state, self.backend, self)
