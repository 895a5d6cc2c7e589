"""A RecordIO face dataset opened for training: labels, shard, offset and key of every image.

The record layouts and their checks are in :mod:`partialfc.data.layout`; an image subset
(``partialfc.data clean``'s output) opens as the subset of its source, see :mod:`partialfc.data.subset`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from partialfc.data.image import ImageDecodeError, decode_jpeg
from partialfc.data.layout import (
    FLOAT32_EXACT,
    DatasetError,
    Shard,
    ShardImages,
    analyse_shard,
    read_headers,
    read_property,
    resolve_shards,
)
from partialfc.data.recordio import RecordReader, unpack_record
from partialfc.data.subset import is_subset_directory, read_subset


class RecordDecodeError(DatasetError, ValueError):
    """An image record that does not decode; the message and ``rec_path``/``key`` name the record.

    Re-raised from a DataLoader worker, only the message survives (the attributes are None).
    """

    def __init__(self, message: str, rec_path: Path | None = None, key: int | None = None) -> None:
        super().__init__(message)
        self.rec_path = rec_path
        self.key = key


class RecordDataset:
    """Metadata (labels, shard, offset, key of every image) and raw access to a RecordIO face dataset.

    Image ``i`` is the i-th image record of the dataset in file order, shard after shard; for an
    image subset directory, the i-th kept image of its source.
    """

    def __init__(self, path: str | Path | Sequence[str | Path]) -> None:
        subset = read_subset(path) if is_subset_directory(path) else None
        self.shards: list[Shard] = resolve_shards(subset.source if subset else path)
        self._readers = [RecordReader(s.rec_path, s.idx_path) for s in self.shards]
        parts = [analyse_shard(r, read_headers(r)) for r in self._readers]
        layouts = {p.layout for p in parts}
        if len(layouts) != 1:
            kinds = ", ".join(f"{s.rec_path.name}={p.layout}" for s, p in zip(self.shards, parts))
            raise DatasetError(f"shards mix layouts: {kinds}")
        self.layout: str = layouts.pop()
        self.image_shard = np.concatenate([np.full(len(p.keys), i, np.int32) for i, p in enumerate(parts)])
        self.image_offset = np.concatenate([p.offsets for p in parts]).astype(np.int64)
        self.image_key = np.concatenate([p.keys for p in parts]).astype(np.int64)
        raw = np.concatenate([p.labels for p in parts]).astype(np.float32)
        self.num_images = len(raw)
        self.labels = self._integer_labels(raw)
        self.property = read_property(self.shards[0].rec_path.parent)
        self.num_classes = self._count_classes(parts)
        self.source_num_images = self.num_images  # images in the .rec files
        self.subset_indices: np.ndarray | None = None  # source image of each image, for a subset
        if subset is not None:
            subset.check_source(self.shards, self.num_images)
            for name in ("image_shard", "image_offset", "image_key", "labels"):
                setattr(self, name, getattr(self, name)[subset.kept])
            self.num_images, self.subset_indices = len(subset.kept), subset.kept
        # Where indexes derived from this image list (DALI's) go: a subset's own directory.
        self.index_dir: Path = subset.directory if subset else self.shards[0].rec_path.parent
        self.image_size = (self.property.height, self.property.width) if self.property else None

    def image_names(self) -> list[str]:
        """A name per image, unique in the dataset: its record key, prefixed by its shard's file name
        (``train_1.rec:17``) when there are several shards, whose keys each start again at 1."""
        if len(self.shards) == 1:
            return [str(int(key)) for key in self.image_key]
        files = [shard.rec_path.name for shard in self.shards]
        return [f"{files[shard]}:{int(key)}" for shard, key in zip(self.image_shard, self.image_key)]

    def describe(self, i: int) -> str:
        """How messages name image ``i``: ``SHARD.rec: record key K at offset O``."""
        shard = self.shards[int(self.image_shard[i])]
        return f"{shard.rec_path}: record key {int(self.image_key[i])} at offset {int(self.image_offset[i])}"

    def _integer_labels(self, raw: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~np.isfinite(raw) | (raw < 0) | (raw >= FLOAT32_EXACT) | (raw != np.round(raw)))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{self.describe(i)}: label {float(raw[i])!r} is not a class id (non-negative integer below 2**24)"
            )
        return raw.astype(np.int64)

    def _count_classes(self, parts: list[ShardImages]) -> int:
        """Cross-check class and image counts of headers, identity records, property and labels."""
        prop = self.property
        seen = int(self.labels.max()) + 1 if self.num_images else 0
        origin = "labels"
        if self.layout == "insightface" and len(parts) == 1:
            num_classes = parts[0].num_identities
            assert num_classes is not None  # analyse_shard counts the identity records of an insightface shard
            origin = f"header of {self.shards[0].rec_path}"
        elif prop is not None:
            num_classes = prop.num_classes
            origin = str(prop.path)
        else:
            num_classes = seen
            warnings.warn(
                f"{self.shards[0].rec_path.parent}: no property file; taking num_classes={seen} from the labels",
                stacklevel=3,
            )
        if prop is not None and prop.num_classes != num_classes:
            raise DatasetError(f"{prop.path}: num_classes {prop.num_classes} but {origin} says {num_classes}")
        if prop is not None and prop.num_images is not None and prop.num_images != self.num_images:
            raise DatasetError(
                f"{prop.path}: num_images {prop.num_images} but the records hold {self.num_images} images"
            )
        if seen > num_classes:
            i = int(np.argmax(self.labels))
            raise DatasetError(
                f"{self.describe(i)}: label {seen - 1} is out of range for num_classes={num_classes} ({origin})"
            )
        if self.layout == "insightface":
            present = np.bincount(self.labels, minlength=num_classes) > 0
            if not present.all():
                missing = np.flatnonzero(~present)
                raise DatasetError(
                    f"{origin}: {num_classes} identities but {len(missing)} class ids have no image "
                    f"(first: {int(missing[0])})"
                )
            total_ids = sum(p.num_identities or 0 for p in parts)
            if len(parts) == 1 and total_ids != num_classes:
                raise DatasetError(f"{origin}: {total_ids} identity records for {num_classes} classes")
        return int(num_classes)

    def read_image(self, i: int) -> bytes:
        """Encoded image (JPEG) bytes of image ``i``; labels are in ``self.labels``."""
        i = int(i)
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        reader = self._readers[int(self.image_shard[i])]
        payload, _ = reader.read_at(int(self.image_offset[i]))
        _, image = unpack_record(payload, self.describe(i))
        return bytes(image)

    def decode_image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 HWC RGB; :class:`RecordDecodeError` names its shard and key if it does not decode."""
        try:
            return decode_jpeg(self.read_image(i))
        except ImageDecodeError as err:
            shard = self.shards[int(self.image_shard[i])]
            raise RecordDecodeError(
                f"{self.describe(i)} (image {i}): {err}", shard.rec_path, int(self.image_key[i])
            ) from None

    def class_sizes(self) -> np.ndarray:
        """Number of images of each class id."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def reader(self, shard: int) -> RecordReader:
        """The RecordReader of shard ``shard`` (fork-safe, mapped lazily per process)."""
        return self._readers[shard]

    def __len__(self) -> int:
        return self.num_images

    def close(self) -> None:
        for r in self._readers:
            r.close()

    def __enter__(self) -> RecordDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
