"""Sub-centre data cleaning: planted label noise is found and dropped, the cleaned index is an image
subset that RecordDataset opens and training accepts, and a subset whose records changed is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from training_run import REPO, run_training, train_args, training_env

from partialfc.data import RecordDataset
from partialfc.data.layout import DatasetError
from partialfc.data.loaders.dali_index import ensure_image_index
from partialfc.data.pack import pack_dataset
from partialfc.data.subset import write_subset

PLANTED = 24  # mislabelled images out of 960 (2.5%)


@pytest.fixture(scope="module")
def noisy_dataset(tiny_dataset, tmp_path_factory):
    """The tiny dataset repacked with PLANTED images moved to a random other class; and their indices."""
    with RecordDataset(tiny_dataset) as clean:
        images = [clean.read_image(i) for i in range(clean.num_images)]
        labels, num_classes = clean.labels.copy(), clean.num_classes
    rng = np.random.default_rng(0)
    moved = rng.choice(len(labels), PLANTED, replace=False)
    labels[moved] = (labels[moved] + rng.integers(1, num_classes, PLANTED)) % num_classes
    true_label = {image: int(label) for image, label in zip(images, RecordDataset(tiny_dataset).labels)}
    path = tmp_path_factory.mktemp("noisy")
    pack_dataset(path / "train", labels, images, bytes, num_classes=num_classes, workers=1, progress=False)
    with RecordDataset(path) as noisy:  # the packer orders records by class: find the planted ones by content
        planted = np.array([i for i in range(noisy.num_images) if true_label[noisy.read_image(i)] != noisy.labels[i]])
    assert len(planted) == PLANTED
    return path, planted


def test_clean_drops_planted_noise_and_training_accepts_the_index(noisy_dataset, tiny_dataset, tmp_path):
    dataset, planted = noisy_dataset
    run = tmp_path / "run"
    val = (
        "--data.val_targets",
        str(tiny_dataset / "synth_val.bin"),
        "--eval.verify.every_steps",
        "0",
        "--data.backend",
        "torch",
        "--train.log_every",
        "100",
    )
    run_training(None, train_args(dataset, run, "--train.epochs", "10", "--loss.sub_centers", "3", *val))

    result = subprocess.run(
        [sys.executable, "-m", "partialfc.data", "clean", str(run), str(dataset), "--angle", "75", "--quiet"],
        cwd=REPO,
        env=training_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    cleaned = run / "cleaned"
    kept = np.load(cleaned / "kept.npy")
    dropped = np.setdiff1d(np.arange(960), kept)
    planted_dropped = np.isin(planted, dropped).sum()
    clean_dropped = len(dropped) - planted_dropped
    # Measured on this setup: 16 of the 24 planted images lie beyond 75°, and 1 of the 936 clean ones.
    assert planted_dropped >= PLANTED // 2, (planted_dropped, clean_dropped)
    assert clean_dropped <= 10, (planted_dropped, clean_dropped)
    report = json.loads((cleaned / "subset.json").read_text())["report"]
    assert (report["images"], report["kept_images"], report["sub_centers"]) == (960, len(kept), 3)
    assert f"{len(kept):,} kept, {len(dropped):,} dropped" in result.stdout
    # What was dropped is listed: every image (with its class and angle), and the classes left empty.
    rows = [line.split("\t") for line in (cleaned / "dropped.tsv").read_text().splitlines()[1:]]
    assert [int(row[0]) for row in rows] == dropped.tolist() and all(float(row[2]) > 75 for row in rows)
    with RecordDataset(dataset) as full:
        assert [int(row[1]) for row in rows] == full.labels[dropped].tolist()
        empty = sorted(set(full.labels.tolist()) - set(full.labels[kept].tolist()))
    assert report["dropped_classes"] == empty
    if empty:
        assert f"dropped (no image left) of {report['classes']}: class {', '.join(map(str, empty))}" in result.stdout

    with RecordDataset(cleaned) as subset, RecordDataset(dataset) as full:
        assert subset.num_images == len(kept) and subset.num_classes == full.num_classes
        assert np.array_equal(subset.labels, full.labels[kept])
        assert subset.read_image(5) == full.read_image(int(kept[5]))

    for backend in ("torch", "dali"):
        output = tmp_path / f"on-cleaned-{backend}"
        trained = run_training(
            None, train_args(cleaned, output, "--train.max_steps", "2", *val[:4], "--data.backend", backend)
        )
        assert f"{len(kept)} images" in trained.stdout, backend
    # The static image index of the subset lies in the subset's directory, not beside the shared records.
    with RecordDataset(cleaned) as subset:
        assert ensure_image_index(subset) == cleaned / "train.images.idx"


def test_subset_of_changed_records_is_refused(tiny_dataset, tmp_path):
    with RecordDataset(tiny_dataset) as full:
        shards, num_images = full.shards, full.num_images
    directory = write_subset(tmp_path / "subset", shards, num_images - 1, np.arange(10), {})
    with pytest.raises(DatasetError, match="the records changed"):
        RecordDataset(directory)


def test_clean_without_a_checkpoint_names_the_directory(tiny_dataset, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "partialfc.data", "clean", str(tmp_path), str(tiny_dataset)],
        cwd=REPO,
        env=training_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'checkpoints'}: no complete checkpoint" in result.stderr
