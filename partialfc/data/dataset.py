"""Face-recognition datasets stored as MXNet RecordIO: layout detection and label metadata.

Two layouts exist in the wild (see docs/data.md):

* ``insightface`` (MS1MV2/MS1MV3/Glint360K): key 0 is a header record (flag 2, label
  ``[N+1, N+1+K]``, no image), keys 1..N are images sorted by identity, keys N+1..N+K are
  identity records whose label is the key range ``[first, end)`` of that identity's images.
* ``headerless``: every record is an image with a scalar (or array) label; a ``property`` file
  (``num_classes,height,width`` and optionally ``num_images``) gives the class count.

A dataset may be split into shards (``train-00000-of-00016.rec`` ...), each a self-contained
file of one layout, with global class ids. Metadata is read from the record headers with
vectorised numpy over a memory map; images are never decoded here.
"""

from __future__ import annotations

import glob
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data.recordio import (
    IR_SIZE,
    MAX_RECORD_BYTES,
    RecordIOError,
    RecordReader,
    unpack_record,
)

FLOAT32_EXACT = 1 << 24  # float32 labels are exact integers only below this
_SHARD_NAME = re.compile(r"^(?P<stem>.*)-(?P<index>\d+)-of-(?P<total>\d+)\.rec$")


class DatasetError(RecordIOError):
    """The records, index or property file of a dataset disagree; the message names which."""


@dataclass(frozen=True)
class Shard:
    rec_path: Path
    idx_path: Path
    size_bytes: int


@dataclass(frozen=True)
class DatasetProperty:
    """Contents of the ``property`` file beside the records."""

    path: Path
    num_classes: int
    height: int
    width: int
    num_images: int | None


@dataclass
class HeaderTable:
    """Per-record IRHeader fields of one .rec, in file (offset) order."""

    keys: np.ndarray  # int64
    offsets: np.ndarray  # int64, offset of the record's magic word
    flag: np.ndarray  # int64, number of float32 labels after the IRHeader
    label0: np.ndarray  # float32, scalar label or element 0 of the label array
    label1: np.ndarray  # float32, element 1 of the label array (nan when flag < 2)
    image_len: np.ndarray  # int64, bytes of image data after header and labels


def shard_name(prefix: str | Path, index: int, total: int) -> Path:
    """File name of shard ``index`` of ``total``: ``PREFIX-00003-of-00016.rec``."""
    return Path(f"{prefix}-{index:05d}-of-{total:05d}.rec")


def _shard(rec: Path) -> Shard:
    if not rec.is_file():
        raise DatasetError(f"{rec}: no such RecordIO file")
    return Shard(rec, rec.with_suffix(".idx"), rec.stat().st_size)


def _check_shard_set(recs: list[Path], origin: str) -> None:
    """When files are named ``X-i-of-n.rec``, all n of them must be present, once."""
    matches = [_SHARD_NAME.match(r.name) for r in recs]
    if len(recs) < 2 or not all(matches):
        return
    groups = {(r.parent, m["stem"], int(m["total"])) for r, m in zip(recs, matches)}
    if len(groups) != 1:
        raise DatasetError(f"{origin}: matches shards of several datasets: {sorted(str(r) for r in recs)}")
    total = groups.pop()[2]
    have = sorted(int(m["index"]) for m in matches)
    missing = sorted(set(range(total)) - set(have))
    if missing or len(have) != total:
        raise DatasetError(
            f"{origin}: shard set is incomplete: expected {total} shards, found {len(have)}, "
            f"missing indices {missing[:10]}"
        )


def resolve_shards(path: str | Path | Sequence[str | Path]) -> list[Shard]:
    """Turn a .rec file, its prefix, a directory, a glob or a list of those into shards."""
    if isinstance(path, Sequence) and not isinstance(path, (str, bytes)):
        shards = [s for p in path for s in resolve_shards(p)]
        if not shards:
            raise DatasetError("empty list of dataset paths")
        return shards
    text = str(path)
    if any(c in text for c in "*?["):
        recs = sorted(Path(m) for m in glob.glob(text) if m.endswith(".rec"))
        if not recs:
            raise DatasetError(f"{text}: glob matches no .rec file")
        _check_shard_set(recs, text)
        return [_shard(r) for r in recs]
    p = Path(text)
    if p.is_dir():
        recs = sorted(p.glob("*.rec"))
        if len(recs) == 1:
            return [_shard(recs[0])]
        if (p / "train.rec").is_file():
            return [_shard(p / "train.rec")]
        if recs and all(_SHARD_NAME.match(r.name) for r in recs):
            _check_shard_set(recs, str(p))
            return [_shard(r) for r in recs]
        found = ", ".join(r.name for r in recs) or "none"
        raise DatasetError(f"{p}: expected one dataset (train.rec, one .rec or one shard set), found .rec files: {found}")
    if p.suffix == ".rec":
        return [_shard(p)]
    if Path(text + ".rec").is_file():
        return [_shard(Path(text + ".rec"))]
    recs = sorted(Path(m) for m in glob.glob(glob.escape(text) + "-*-of-*.rec"))
    if recs:
        _check_shard_set(recs, text)
        return [_shard(r) for r in recs]
    raise DatasetError(f"{text}: not a .rec file, a prefix of one, a shard prefix, a directory or a glob of shards")


