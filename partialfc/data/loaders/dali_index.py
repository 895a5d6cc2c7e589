"""Index files that let DALI's ``fn.readers.mxnet`` read a face dataset without rewriting the ``.rec``.

DALI treats every line of its index as a sample (keys are ignored), so the InsightFace header
and identity records, which hold no image, must not be listed; and several ``.rec`` files take one
index whose offsets run across the files as if they were concatenated. DALI also sorts the
offsets it reads and takes each sample's size as the distance to the next listed offset, so the
order of lines carries no meaning and unlisted bytes between two listed records are mapped (not
copied) as part of the first one.

Two kinds of index are written here:

* :func:`ensure_image_index` - the static image-only index of the whole dataset, generated once
  next to the data (or in a cache directory when the data directory is read-only) and reused
  while the shards are unchanged.
* :func:`write_batch_index` - the per-epoch index of one rank: each batch of the epoch plan is
  placed in its own repetition of the shard list, so DALI's sorting cannot merge batches and every
  batch holds exactly the images the plan chose (a uniformly random subset of the dataset).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data.dataset import RecordDataset

_SIDECAR_VERSION = 1


def concatenated_offsets(dataset: RecordDataset) -> np.ndarray:
    """Byte offset of every image record in the concatenation of the shards, in shard order."""
    sizes = np.array([s.size_bytes for s in dataset.shards], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return dataset.image_offset + starts[dataset.image_shard]


def _write_lines(path: Path, keys: np.ndarray, offsets: np.ndarray) -> None:
    """Write ``key<TAB>offset`` lines atomically (temp file + rename), so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            step = 1 << 20
            for start in range(0, len(keys), step):
                pairs = zip(keys[start : start + step].tolist(), offsets[start : start + step].tolist())
                out.write("".join(f"{k}\t{o}\n" for k, o in pairs))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stamp(dataset: RecordDataset) -> dict:
    """What the static index depends on: each shard's resolved path, size and mtime."""
    shards = []
    for shard in dataset.shards:
        st = shard.rec_path.stat()
        shards.append([str(shard.rec_path.resolve()), st.st_size, st.st_mtime_ns])
    return {"version": _SIDECAR_VERSION, "num_images": int(dataset.num_images), "shards": shards}


def _dataset_stem(dataset: RecordDataset) -> str:
    """``train`` for ``train.rec``; ``train`` for the shard set ``train-00000-of-00016.rec`` ..."""
    name = dataset.shards[0].rec_path.stem
    if len(dataset.shards) > 1 and "-of-" in name:
        return name.rsplit("-", 3)[0]
    return name


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "partialfc"


def _is_current(index: Path, sidecar: Path, stamp: dict) -> bool:
    try:
        return index.is_file() and json.loads(sidecar.read_text()) == stamp
    except (OSError, ValueError):
        return False


