"""PyTorch fallback loader beyond the shared contract (test_loader_contract.py), the plan, the backend factory."""

from __future__ import annotations

import numpy as np
import pytest
from data.rec_fixtures import run_epoch

from partialfc.data.loaders import LoaderParams, TorchLoader, build_loader, dali_available
from partialfc.data.loaders.plan import rank_batches
from partialfc.models import InputConfig

BATCH = 16


def test_workers_match_in_process_decoding(one_file):
    params = LoaderParams(BATCH, InputConfig(), rank=1, world_size=2, seed=4)
    inline = run_epoch(TorchLoader(one_file, params, num_workers=0))
    forked = run_epoch(TorchLoader(one_file, params, num_workers=2))
    assert len(inline) == len(forked)
    for (xa, ya), (xb, yb) in zip(inline, forked):
        assert xa.equal(xb) and ya.equal(yb)


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