def read_property(directory: Path) -> DatasetProperty | None:
    """Parse ``directory/property`` (``num_classes,height,width`` [newline ``num_images``])."""
    path = directory / "property"
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        fields = [int(x) for x in lines[0].split(",")]
        if len(fields) != 3 or len(lines) > 2:
            raise ValueError
        num_images = int(lines[1]) if len(lines) == 2 else None
    except (ValueError, IndexError):
        raise DatasetError(
            f"{path}: expected 'num_classes,height,width' and optionally a second line 'num_images', got {lines!r}"
        ) from None
    return DatasetProperty(path, fields[0], fields[1], fields[2], num_images)


def write_property(directory: Path, num_classes: int, height: int, width: int, num_images: int) -> Path:
    """Write the ``property`` file InsightFace tools expect (plus the image count line)."""
    path = Path(directory) / "property"
    path.write_text(f"{num_classes},{height},{width}\n{num_images}\n")
    return path


def read_headers(reader: RecordReader) -> HeaderTable:
    """Read every record's IRHeader through the memory map, without a per-byte Python loop.

    Records are 4-byte aligned, so the file is viewed as uint32 words and the header fields
    are gathered with fancy indexing. Multi-part records (payload containing the magic word)
    are rare and are read whole.
    """
    order = np.argsort(reader.offsets, kind="stable")
    keys = reader.keys[order]
    offsets = reader.offsets[order]
    n = len(offsets)
    flag = np.zeros(n, np.int64)
    label0 = np.zeros(n, np.float32)
    label1 = np.full(n, np.nan, np.float32)
    image_len = np.zeros(n, np.int64)
    if n == 0:
        return HeaderTable(keys, offsets, flag, label0, label1, image_len)
    words = reader.words()
    w = offsets // 4
    lrec = words[w + 1]
    whole = np.flatnonzero((lrec >> 29) == 0)
    length = (lrec[whole] & MAX_RECORD_BYTES).astype(np.int64)
    short = np.flatnonzero(length < IR_SIZE)
    if short.size:
        i = whole[short[0]]
        raise DatasetError(
            f"{reader.rec_path}: record key {int(keys[i])} at offset {int(offsets[i])}: payload has "
            f"{int(length[short[0]])} bytes, an IRHeader needs {IR_SIZE}"
        )
    ww = w[whole]
    f = words[ww + 2].astype(np.int64)
    bad = np.flatnonzero(IR_SIZE + 4 * f > length)
    if bad.size:
        j = int(bad[0])
        i = whole[j]
        raise DatasetError(
            f"{reader.rec_path}: record key {int(keys[i])} at offset {int(offsets[i])}: IRHeader flag={int(f[j])} "
            f"announces {int(f[j])} float32 labels but the payload has only {int(length[j])} bytes "
            f"(label array of wrong length)"
        )
    flag[whole] = f
    scalar = words[ww + 3].view(np.float32)
    # Label arrays start right after the 24-byte header, i.e. 8 + 24 bytes into the record.
    arr0 = words[np.where(f >= 1, ww + 8, ww)].view(np.float32)
    arr1 = words[np.where(f >= 2, ww + 9, ww)].view(np.float32)
    label0[whole] = np.where(f >= 1, arr0, scalar)
    label1[whole] = np.where(f >= 2, arr1, np.nan)
    image_len[whole] = length - IR_SIZE - 4 * f
    for i in np.flatnonzero((lrec >> 29) != 0).tolist():
        payload, _ = reader.read_at(int(offsets[i]))
        where = f"{reader.rec_path}: record key {int(keys[i])} at offset {int(offsets[i])}"
        header, image = unpack_record(payload, where)
        flag[i] = header.flag
        labels = header.label if isinstance(header.label, tuple) else (header.label,)
        label0[i] = labels[0] if labels else 0.0
        label1[i] = labels[1] if len(labels) >= 2 else np.nan
        image_len[i] = len(image)
    return HeaderTable(keys, offsets, flag, label0, label1, image_len)


