"""Small RecordIO face datasets whose images say which record they are, for loader tests.

Every image encodes its dataset index in 24 blocks of the red channel, mirrored left/right so the
code survives a horizontal flip, and carries a marker in the blue channel on the left half only,
so a test can tell whether the loader flipped it. One record's payload contains the RecordIO
magic word, so it is stored as a multi-part record.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from partialfc.data.image import encode_jpeg
from partialfc.data.layout import shard_name, write_property
from partialfc.data.recordio import MAGIC, RecordWriter, pack_record
from partialfc.models import InputConfig

SIZE = 112
_BLOCK = 14
_BITS = 24
MULTIPART_INDEX = 5


def index_image(index: int, label: int) -> np.ndarray:
    """112x112 RGB image encoding ``index`` (flip-invariant) plus a left-side flip marker."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    for bit in range(_BITS):
        row, col = divmod(bit, 4)
        value = 230 if (index >> bit) & 1 else 25
        ys = slice(row * _BLOCK, (row + 1) * _BLOCK)
        img[ys, col * _BLOCK : (col + 1) * _BLOCK, 0] = value
        img[ys, SIZE - (col + 1) * _BLOCK : SIZE - col * _BLOCK, 0] = value
    img[:, :, 1] = 40 + (label * 53) % 180
    img[6 * _BLOCK :, : SIZE // 2, 2] = 235
    img[6 * _BLOCK :, SIZE // 2 :, 2] = 20
    return img


def read_index(image: np.ndarray, input_config: InputConfig = InputConfig()) -> tuple[int, bool]:
    """(index, flipped) of an image from :func:`index_image`, HWC uint8 or CHW normalised as ``input_config``."""
    a = np.asarray(image, dtype=np.float32)
    if a.shape[0] == 3:
        a = a.transpose(1, 2, 0) * np.array(input_config.std, np.float32) + np.array(input_config.mean, np.float32)
    index = 0
    for bit in range(_BITS):
        row, col = divmod(bit, 4)
        block = a[row * _BLOCK + 3 : (row + 1) * _BLOCK - 3, col * _BLOCK + 3 : (col + 1) * _BLOCK - 3, 0]
        index |= int(block.mean() > 127.5) << bit
    left = a[6 * _BLOCK + 3 :, 3 : SIZE // 2 - 3, 2].mean()
    right = a[6 * _BLOCK + 3 :, SIZE // 2 + 3 : -3, 2].mean()
    return index, bool(right > left)


def run_epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch of one pass over ``loader``, copied (a backend may reuse its buffers)."""
    return [(x.clone(), y.clone()) for x, y in loader]


def _jpeg(index: int, label: int) -> bytes:
    data = encode_jpeg(index_image(index, label), quality=90)
    if index == MULTIPART_INDEX:
        # Trailing bytes after EOI are ignored by decoders; put the magic word 4-byte aligned in
        # the payload (24-byte IRHeader + JPEG) so the writer must split this record.
        data += b"\0" * (-(len(data) + 24) % 4) + struct.pack("<I", MAGIC) + b"tail"
    return data


def write_dataset(
    out_dir: str | Path,
    num_ids: int,
    seed: int = 0,
    shards: int = 1,
    min_per_id: int = 2,
    max_per_id: int = 9,
    not_jpeg: int | None = None,
) -> tuple[Path, np.ndarray]:
    """Write an InsightFace-layout dataset (header + identity records, images sorted by identity).

    Image ``not_jpeg`` (if given) holds PNG-signature bytes instead of a JPEG.

    Returns (path to pass to ``RecordDataset``, labels of images 0..N-1). Shards split at identity
    boundaries; each is a complete InsightFace file, and a ``property`` file gives the class count.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_per_id, max_per_id + 1, size=num_ids)
    labels = np.repeat(np.arange(num_ids), counts)
    id_groups = np.array_split(np.arange(num_ids), shards)
    index = 0
    for s, ids in enumerate(id_groups):
        rec = out / "train.rec" if shards == 1 else shard_name(out / "train", s, shards)
        with RecordWriter(rec) as writer:
            key = 1
            ranges = []
            for ident in ids.tolist():
                first = key
                for _ in range(int(counts[ident])):
                    image = b"\x89PNG\r\n\x1a\n not a JPEG" if index == not_jpeg else _jpeg(index, ident)
                    writer.write(key, pack_record(float(ident), image, id=index))
                    key += 1
                    index += 1
                ranges.append((first, key))
            n_images = key - 1
            for j, (first, end) in enumerate(ranges):
                writer.write(n_images + 1 + j, pack_record([float(first), float(end)], b""))
            writer.write(0, pack_record([float(n_images + 1), float(n_images + 1 + len(ranges))], b""))
    write_property(out, num_ids, SIZE, SIZE, len(labels))
    return (out / "train.rec" if shards == 1 else out), labels