def _write_static(dataset: RecordDataset, index: Path, sidecar: Path, stamp: dict) -> None:
    keys = np.arange(dataset.num_images, dtype=np.int64)
    _write_lines(index, keys, concatenated_offsets(dataset))
    fd, tmp = tempfile.mkstemp(prefix=sidecar.name + ".", suffix=".tmp", dir=sidecar.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(stamp, out)
    os.replace(tmp, sidecar)


def ensure_image_index(dataset: RecordDataset, cache_dir: str | Path | None = None) -> Path:
    """Path of an up-to-date image-only index over all shards of ``dataset``; writes it if needed.

    The index lists image ``i`` of the dataset (key ``i``) at its offset in the concatenation of
    the shards, header and identity records left out. It is written as ``<stem>.images.idx`` next
    to the first shard (an image subset: in the subset's directory), with a ``.json`` sidecar
    recording the shards' sizes and mtimes; a changed shard makes it stale and it is rewritten.
    When the data directory is not writable it goes to ``cache_dir`` (default
    ``$XDG_CACHE_HOME/partialfc``) under a name that includes a hash of the shard paths. The
    ``.rec`` files are only read.
    """
    stamp = _stamp(dataset)
    stem = _dataset_stem(dataset)
    beside = dataset.index_dir / f"{stem}.images.idx"
    beside_sidecar = beside.with_suffix(".json")
    if _is_current(beside, beside_sidecar, stamp):
        return beside
    try:
        _write_static(dataset, beside, beside_sidecar, stamp)
        return beside
    except PermissionError:
        pass
    except OSError as err:
        if err.errno not in (13, 30):  # EACCES, EROFS: fall back to the cache; anything else is real
            raise
    digest = hashlib.sha1("\n".join(s[0] for s in stamp["shards"]).encode()).hexdigest()[:12]
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{stem}-{digest}.images.idx"
    cached_sidecar = cached.with_suffix(".json")
    if not _is_current(cached, cached_sidecar, stamp):
        _write_static(dataset, cached, cached_sidecar, stamp)
    return cached


@dataclass(frozen=True)
class BatchIndex:
    """What DALI needs to read one rank's epoch, and how to cut the plan's batches out of its output.

    DALI's batches hold ``batch_size + extra`` samples: the plan's images plus, for every shard,
    its first and last image (or a stand-in when the plan already has one of them). Listing them
    bounds every sample's byte range to its own shard repetition, so a read never spans the rest of
    a multi-gigabyte file. ``keep[b]`` gives the positions of the plan's images in DALI batch ``b``.
    """

    index_path: Path
    paths: list[str]
    extra: int
    listed: np.ndarray  # [batches, batch_size + extra] image ids in DALI's (sorted) order
    keep: np.ndarray  # [batches, batch_size] positions of the planned images in ``listed``


def _edges(dataset: RecordDataset) -> np.ndarray:
    """First and last image of every shard (images of a shard are contiguous ids, in file order)."""
    counts = np.bincount(dataset.image_shard, minlength=len(dataset.shards))
    if (counts == 0).any():
        empty = dataset.shards[int(np.flatnonzero(counts == 0)[0])].rec_path
        raise ValueError(f"{empty}: shard holds no image; DALI cannot read an index with an empty repetition")
    ends = np.cumsum(counts)
    return np.unique(np.concatenate([ends - counts, ends - 1]))


def _fill_row(planned: np.ndarray, edges: np.ndarray, width: int, num_images: int) -> np.ndarray:
    """Plan images + shard edges + stand-ins (images next to the edges, not planned) up to ``width``."""
    listed = np.union1d(planned, edges)
    need = width - listed.size
    radius = width
    while need > 0:
        near = np.unique(np.clip(edges[:, None] + np.arange(-radius, radius + 1), 0, num_images - 1))
        spare = np.setdiff1d(near, listed)
        if spare.size >= need or radius >= num_images:
            break
        radius *= 2
    if need > 0:
        if spare.size < need:
            raise ValueError(f"dataset of {num_images} images is too small for DALI batches of {width}")
        listed = np.union1d(listed, spare[:need])
    return listed


def write_batch_index(dataset: RecordDataset, batches: np.ndarray, index_path: str | Path) -> BatchIndex:
    """Write the DALI index for ``batches`` (``[n, batch_size]`` image ids, one rank's epoch plan).

    Batch ``j`` lives in repetition ``j`` of the shard list: DALI gets ``paths = shards * n`` and
    offsets shifted by ``j`` times the total size, so its sorting keeps batches apart and in plan
    order. Within a batch, images come out in file order.
    """
    batches = np.asarray(batches, dtype=np.int64)
    count, batch_size = batches.shape
    edges = _edges(dataset)
    width = batch_size + edges.size
    if dataset.num_images < width:
        raise ValueError(
            f"dataset of {dataset.num_images} images is too small for DALI batches of {batch_size} "
            f"plus {edges.size} shard-edge images"
        )
    listed = np.sort(np.concatenate([batches, np.broadcast_to(edges, (count, edges.size))], axis=1), axis=1)
    clash = np.flatnonzero((np.diff(listed, axis=1) == 0).any(axis=1))
    for j in clash.tolist():
        listed[j] = _fill_row(batches[j], edges, width, dataset.num_images)
    # Row-wise searchsorted in one call: shift row j by j * num_images so rows never interleave.
    shift = np.arange(count, dtype=np.int64)[:, None] * dataset.num_images
    flat = np.searchsorted((listed + shift).ravel(), (np.sort(batches, axis=1) + shift).ravel())
    keep = flat.reshape(count, batch_size) - np.arange(count, dtype=np.int64)[:, None] * width
    sizes = np.array([s.size_bytes for s in dataset.shards], dtype=np.int64)
    total = int(sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    offsets = (
        np.arange(count, dtype=np.int64)[:, None] * total
        + starts[dataset.image_shard[listed]]
        + dataset.image_offset[listed]
    )
    index_path = Path(index_path)
    _write_lines(index_path, listed.ravel(), offsets.ravel())
    paths = [str(s.rec_path) for s in dataset.shards] * count
    return BatchIndex(index_path, paths, int(edges.size), listed, keep)
