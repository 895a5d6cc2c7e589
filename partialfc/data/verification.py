"""InsightFace verification sets (``lfw.bin``, ``cfp_fp.bin``, ...) without MXNet.

A ``.bin`` is a pickle of ``(bins, issame_list)``: 2·P encoded images, pairs consecutive, and
P booleans. Images stay encoded in memory and are decoded to uint8 only in batches: a float32
copy of all of them (as the incumbent makes) costs 12x more memory than needed.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from partialfc.data.image import ImageDecodeError, decode_jpeg

# Only what InsightFace's pickles contain: containers of bytes/bools, optionally numpy arrays.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("_codecs", "encode"),
}


class VerificationError(ValueError):
    """A verification .bin is malformed; the message names the file and what is wrong."""


class _SafeUnpickler(pickle.Unpickler):
    """Refuses any global outside the short list above: a .bin is data, never code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a verification .bin")


def _unpickle(data: bytes, encoding: str) -> object:
    return _SafeUnpickler(io.BytesIO(data), encoding=encoding).load()


def _as_bytes(item: object) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, str):  # a Python 2 str read back with encoding="latin1"
        return item.encode("latin1")
    raise TypeError(type(item).__name__)


def write_verification_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> Path:
    """Write ``(images, issame)`` as InsightFace does; ``images[2k], images[2k+1]`` form pair k."""
    if len(images) != 2 * len(issame):
        raise VerificationError(f"{path}: {len(images)} images for {len(issame)} pairs, need {2 * len(issame)}")
    path = Path(path)
    with open(path, "wb") as f:
        pickle.dump(([bytes(b) for b in images], [bool(s) for s in issame]), f, protocol=4)
    return path


class VerificationSet:
    """Pairs of one verification ``.bin``: encoded images in memory, decoded per batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        data = self.path.read_bytes()
        try:
            try:
                obj = _unpickle(data, "ASCII")
            except UnicodeDecodeError:
                obj = _unpickle(data, "bytes")  # written by Python 2: JPEG bytes were str
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise VerificationError(f"{self.path}: not a verification pickle: {err}") from None
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
            raise VerificationError(f"{self.path}: expected a pickled (bins, issame_list), got {type(obj).__name__}")
        bins, issame = obj
        try:
            self.bins: list[bytes] = [_as_bytes(b) for b in bins]
        except TypeError as err:
            raise VerificationError(f"{self.path}: image entries must be bytes, found {err}") from None
        self.issame = np.asarray(issame, dtype=bool).reshape(-1)
        self.num_pairs = len(self.issame)
        if len(self.bins) != 2 * self.num_pairs:
            raise VerificationError(
                f"{self.path}: {len(self.bins)} images for {self.num_pairs} pairs, need {2 * self.num_pairs}"
            )

    def __len__(self) -> int:
        """Number of images (twice the number of pairs)."""
        return len(self.bins)

    def images(self, indices: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Decode the selected images into one uint8 array ``[n, H, W, 3]`` (RGB)."""
        idx: Sequence[int]
        if indices is None:
            idx = range(len(self.bins))
        elif isinstance(indices, slice):
            idx = range(len(self.bins))[indices]
        else:
            idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        out: np.ndarray | None = None
        for n, i in enumerate(idx):
            try:
                img = decode_jpeg(self.bins[i])
            except ImageDecodeError as err:
                raise VerificationError(f"{self.path}: image {i} (pair {i // 2}): {err}") from None
            if out is None:
                out = np.empty((len(idx), *img.shape), np.uint8)
            elif img.shape != out.shape[1:]:
                raise VerificationError(
                    f"{self.path}: image {i} is {img.shape[0]}x{img.shape[1]}, earlier ones are "
                    f"{out.shape[1]}x{out.shape[2]}"
                )
            out[n] = img
        return out if out is not None else np.empty((0, 0, 0, 3), np.uint8)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Decoded images in order, ``batch_size`` at a time (the last batch may be short)."""
        for start in range(0, len(self.bins), batch_size):
            yield self.images(slice(start, start + batch_size))


def load_verification_sets(directory: str | Path, names: Sequence[str]) -> list[VerificationSet]:
    """Load ``directory/<name>.bin`` for each name, failing with the list of available sets."""
    directory = Path(directory)
    missing = [n for n in names if not (directory / f"{n}.bin").is_file()]
    if missing:
        have = sorted(p.stem for p in directory.glob("*.bin"))
        raise VerificationError(f"{directory}: no verification set {missing}; available: {have}")
    return [VerificationSet(directory / f"{n}.bin") for n in names]
