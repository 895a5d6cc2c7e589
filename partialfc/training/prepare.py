"""The training job's data, from its ``data`` config: the dataset (synthetic one generated on first
use) and the verification ``.bin`` files.

A synthetic dataset is generated only at ``data.synthetic.path``, never at whatever ``data.path``
happens to say: a mistyped path is an error naming it, not 20,000 new images trained on silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from partialfc.common.distributed import barrier
from partialfc.config import ConfigError, DataConfig
from partialfc.data.dataset import RecordDataset
from partialfc.data.layout import DatasetError, resolve_shards
from partialfc.data.subset import is_subset_directory, read_subset
from partialfc.data.synth import generate_synthetic_dataset


def is_synthetic_target(data: DataConfig) -> bool:
    """True when ``data.path`` names the synthetic dataset (``data.synthetic.path``) and it is enabled."""
    synthetic = data.synthetic
    return (
        synthetic.identities > 0
        and bool(synthetic.path)
        and Path(data.path).resolve() == Path(synthetic.path).resolve()
    )


def prepare_dataset(data: DataConfig, seed: int, is_main: bool) -> RecordDataset:
    """Open ``data.path``; if it is the synthetic dataset and missing, rank 0 generates it first.

    Collective when the synthetic dataset is configured: every rank must call it (a barrier waits
    for the writer). ``seed`` seeds the synthetic images; ``is_main`` says whether this is rank 0.
    """
    path, synthetic = data.path, data.synthetic
    if not path:
        raise ConfigError("data.path is empty: point it at a dataset (.rec, prefix, directory or glob)")
    if is_synthetic_target(data):
        # Rank 0 alone decides and writes; every rank waits (ranks must not test existence themselves:
        # they would race with the writer). Written aside and renamed, so it is complete or absent.
        target = Path(synthetic.path)
        if is_main and not target.exists():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            generate_synthetic_dataset(
                staging,
                synthetic.identities,
                synthetic.images_per_identity,
                seed=seed,
                shards=synthetic.shards,
                holdout_identities=synthetic.holdout_identities,
                pairs=synthetic.pairs,
                progress=True,
            )
            staging.rename(target)
        barrier()
    try:
        resolve_shards(read_subset(path).source if is_subset_directory(path) else path)
    except DatasetError as err:
        hint = ""
        if synthetic.identities > 0:
            hint = f"; a synthetic dataset is generated only at data.synthetic.path={synthetic.path!r}"
        raise ConfigError(f"data.path={path!r}: {err}{hint}") from None
    dataset = RecordDataset(path)
    if data.num_classes and data.num_classes != dataset.num_classes:
        raise ConfigError(f"data.num_classes={data.num_classes} but dataset {path} has {dataset.num_classes} classes")
    return dataset


def dataset_directory(data: DataConfig) -> Path:
    """The folder relative evaluation paths are resolved against: the dataset's; for an image subset
    (a cleaned index) that of its source records."""
    data_path = Path(data.path)
    if is_subset_directory(data_path):
        return read_subset(data_path).source[0].parent
    return data_path if data_path.is_dir() else data_path.parent


def resolve_ijb_release(data: DataConfig, release: str) -> Path:
    """``eval.ijb.release`` as a folder: as given, or relative to the dataset's directory."""
    candidates = [Path(release), dataset_directory(data) / release]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise ConfigError(f"eval.ijb.release: {release!r} not found (looked at {', '.join(map(str, candidates))})")
    return found


def resolve_val_targets(data: DataConfig) -> list[Path]:
    """``data.val_targets`` as paths: as given, or relative to the dataset's directory (``.bin`` may be omitted)."""
    base = dataset_directory(data)
    resolved = []
    for target in data.val_targets:
        candidates = [Path(target), base / target, base / f"{target}.bin"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"data.val_targets: {target!r} not found (looked at {', '.join(map(str, candidates))})")
        resolved.append(found)
    return resolved