def _f32_eq(stored: np.ndarray | float, exact: np.ndarray | int) -> np.ndarray | bool:
    """Compare float32 labels with integers the way they were written (rounded above 2**24)."""
    return np.float32(stored) == np.asarray(exact, dtype=np.int64).astype(np.float32)


@dataclass
class _ShardImages:
    layout: str
    keys: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray  # float32 label0 of each image
    num_identities: int | None


def _analyse_shard(reader: RecordReader, table: HeaderTable) -> _ShardImages:
    """Classify the records of one shard and cross-check the InsightFace header and identities."""
    rec = reader.rec_path
    empty = table.image_len == 0
    images = ~empty
    n_img = int(images.sum())
    if not empty.any():
        return _ShardImages("headerless", table.keys[images], table.offsets[images], table.label0[images], None)
    n_meta = int(empty.sum())
    meta = np.flatnonzero(empty)
    if reader.index_rebuilt:
        cands = [
            i for i in meta.tolist()
            if table.flag[i] == 2
            and _f32_eq(table.label0[i], n_img + 1)
            and _f32_eq(table.label1[i], n_img + n_meta)
        ]
        if not cands:
            i = int(meta[0])
            raise DatasetError(
                f"{rec}: {n_meta} records have no image (first at offset {int(table.offsets[i])}) but none is an "
                f"InsightFace header with label [{n_img + 1}, {n_img + n_meta}] (index was rebuilt by scanning)"
            )
        header = cands[0]
        warnings.warn(
            f"{rec}: index rebuilt by scanning, so identity key ranges cannot be cross-checked", stacklevel=3
        )
    else:
        zero = np.flatnonzero(table.keys == 0)
        if zero.size == 0:
            i = int(meta[0])
            raise DatasetError(
                f"{rec}: record key {int(table.keys[i])} at offset {int(table.offsets[i])} has no image, "
                f"but there is no InsightFace header record (key 0)"
            )
        header = int(zero[0])
        where = f"{rec}: header record key 0 at offset {int(table.offsets[header])}"
        if not empty[header]:
            raise DatasetError(
                f"{where}: holds an image ({int(table.image_len[header])} bytes) while {n_meta} other records have "
                f"no image; expected an InsightFace header with an empty payload"
            )
        if table.flag[header] != 2:
            raise DatasetError(
                f"{where}: label array has {int(table.flag[header])} entries, an InsightFace header has 2 "
                f"([first identity key, end key])"
            )
    where = f"{rec}: header record key {int(table.keys[header])} at offset {int(table.offsets[header])}"
    num_ids = n_meta - 1
    if not (_f32_eq(table.label0[header], n_img + 1) and _f32_eq(table.label1[header], n_img + 1 + num_ids)):
        raise DatasetError(
            f"{where}: label [{table.label0[header]:.0f}, {table.label1[header]:.0f}] disagrees with the records: "
            f"{n_img} images and {num_ids} identity records need [{n_img + 1}, {n_img + 1 + num_ids}]"
        )
    ident = meta[meta != header]
    bad = ident[table.flag[ident] != 2]
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{rec}: identity record key {int(table.keys[i])} at offset {int(table.offsets[i])}: label array has "
            f"{int(table.flag[i])} entries, expected 2 ([first image key, end key])"
        )
    img_keys = table.keys[images]
    img_labels = table.label0[images]
    if not reader.index_rebuilt:
        _check_keys(rec, img_keys, 1, n_img, "image")
        _check_keys(rec, table.keys[ident], n_img + 1, num_ids, "identity")
        _check_identity_ranges(rec, table, ident, img_keys, img_labels)
    return _ShardImages("insightface", img_keys, table.offsets[images], img_labels, num_ids)


def _check_keys(rec: Path, keys: np.ndarray, first: int, count: int, kind: str) -> None:
    got = np.sort(keys)
    want = np.arange(first, first + count, dtype=np.int64)
    if np.array_equal(got, want):
        return
    wrong = np.flatnonzero(got != want)
    detail = f"key #{int(wrong[0])} is {int(got[wrong[0]])}" if wrong.size else f"{len(got)} keys"
    raise DatasetError(
        f"{rec}: {count} {kind} records must have keys {first}..{first + count - 1} in the InsightFace layout; "
        f"{detail}"
    )


