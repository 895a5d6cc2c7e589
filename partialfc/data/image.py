"""JPEG decoding and encoding shared by the loaders, the packer and the synthetic data generator.

One place so that every CPU path decodes identically. simplejpeg (libjpeg-turbo, numpy only)
is used: see docs/data.md for the measured choice.
"""

from __future__ import annotations

import numpy as np
import simplejpeg


class ImageDecodeError(ValueError):
    """Bytes that should hold a JPEG could not be decoded."""


def is_jpeg(data: bytes | memoryview) -> bool:
    """True when the bytes start with a JPEG SOI marker (cheap check before decoding)."""
    return bytes(data[:3]) == b"\xff\xd8\xff"


def decode_jpeg(data: bytes | memoryview) -> np.ndarray:
    """Decode a JPEG into a uint8 HWC RGB array (grayscale and CMYK sources are converted)."""
    if not is_jpeg(data):
        raise ImageDecodeError(f"not a JPEG: starts with {bytes(data[:8])!r} ({len(data)} bytes)")
    try:
        return simplejpeg.decode_jpeg(bytes(data), colorspace="RGB")
    except ValueError as err:
        raise ImageDecodeError(f"corrupt JPEG ({len(data)} bytes): {err}") from None


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) read from the JPEG header without decoding the pixels."""
    if not is_jpeg(data):
        raise ImageDecodeError(f"not a JPEG: starts with {bytes(data[:8])!r} ({len(data)} bytes)")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(bytes(data))
    except ValueError as err:
        raise ImageDecodeError(f"corrupt JPEG header ({len(data)} bytes): {err}") from None
    return int(height), int(width)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 HWC RGB array as JPEG (4:4:4 chroma keeps face colour detail)."""
    array = np.ascontiguousarray(image, dtype=np.uint8)
    return simplejpeg.encode_jpeg(array, quality=quality, colorspace="RGB", colorsubsampling="444")
