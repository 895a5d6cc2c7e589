"""DALI pipeline on CPU over InsightFace-layout RecordIO (header and identity records included), beyond
the contract shared with the PyTorch loader (test_loader_contract.py): its index files and plan order."""

from __future__ import annotations

import os

import numpy as np
import pytest
from data.rec_fixtures import MULTIPART_INDEX, read_index, write_dataset

from partialfc.data.dataset import RecordDataset
from partialfc.data.loaders import LoaderParams, dali_index
from partialfc.data.loaders.dali_index import ensure_image_index, write_batch_index
from partialfc.models import InputConfig

try:
    from nvidia.dali import fn, pipeline_def, types

    from partialfc.data.loaders.dali import DaliLoader
except ImportError as err:  # CI installs DALI; a bare dev machine may not have it
    print(f"DALI tests skipped: nvidia.dali cannot be imported ({err})")
    pytest.skip(f"nvidia.dali cannot be imported: {err}", allow_module_level=True)

BATCH = 16


def test_fixture_has_header_identity_and_multipart_records(one_file):
    reader = one_file.reader(0)
    assert one_file.layout == "insightface"
    assert len(reader) == one_file.num_images + one_file.num_classes + 1
    offset = int(one_file.image_offset[MULTIPART_INDEX])
    assert int(reader.words()[offset // 4 + 1]) >> 29 == 1, "image 5 should be a multi-part record"


def test_same_plan_as_torch_loader(two_shards):
    """Both backends read the same images in the same batches; DALI returns them in file order."""
    loader = DaliLoader(two_shards, LoaderParams(BATCH, InputConfig(), rank=1, world_size=2, seed=11), num_threads=2)
    plan = loader.plan(0)
    for b, (images, _) in enumerate(loader):
        ids = [read_index(im.numpy())[0] for im in images]
        assert ids == sorted(plan[b].tolist())


def test_batch_index_bounds_each_read_to_its_repetition(two_shards, tmp_path):
    plan = np.arange(2 * BATCH).reshape(2, BATCH)  # batch 0 starts at image 0: shard edge clashes
    index = write_batch_index(two_shards, plan, tmp_path / "b.idx")
    assert index.paths == [str(s.rec_path) for s in two_shards.shards] * 2
    assert index.listed.shape == (2, BATCH + index.extra) and index.extra == 4
    for j in range(2):
        assert np.array_equal(index.listed[j][index.keep[j]], plan[j])
    lines = np.loadtxt(index.index_path, dtype=np.int64)
    assert np.all(np.diff(lines[:, 1]) > 0)


def _read_static(ds, index, shard_id, num_shards):
    @pipeline_def(batch_size=8, num_threads=2, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.mxnet(
            path=[str(s.rec_path) for s in ds.shards],
            index_path=[str(index)],
            shard_id=shard_id,
            num_shards=num_shards,
            name="R",
            pad_last_batch=False,
        )
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), fn.cast(labels[0], dtype=types.INT64)

    p = pipe()
    p.build()
    total = p.epoch_size("R")
    n = total * (shard_id + 1) // num_shards - total * shard_id // num_shards  # DALI's shard bounds
    ids, labels = [], []
    while len(ids) < n:
        images, lab = p.run()
        for k in range(len(images)):
            ids.append(read_index(np.array(images[k]))[0])
            labels.append(int(np.array(lab[k])))
    return ids[:n], labels[:n]


def test_static_image_index_lets_plain_dali_read_every_image(two_shards):
    index = ensure_image_index(two_shards)
    assert index.parent == two_shards.shards[0].rec_path.parent
    assert len(index.read_text().splitlines()) == two_shards.num_images
    ids, labels = [], []
    for shard_id in range(2):
        i, lab = _read_static(two_shards, index, shard_id, 2)
        ids += i
        labels += lab
    assert ids == list(range(two_shards.num_images))
    assert np.array_equal(labels, two_shards.labels)


def test_static_image_index_is_reused_refreshed_and_cached(tmp_path, monkeypatch):
    path, _ = write_dataset(tmp_path / "ds", num_ids=8, seed=3)
    ds = RecordDataset(path)
    index = ensure_image_index(ds)
    mtime = index.stat().st_mtime_ns
    assert ensure_image_index(ds) == index and index.stat().st_mtime_ns == mtime
    os.utime(ds.shards[0].rec_path, ns=(1, 1))  # shard changed: the index is stale
    assert ensure_image_index(RecordDataset(path)) == index and index.stat().st_mtime_ns != mtime
    index.unlink()
    data_dir = ds.shards[0].rec_path.parent
    real_write = dali_index._write_static

    def read_only_data_dir(dataset, path, sidecar, stamp):
        if path.parent == data_dir:  # what a read-only mount answers (chmod does not stop root)
            raise PermissionError(13, "Permission denied", str(path))
        real_write(dataset, path, sidecar, stamp)

    monkeypatch.setattr(dali_index, "_write_static", read_only_data_dir)
    cached = ensure_image_index(ds, cache_dir=tmp_path / "cache")
    assert cached.parent == tmp_path / "cache"
    assert len(cached.read_text().splitlines()) == ds.num_images
    assert not index.exists()
