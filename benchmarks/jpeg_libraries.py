"""JPEG decode and encode per image, one thread: simplejpeg (the package's decoder) against OpenCV and Pillow.

    python benchmarks/jpeg_libraries.py [--images 1000] [--quality 90] [--repeats 3]

The images are the synthetic generator's 112x112 faces encoded at ``--quality``; every library decodes
the same bytes to an RGB uint8 array (OpenCV's BGR result is converted, as a loader would have to) and
encodes the decoded images at quality 95. Prints the best of ``--repeats`` per library.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from partialfc.data.image import decode_jpeg, encode_jpeg
from partialfc.data.synth import render

T = TypeVar("T")


def libraries() -> dict[str, tuple[Callable[[bytes], np.ndarray], Callable[[np.ndarray], bytes]]]:
    """(decode to RGB, encode RGB at quality 95) per library installed here."""
    found: dict[str, tuple[Callable[[bytes], np.ndarray], Callable[[np.ndarray], bytes]]] = {}
    import simplejpeg

    found[f"simplejpeg {simplejpeg.__version__}"] = (decode_jpeg, lambda image: encode_jpeg(image, quality=95))
    try:
        import cv2

        def cv2_decode(data: bytes) -> np.ndarray:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:  # OpenCV reports a corrupt image by returning None
                raise ValueError(f"OpenCV could not decode a JPEG of {len(data)} bytes")
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        def cv2_encode(image: np.ndarray) -> bytes:
            ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError(f"OpenCV could not encode an image of shape {image.shape}")
            return encoded.tobytes()  # bytes, as the other encoders return

        found[f"opencv {cv2.__version__}"] = (cv2_decode, cv2_encode)
    except ImportError:
        pass
    try:
        from PIL import Image, __version__

        def pil_encode(image: np.ndarray) -> bytes:
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="JPEG", quality=95)
            return out.getvalue()

        found[f"Pillow {__version__}"] = (
            lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
            pil_encode,
        )
    except ImportError:
        pass
    return found


def best_seconds(function: Callable[[T], object], inputs: list[T], repeats: int) -> float:
    """Best of ``repeats`` times of ``function`` over every input, the slower runs being other work's noise."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [function(item) for item in inputs]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="JPEGs to decode (default 1000)")
    parser.add_argument("--quality", type=int, default=90, help="quality they are encoded at (default 90)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    args = parser.parse_args()
    images = [render(0, k % 100, k // 100) for k in range(args.images)]
    jpegs = [encode_jpeg(image, quality=args.quality) for image in images]
    print(
        f"{len(jpegs)} JPEGs of 112x112, quality {args.quality}, "
        f"{np.mean([len(j) for j in jpegs]) / 1e3:.1f} KB average"
    )
    print("| library | decode | decode rate | encode (q95) |\n| --- | --- | --- | --- |")
    for name, (decode, encode) in libraries().items():
        decoded = [decode(data) for data in jpegs]
        assert all(image.shape == (112, 112, 3) for image in decoded), name
        decode_s = best_seconds(decode, jpegs, args.repeats) / len(jpegs)
        encode_s = best_seconds(encode, decoded, args.repeats) / len(jpegs)
        print(f"| {name} | {decode_s * 1e6:.0f} µs | {1 / decode_s:,.0f} img/s | {encode_s * 1e6:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