def _check_identity_ranges(
    rec: Path, table: HeaderTable, ident: np.ndarray, img_keys: np.ndarray, img_labels: np.ndarray
) -> None:
    """Identity record j must cover exactly the j-th run of equal labels in image-key order."""
    by_key = np.argsort(img_keys, kind="stable")
    keys = img_keys[by_key]
    labels = img_labels[by_key]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(labels)].astype(np.int64)
    ident = ident[np.argsort(table.keys[ident], kind="stable")]
    if len(starts) != len(ident):
        raise DatasetError(
            f"{rec}: {len(ident)} identity records but the image labels, in key order, form {len(starts)} runs "
            f"(images of one identity must have consecutive keys)"
        )
    run_labels = labels[starts]
    if len(run_labels) > 1 and not np.all(run_labels[1:] > run_labels[:-1]):
        j = int(np.flatnonzero(run_labels[1:] <= run_labels[:-1])[0]) + 1
        raise DatasetError(
            f"{rec}: images of label {run_labels[j]:.0f} start at key {int(keys[starts[j]])} after those of label "
            f"{run_labels[j - 1]:.0f}; InsightFace identities must be sorted and contiguous"
        )
    first = keys[starts]
    end = keys[ends - 1] + 1
    ok = _f32_eq(table.label0[ident], first) & _f32_eq(table.label1[ident], end)
    if not np.all(ok):
        j = int(np.flatnonzero(~ok)[0])
        i = int(ident[j])
        raise DatasetError(
            f"{rec}: identity record key {int(table.keys[i])} at offset {int(table.offsets[i])} has range "
            f"[{table.label0[i]:.0f}, {table.label1[i]:.0f}) but the images of label {run_labels[j]:.0f} "
            f"have keys [{int(first[j])}, {int(end[j])})"
        )


class RecordDataset:
    """Metadata (labels, shard, offset, key of every image) and raw access to a RecordIO face dataset.

    Image ``i`` is the i-th image record of the dataset in file order, shard after shard.
    """

    def __init__(self, path: str | Path | Sequence[str | Path]) -> None:
        self.shards: list[Shard] = resolve_shards(path)
        self._readers = [RecordReader(s.rec_path, s.idx_path) for s in self.shards]
        parts = [_analyse_shard(r, read_headers(r)) for r in self._readers]
        layouts = {p.layout for p in parts}
        if len(layouts) != 1:
            kinds = ", ".join(f"{s.rec_path.name}={p.layout}" for s, p in zip(self.shards, parts))
            raise DatasetError(f"shards mix layouts: {kinds}")
        self.layout: str = layouts.pop()
        self.image_shard = np.concatenate(
            [np.full(len(p.keys), i, np.int32) for i, p in enumerate(parts)]
        )
        self.image_offset = np.concatenate([p.offsets for p in parts]).astype(np.int64)
        self.image_key = np.concatenate([p.keys for p in parts]).astype(np.int64)
        raw = np.concatenate([p.labels for p in parts]).astype(np.float32)
        self.num_images = len(raw)
        self.labels = self._integer_labels(raw)
        self.property = read_property(self.shards[0].rec_path.parent)
        self.num_classes = self._count_classes(parts)
        self.image_size = (self.property.height, self.property.width) if self.property else None

    def _where(self, i: int) -> str:
        shard = self.shards[int(self.image_shard[i])]
        return f"{shard.rec_path}: record key {int(self.image_key[i])} at offset {int(self.image_offset[i])}"

    def _integer_labels(self, raw: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~np.isfinite(raw) | (raw < 0) | (raw >= FLOAT32_EXACT) | (raw != np.round(raw)))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{self._where(i)}: label {float(raw[i])!r} is not a class id (non-negative integer below 2**24)"
            )
        return raw.astype(np.int64)

    def _count_classes(self, parts: list[_ShardImages]) -> int:
        """Cross-check class and image counts of headers, identity records, property and labels."""
        prop = self.property
        seen = int(self.labels.max()) + 1 if self.num_images else 0
        origin = "labels"
        if self.layout == "insightface" and len(parts) == 1:
            num_classes = parts[0].num_identities
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
            raise DatasetError(f"{self._where(i)}: label {seen - 1} is out of range for num_classes={num_classes} ({origin})")
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
        _, image = unpack_record(payload, self._where(i))
        return bytes(image)

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
