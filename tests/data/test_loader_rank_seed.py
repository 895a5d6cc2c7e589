"""Each rank draws its own augmentation stream: ranks of one job never flip in lock-step.

The global shuffle is shared by every rank (it is what keeps their batches disjoint), but the
random streams behind the augmentation are per rank: seeded from ``(seed, epoch, rank, stream)``.
A stream seeded without the rank would mirror batch position k of every rank alike, so a job on W
ranks would see only one flip pattern per epoch where it should see W; the effective augmentation
shrinks with the world size and nothing in the loss shows it. The same rank, seed and epoch must
still give the same stream again, or a resumed run would augment differently from a straight one.
"""

from __future__ import annotations

import itertools

import numpy as np
from data.rec_fixtures import read_index, run_epoch

from partialfc.data import LoaderParams, TorchLoader
from partialfc.data.loaders.plan import Stream, stream_seed
from partialfc.models import InputConfig

SEED, EPOCH, WORLD = 5, 2, 4


def test_stream_seeds_differ_by_rank_and_repeat_for_the_same_rank():
    for stream in Stream:
        seeds = [stream_seed(SEED, EPOCH, rank, stream) for rank in range(WORLD)]
        assert len(set(seeds)) == WORLD, (stream.name, seeds)
        assert seeds == [stream_seed(SEED, EPOCH, rank, stream) for rank in range(WORLD)], stream.name
        assert all(0 <= seed < 2**31 for seed in seeds)  # DALI takes non-negative 32-bit seeds
    every = [stream_seed(SEED, EPOCH, rank, stream) for rank, stream in itertools.product(range(WORLD), Stream)]
    assert len(set(every)) == len(every)  # no two (rank, stream) pairs share a seed either


def loader(dataset, rank: int) -> TorchLoader:
    params = LoaderParams(16, InputConfig(), rank=rank, world_size=2, seed=SEED, flip=True)
    made = TorchLoader(dataset, params, num_workers=0)
    made.set_epoch(EPOCH)
    return made


def flips_seen(dataset, rank: int) -> np.ndarray:
    """Which images of one epoch of ``rank`` came out mirrored, read back from the pixels."""
    return np.array(
        [[read_index(image.numpy())[1] for image in images] for images, _ in run_epoch(loader(dataset, rank))]
    )


def test_two_ranks_with_one_seed_flip_differently_and_each_rank_alike_again(one_file):
    rank0, rank1 = flips_seen(one_file, 0), flips_seen(one_file, 1)
    assert rank0.shape == rank1.shape and rank0.size >= 64
    assert np.array_equal(rank0, loader(one_file, 0).flips(EPOCH))  # the planned flips are the ones applied
    assert np.array_equal(rank1, loader(one_file, 1).flips(EPOCH))
    assert not np.array_equal(rank0, rank1), "ranks 0 and 1 mirrored the same batch positions"
    assert 0.2 < np.mean(rank0 != rank1) < 0.8  # about half the positions differ: independent streams
    assert np.array_equal(flips_seen(one_file, 1), rank1)  # the same rank, seed and epoch: the same stream
