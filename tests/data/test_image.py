"""The shared JPEG helpers: RGB output, strict errors, header-only size."""

from __future__ import annotations

import io

import numpy as np
import pytest

from partialfc.data.image import ImageDecodeError, decode_jpeg, encode_jpeg, is_jpeg, jpeg_size
from partialfc.data.progress import Progress


def test_encode_decode_round_trip_keeps_colour():
    img = np.zeros((32, 48, 3), np.uint8)
    img[..., 0] = 200  # pure-ish red: channel order must survive
    data = encode_jpeg(img, quality=95)
    assert is_jpeg(data) and jpeg_size(data) == (32, 48)
    out = decode_jpeg(data)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert abs(int(out[..., 0].mean()) - 200) <= 3 and out[..., 2].mean() < 5


def test_corrupt_and_foreign_bytes_raise():
    data = encode_jpeg(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        decode_jpeg(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"not a JPEG: starts with b'\\x89PNG"):
        decode_jpeg(b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(ImageDecodeError, match="not a JPEG"):
        jpeg_size(b"")


def test_progress_prints_lines_when_not_a_tty():
    stream = io.StringIO()
    bar = Progress(10, "pack", stream=stream, every=0.0)
    bar.update(4)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one periodic line, one final line; no carriage returns
    assert all(line.startswith("pack: 4/10 ( 40.0%)") for line in lines)
