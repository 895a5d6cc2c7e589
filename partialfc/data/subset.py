"""An image subset of a RecordIO dataset: a directory that ``data.path`` can point to instead of
the dataset, listing which of its images to use. The ``.rec`` files are never rewritten.

Layout of the directory: ``subset.json`` (the source shards with their sizes, the source's image
count, why the subset was made) and ``kept.npy`` (sorted int64 image indices of the source, in
:class:`~partialfc.data.RecordDataset` numbering). Class ids are those of the source, so a model
trained on the full set can continue on the subset; classes without kept images just have none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from partialfc.data.layout import DatasetError, Shard

SUBSET_FILE = "subset.json"
KEPT_FILE = "kept.npy"
_FORMAT = "partialfc image subset v1"


@dataclass(frozen=True)
class ImageSubset:
    directory: Path
    source: list[Path]
    """The source dataset's .rec shards."""
    shard_bytes: list[int]
    """Their sizes when the subset was written: a changed shard invalidates the image numbering."""
    num_images: int
    """Images of the source dataset."""
    kept: np.ndarray
    """Sorted source image indices in the subset."""

    def check_source(self, shards: Sequence[Shard], num_images: int) -> None:
        """Raise :class:`DatasetError` when the source on disk is not the one the subset was made from."""
        where = self.directory / SUBSET_FILE
        sizes = [shard.size_bytes for shard in shards]
        if sizes != self.shard_bytes or num_images != self.num_images:
            raise DatasetError(
                f"{where}: made from {self.num_images} images in shards of {self.shard_bytes} bytes, but "
                f"{', '.join(str(s.rec_path) for s in shards)} now hold {num_images} images in {sizes} bytes; "
                "the records changed, so the subset no longer names the same images (make it again)"
            )


def is_subset_directory(path: object) -> TypeGuard[str | Path]:
    return isinstance(path, (str, Path)) and (Path(path) / SUBSET_FILE).is_file()


def read_subset(directory: str | Path) -> ImageSubset:
    directory = Path(directory)
    where = directory / SUBSET_FILE
    try:
        meta = json.loads(where.read_text())
        kept = np.load(directory / KEPT_FILE, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{where}: unreadable image subset ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise DatasetError(f"{where}: not a partialfc image subset (format {_FORMAT!r} expected)")
    num_images = int(meta["num_images"])
    if (
        kept.ndim != 1
        or kept.dtype != np.int64
        or (kept.size and (kept[0] < 0 or kept[-1] >= num_images))
        or np.any(np.diff(kept) <= 0)
    ):
        raise DatasetError(f"{directory / KEPT_FILE}: expected sorted, distinct int64 image indices below {num_images}")
    return ImageSubset(
        directory, [Path(p) for p in meta["source"]], [int(b) for b in meta["shard_bytes"]], num_images, kept
    )


def write_subset(
    directory: str | Path, shards: Sequence[Shard], num_images: int, kept: np.ndarray, report: Mapping[str, Any]
) -> Path:
    """Write the subset (``kept`` = source image indices) and ``report`` (in subset.json); returns its directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / KEPT_FILE, np.unique(np.asarray(kept, dtype=np.int64)))
    meta = {
        "format": _FORMAT,
        "source": [str(shard.rec_path.resolve()) for shard in shards],
        "shard_bytes": [shard.size_bytes for shard in shards],
        "num_images": int(num_images),
        "report": dict(report),
    }
    (directory / SUBSET_FILE).write_text(json.dumps(meta, indent=1))
    return directory
