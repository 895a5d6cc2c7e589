"""Synthetic dataset: real InsightFace layout, deterministic bytes, learnable identities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partialfc.data.dataset import RecordDataset
from partialfc.data.image import decode_jpeg
from partialfc.data.synth import generate_synthetic_dataset, render
from partialfc.data.verification import VerificationSet


def test_layout_counts_and_pairs(tiny_synth):
    ds = RecordDataset(tiny_synth)
    assert ds.layout == "insightface"
    assert (ds.num_images, ds.num_classes, ds.image_size) == (48, 12, (112, 112))
    assert ds.class_sizes().tolist() == [4] * 12
    assert decode_jpeg(ds.read_image(0)).shape == (112, 112, 3)
    vs = VerificationSet(tiny_synth / "synth_val.bin")
    assert vs.num_pairs == 6 and int(vs.issame.sum()) == 3
    train = {ds.read_image(i) for i in range(len(ds))}
    assert not train & set(vs.bins)  # held-out identities only


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", 70, 4, seed=5, shards=2, holdout_identities=2, pairs=4, workers=1)
    b = generate_synthetic_dataset(tmp_path / "b", 70, 4, seed=5, shards=2, holdout_identities=2, pairs=4, workers=2)
    c = generate_synthetic_dataset(tmp_path / "c", 70, 4, seed=6, shards=2, holdout_identities=2, pairs=4, workers=1)
    files = _files(a)
    assert sorted(str(p) for p in files if len(p.parts) == 1) == [
        "property",
        "synth_val.bin",
        "train-00000-of-00002.idx",
        "train-00000-of-00002.rec",
        "train-00001-of-00002.idx",
        "train-00001-of-00002.rec",
    ]
    assert files == _files(b)
    assert files[Path("property")] == _files(c)[Path("property")]
    assert files != _files(c)
    ds = RecordDataset(a)
    assert (ds.num_images, ds.num_classes, len(ds.shards)) == (280, 70, 2)
    # physically shuffled: the first images do not all belong to one identity
    assert len(set(ds.labels[:8].tolist())) > 1


def _features(images):
    small = images.reshape(len(images), 14, 8, 14, 8, 3).mean(axis=(2, 4))
    return small.reshape(len(images), -1)


def test_identities_are_learnable_by_nearest_centroid():
    ids, per_id = 30, 6
    imgs = np.stack([render(11, i, j) for i in range(ids) for j in range(per_id)]).astype(np.float32)
    feats = _features(imgs).reshape(ids, per_id, -1)
    centroids = feats[:, :-1].mean(axis=1)
    queries = feats[:, -1]
    dist = ((queries[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = float((dist.argmin(1) == np.arange(ids)).mean())
    assert accuracy >= 0.9
    # but images of one identity are not copies of each other
    assert np.abs(imgs[0] - imgs[1]).mean() > 5


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="need --holdout-identities"):
        generate_synthetic_dataset(tmp_path, 2, 2, pairs=4)
    with pytest.raises(ValueError, match="at least one identity"):
        generate_synthetic_dataset(tmp_path, 0, 2)
