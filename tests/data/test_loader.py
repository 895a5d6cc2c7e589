"""PyTorch fallback loader: the same contract as the DALI pipeline, plus the backend factory."""

from __future__ import annotations

import numpy as np
import pytest

from data import loader_contract as contract
from partialfc.data.loaders import LoaderParams, TorchLoader, build_loader, dali_available
from partialfc.data.loaders.plan import rank_batches
from partialfc.models import InputConfig

BATCH = 16


def make(ds, *, rank, world_size, seed, batch_size, flip=True, input_config=InputConfig(), num_workers=0):
    params = LoaderParams(batch_size, input_config, rank=rank, world_size=world_size, seed=seed, flip=flip)
    return TorchLoader(ds, params, num_workers=num_workers)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_equal_batches_and_each_image_once(one_file, world_size):
    contract.check_ranks(make, one_file, world_size, BATCH)


def test_two_shards(two_shards):
    assert len(two_shards.shards) == 2
    contract.check_ranks(make, two_shards, 2, BATCH)


def test_workers_match_in_process_decoding(one_file):
    inline = contract.run_epoch(make(one_file, rank=1, world_size=2, seed=4, batch_size=BATCH))
    forked = contract.run_epoch(make(one_file, rank=1, world_size=2, seed=4, batch_size=BATCH, num_workers=2))
    assert len(inline) == len(forked)
    for (xa, ya), (xb, yb) in zip(inline, forked):
        assert xa.equal(xb) and ya.equal(yb)


def test_normalises_as_the_input_config_says(one_file):
    contract.check_input_config(make, one_file, BATCH)


def test_batches_mix_identities(one_file):
    contract.check_mixing(make, one_file, BATCH)


def test_deterministic(one_file):
    contract.check_determinism(make, one_file, BATCH)


def test_exact_resume(one_file):
    contract.check_resume(make, one_file, BATCH, stop=3)


def test_plan_partitions_the_dataset():
    plans = [rank_batches(1000, 16, 3, r, seed=9, epoch=2, shuffle=True) for r in range(3)]
    ids = np.concatenate([p.ravel() for p in plans])
    assert all(p.shape == (20, 16) for p in plans)
    assert len(np.unique(ids)) == ids.size == 960
    ordered = rank_batches(1000, 16, 3, 1, seed=9, epoch=2, shuffle=False)
    assert np.array_equal(ordered[0], np.arange(16, 32))
    with pytest.raises(ValueError, match="not enough for one batch"):
        rank_batches(40, 16, 3, 0, seed=0, epoch=0, shuffle=True)


def test_factory(one_file):
    params = LoaderParams(BATCH, InputConfig())
    assert isinstance(build_loader(one_file, params, backend="torch"), TorchLoader)
    auto = build_loader(one_file, params, backend="auto")
    assert type(auto).__name__ == ("DaliLoader" if dali_available() else "TorchLoader")
    assert auto.params is params
    with pytest.raises(ValueError, match="backend"):
        build_loader(one_file, params, backend="tf")
