"""How a face dataset lies in RecordIO files: record layouts (checked on read, produced on write),
shard names, and the ``property`` file.

Two record layouts exist in the wild (see docs/data.md):

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
    RecordWriter,
    pack_record,
    unpack_record,
)

LAYOUTS = ("insightface", "headerless")
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
    matches = [m for r in recs if (m := _SHARD_NAME.match(r.name))]
    if len(recs) < 2 or len(matches) != len(recs):
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
        raise DatasetError(
            f"{p}: expected one dataset (train.rec, one .rec or one shard set), found .rec files: {found}"
        )
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
class ShardImages:
    """The image records of one shard, in file order, as :func:`analyse_shard` found them."""

    layout: str
    keys: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray  # float32 label0 of each image
    num_identities: int | None


def analyse_shard(reader: RecordReader, table: HeaderTable) -> ShardImages:
    """Classify the records of one shard and cross-check the InsightFace header and identities."""
    rec = reader.rec_path
    empty = table.image_len == 0
    images = ~empty
    n_img = int(images.sum())
    if not empty.any():
        return ShardImages("headerless", table.keys[images], table.offsets[images], table.label0[images], None)
    n_meta = int(empty.sum())
    meta = np.flatnonzero(empty)
    if reader.index_rebuilt:
        cands = [
            i
            for i in meta.tolist()
            if table.flag[i] == 2 and _f32_eq(table.label0[i], n_img + 1) and _f32_eq(table.label1[i], n_img + n_meta)
        ]
        if not cands:
            i = int(meta[0])
            raise DatasetError(
                f"{rec}: {n_meta} records have no image (first at offset {int(table.offsets[i])}) but none is an "
                f"InsightFace header with label [{n_img + 1}, {n_img + n_meta}] (index was rebuilt by scanning)"
            )
        header = cands[0]
        warnings.warn(f"{rec}: index rebuilt by scanning, so identity key ranges cannot be cross-checked", stacklevel=3)
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
    return ShardImages("insightface", img_keys, table.offsets[images], img_labels, num_ids)


def _check_keys(rec: Path, keys: np.ndarray, first: int, count: int, kind: str) -> None:
    got = np.sort(keys)
    want = np.arange(first, first + count, dtype=np.int64)
    if np.array_equal(got, want):
        return
    wrong = np.flatnonzero(got != want)
    detail = f"key #{int(wrong[0])} is {int(got[wrong[0]])}" if wrong.size else f"{len(got)} keys"
    raise DatasetError(
        f"{rec}: {count} {kind} records must have keys {first}..{first + count - 1} in the InsightFace layout; {detail}"
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


# ---------------------------------------------------------------- writing


def shard_paths(out_prefix: str | Path, shards: int) -> list[Path]:
    """The .rec paths ``pack_dataset`` writes for ``shards`` shards."""
    if shards == 1:
        return [Path(f"{out_prefix}.rec")]
    return [shard_name(out_prefix, s, shards) for s in range(shards)]


def image_keys(shard_labels: np.ndarray, layout: str) -> np.ndarray:
    """Keys of a shard's images in write order: 0..n-1, or (InsightFace) 1..n ranked by identity."""
    n = len(shard_labels)
    if layout == "headerless":
        return np.arange(n, dtype=np.int64)
    keys = np.empty(n, np.int64)
    keys[np.argsort(shard_labels, kind="stable")] = np.arange(1, n + 1)
    return keys


def write_identities(writer: RecordWriter, shard_labels: np.ndarray) -> None:
    """Identity records (key ranges of each label's images) and the header, after the images."""
    n = len(shard_labels)
    sorted_labels = np.sort(shard_labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], n]
    for j, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        writer.write(n + 1 + j, pack_record([a + 1, b + 1], b""))
    writer.write(0, pack_record([n + 1, n + 1 + len(starts)], b""))
