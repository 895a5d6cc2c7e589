"""Properties every training loader backend must have: each test runs on DALI and on PyTorch.

The ``make`` fixture builds a loader of the backend under test from the plan arguments.
Images come from :mod:`data.rec_fixtures`, so each output image says which record it is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from data.rec_fixtures import read_index, run_epoch, write_dataset

from partialfc.data import LoaderParams, PlannedLoader, RecordDataset, RecordDecodeError, TorchLoader
from partialfc.data.image import decode_jpeg
from partialfc.models import InputConfig

BATCH = 16
Make = Callable[..., PlannedLoader]


@pytest.fixture(params=["torch", "dali"])
def make(request: pytest.FixtureRequest) -> Make:
    """``make(dataset, rank=, world_size=, seed=, batch_size=, flip=, input_config=)`` for one backend."""
    if request.param == "dali":
        dali = pytest.importorskip("partialfc.data.loaders.dali", reason="nvidia.dali cannot be imported")

    def build(
        ds: RecordDataset,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        batch_size: int = BATCH,
        flip: bool = True,
        input_config: InputConfig = InputConfig(),
    ) -> PlannedLoader:
        params = LoaderParams(batch_size, input_config, rank=rank, world_size=world_size, seed=seed, flip=flip)
        if request.param == "dali":
            return dali.DaliLoader(ds, params, device_id=None, num_threads=2)
        return TorchLoader(ds, params, num_workers=0)

    return build


def check_pixels(
    images: torch.Tensor, ids: np.ndarray, flips: list[bool], ds: RecordDataset, input_config: InputConfig
) -> None:
    """Each image is its record's native decode, mirrored when flipped, normalised as ``input_config``."""
    mean, std = np.array(input_config.mean, np.float32), np.array(input_config.std, np.float32)
    for i, flip, im in zip(ids, flips, images):
        native = decode_jpeg(ds.read_image(int(i))).astype(np.float32)
        if flip:
            native = native[:, ::-1]
        got = im.numpy().transpose(1, 2, 0) * std + mean
        assert np.abs(got - native).mean() < 1.0, f"pixels of image {i} differ from the native decode"


def test_normalises_as_the_input_config_says(make, one_file):
    """Per-channel mean and std come from the InputConfig the loader was given, channel by channel."""
    config = InputConfig(mean=(10.0, 120.0, 250.0), std=(255.0, 64.0, 2.0))
    images, _ = next(iter(make(one_file, input_config=config)))
    decoded = [read_index(im.numpy(), config) for im in images]
    check_pixels(images, np.array([i for i, _ in decoded]), [f for _, f in decoded], one_file, config)


@pytest.mark.parametrize("dataset, world_size", [("one_file", 2), ("one_file", 3), ("two_shards", 2)])
def test_ranks_get_equal_batches_and_each_image_once(make, request, dataset, world_size):
    """Equal counts and sizes on every rank, right labels and pixels, each image at most once."""
    ds, batch_size = request.getfixturevalue(dataset), BATCH
    assert len(ds.shards) == {"one_file": 1, "two_shards": 2}[dataset]
    seen: list[int] = []
    counts = []
    flipped = []
    for rank in range(world_size):
        loader = make(ds, rank=rank, world_size=world_size, seed=7, batch_size=batch_size)
        batches = run_epoch(loader)
        counts.append(len(batches))
        assert len(batches) == len(loader) == ds.num_images // (batch_size * world_size)
        for images, labels in batches:
            assert images.shape == (batch_size, 3, 112, 112) and images.dtype == torch.float32
            assert labels.shape == (batch_size,) and labels.dtype == torch.int64
            assert images.min() >= -1.0 and images.max() <= 1.0
            decoded = [read_index(im.numpy()) for im in images]
            ids = np.array([i for i, _ in decoded])
            assert np.array_equal(labels.numpy(), ds.labels[ids]), "labels differ from the native reader"
            flips = [flip for _, flip in decoded]
            check_pixels(images, ids, flips, ds, InputConfig())
            flipped.extend(flips)
            seen.extend(ids.tolist())
    assert len(set(counts)) == 1, f"ranks yield different batch counts: {counts}"
    used = counts[0] * batch_size * world_size
    assert len(seen) == len(set(seen)) == used, "an image was read twice in one epoch"
    assert 0.3 < np.mean(flipped) < 0.7, f"flip rate {np.mean(flipped):.2f}"


def test_batches_mix_identities(make, one_file):
    """Batches hold about as many identities as random batches, far more than file order gives."""
    ds, batch_size = one_file, BATCH
    loader = make(ds, rank=0, world_size=1, seed=1, batch_size=batch_size)
    distinct = [len(set(labels.tolist())) for _, labels in loader]
    n = len(distinct) * batch_size
    sorted_distinct = [len(set(ds.labels[i : i + batch_size].tolist())) for i in range(0, n, batch_size)]
    rng = np.random.default_rng(0)
    random_distinct = [len(set(rng.choice(ds.labels, batch_size, replace=False).tolist())) for _ in range(200)]
    assert np.mean(distinct) > 0.9 * np.mean(random_distinct), (distinct, np.mean(random_distinct))
    assert np.mean(distinct) > 2 * np.mean(sorted_distinct), (distinct, sorted_distinct)
    first = next(iter(make(ds, rank=0, world_size=1, seed=1, batch_size=batch_size, flip=False)))[1]
    assert not np.array_equal(first.numpy(), ds.labels[:batch_size])


def test_deterministic(make, one_file):
    """Same seed, same batches bit for bit; the next epoch and another seed differ."""
    ds, batch_size = one_file, BATCH
    a = make(ds, rank=1, world_size=2, seed=5, batch_size=batch_size)
    b = make(ds, rank=1, world_size=2, seed=5, batch_size=batch_size)
    first_a, first_b = run_epoch(a), run_epoch(b)
    for (xa, ya), (xb, yb) in zip(first_a, first_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    second = run_epoch(a)
    assert a.epoch == 2
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first_a, second))
    other = run_epoch(make(ds, rank=1, world_size=2, seed=6, batch_size=batch_size))
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first_a, other))


def test_exact_resume(make, one_file):
    """State saved after ``stop`` batches; a fresh loader continues with the very next batches."""
    ds, batch_size, stop = one_file, BATCH, 3
    reference = make(ds, rank=0, world_size=2, seed=3, batch_size=batch_size)
    reference.set_epoch(1)
    expected = run_epoch(reference) + run_epoch(reference)
    loader = make(ds, rank=0, world_size=2, seed=3, batch_size=batch_size)
    loader.set_epoch(1)
    for k, _ in enumerate(loader):
        if k + 1 == stop:
            state = loader.state_dict()
            break
    assert state["epoch"] == 1 and state["batch"] == stop
    restored = make(ds, rank=0, world_size=2, seed=3, batch_size=batch_size)
    restored.load_state_dict(state)
    restored.set_epoch(1)  # a trainer re-entering the epoch must not lose the position
    got = run_epoch(restored) + run_epoch(restored)
    assert len(got) == len(expected) - stop
    for (xe, ye), (xg, yg) in zip(expected[stop:], got):
        assert torch.equal(xe, xg) and torch.equal(ye, yg), "resumed batch differs"

    # The abandoned loader also resumes where it stopped, and a state from another world size is refused.
    again = run_epoch(loader)
    assert torch.equal(again[0][1], expected[stop][1])
    other = make(ds, rank=0, world_size=3, seed=3, batch_size=batch_size)
    try:
        other.load_state_dict(state)
    except ValueError as err:
        assert "world_size" in str(err)
    else:
        raise AssertionError("a mid-epoch state from world_size=2 was accepted by world_size=3")
    done = make(ds, rank=0, world_size=2, seed=3, batch_size=batch_size)
    done.set_epoch(4)
    run_epoch(done)
    other.load_state_dict(done.state_dict())  # epoch boundary: allowed
    assert other.epoch == 5 and other.position == 0


def test_state_roundtrip_through_torch_save(make, one_file, tmp_path):
    loader = make(one_file, seed=2)
    it = iter(loader)
    next(it)
    torch.save(loader.state_dict(), tmp_path / "s.pt")
    expected = next(it)
    restored = make(one_file, seed=2)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    got = next(iter(restored))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_undecodable_record_is_named_by_file_and_key(make, tmp_path):
    """DALI itself says only "nvImageCodec failure"; both backends name the shard file and record key."""
    path, _ = write_dataset(tmp_path, num_ids=20, seed=4, not_jpeg=37)
    ds = RecordDataset(path)
    rec, key = ds.shards[0].rec_path, int(ds.image_key[37])
    with pytest.raises(
        RecordDecodeError, match=rf"^{rec}: record key {key} at offset \d+ \(image 37\): not a JPEG"
    ) as err:
        run_epoch(make(ds, batch_size=8))
    assert (err.value.rec_path, err.value.key) == (rec, key)
