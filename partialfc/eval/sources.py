"""Images to embed, in a fixed order: a folder of aligned crops, an IJB release (aligned on the fly
from its landmarks), a RecordIO dataset or a verification ``.bin``, each as an :class:`ImageSource`
whose decoded batches :func:`partialfc.eval.embedder.embed_source` runs through a model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data import RecordDataset, VerificationSet
from partialfc.data.align import align_face, decode_bgr
from partialfc.data.ijb_layout import META
from partialfc.data.image import ImageDecodeError, decode_jpeg
from partialfc.data.layout import DatasetError
from partialfc.eval.ijb import IJBRelease, ReleaseImages, open_release, read_release_images

__all__ = [
    "ImageSource",
    "ImageSourceError",
    "image_folder_source",
    "open_image_source",
    "release_image_source",
    "verification_set_source",
]

JPEG_SUFFIXES = (".jpg", ".jpeg")
DECODE_THREADS = 4
"""Threads that decode (and align) each batch: one thread decodes IJB-C's crops at ~2,100/s, slower
than a GPU embeds them (docs/benchmarks.md)."""


class ImageSourceError(ValueError):
    """An image cannot be read, or its size differs from the others or the model's; the message names it."""


@dataclass
class ImageSource:
    """Images to embed: names, optional integer labels, and decoded batches in order."""

    names: list[str]
    labels: np.ndarray | None
    decode: Callable[[list[int]], np.ndarray]  # indices -> uint8 [n, H, W, 3]
    origin: str

    def batches(
        self, batch_size: int, first: int = 0, stop: int | None = None, threads: int = DECODE_THREADS
    ) -> Iterator[np.ndarray]:
        """Decoded batches of images ``first..stop`` in order, one batch ahead of the caller: while it
        embeds a batch, ``threads`` threads decode the next one in parts (the JPEG decoders and the
        OpenCV warp release the GIL)."""
        stop = len(self.names) if stop is None else stop
        with ThreadPoolExecutor(max_workers=threads) as pool:

            def submit(start: int) -> list[tuple[int, Future[np.ndarray]]]:
                indices = np.arange(start, min(start + batch_size, stop))
                parts = np.array_split(indices, min(threads, len(indices)))
                return [(int(part[0]), pool.submit(self.decode, part.tolist())) for part in parts]

            pending: list[tuple[int, Future[np.ndarray]]] | None = None
            for start in range(first, stop, batch_size):
                submitted = submit(start)
                if pending is not None:
                    yield self._join(pending)
                pending = submitted
            if pending is not None:
                yield self._join(pending)

    def _join(self, parts: list[tuple[int, Future[np.ndarray]]]) -> np.ndarray:
        """One batch from its decoded parts; an image size that differs between parts is named."""
        decoded = [(index, future.result()) for index, future in parts]
        shape = decoded[0][1].shape[1:]
        for index, images in decoded:
            if images.shape[1:] != shape:
                raise ImageSourceError(
                    f"{self.origin}: {self.names[index]} is {images.shape[1]}x{images.shape[2]}, "
                    f"{self.names[decoded[0][0]]} {shape[0]}x{shape[1]}: the images of a source must share a size"
                )
        return np.concatenate([images for _, images in decoded])


def _decode_files(root: Path, names: Sequence[str]) -> Callable[[list[int]], np.ndarray]:
    def decode(indices: list[int]) -> np.ndarray:
        images = []
        for i in indices:
            path = root / names[i]
            try:
                images.append(decode_jpeg(path.read_bytes()))
            except (ImageDecodeError, OSError) as err:
                raise ImageSourceError(f"{path}: {err}") from None
            if images[-1].shape != images[0].shape:
                first = root / names[indices[0]]
                raise ImageSourceError(f"{path}: {images[-1].shape[:2]} differs from {images[0].shape[:2]} of {first}")
        return np.stack(images)

    return decode


def image_folder_source(root: str | Path, names: Sequence[str] | None = None) -> ImageSource:
    """JPEGs under ``root`` (recursively, sorted), or the listed ``names`` relative to it."""
    root = Path(root)
    if names is None:
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES)
        if not names:
            raise ImageSourceError(f"{root}: no .jpg/.jpeg images found (searched recursively)")
    return ImageSource(list(names), None, _decode_files(root, list(names)), str(root))


def release_image_source(release: IJBRelease, images: ReleaseImages) -> ImageSource:
    """The images of an IJB release, each aligned with its five landmarks (OpenCV decode and warp, as insightface)."""

    def decode(indices: list[int]) -> np.ndarray:
        aligned = []
        for i in indices:
            path = release.images / images.names[i]
            try:
                aligned.append(align_face(decode_bgr(path.read_bytes(), str(path)), images.landmarks[i]))
            except OSError as err:
                raise ImageSourceError(f"{path}: {err}") from None
        return np.stack(aligned)

    return ImageSource(images.names, None, decode, f"{release.root} (aligned with {release.landmarks.name})")


def verification_set_source(vset: VerificationSet) -> ImageSource:
    """The images of a verification ``.bin`` in pair order: ``pairNNNNNN.a``, ``pairNNNNNN.b``, ..."""
    names = [f"pair{k:06d}.{side}" for k in range(vset.num_pairs) for side in "ab"]
    return ImageSource(names, None, vset.images, str(vset.path))


def open_image_source(path: str | Path) -> ImageSource:
    """A folder of JPEGs, an IJB release folder (aligned on the fly), a RecordIO dataset (``.rec``,
    prefix or directory with one) or a verification ``.bin``."""
    path = Path(path)
    if (path / META).is_dir():
        release = open_release(path)
        return release_image_source(release, read_release_images(release))
    if path.suffix == ".bin":
        return verification_set_source(VerificationSet(path))
    if path.is_dir() and not any(path.glob("*.rec")):
        return image_folder_source(path)
    try:
        dataset = RecordDataset(path)
    except DatasetError as err:
        raise ImageSourceError(
            f"{path}: no images there: not a folder of JPEGs, an IJB release (with meta/), a verification .bin, "
            f"or a RecordIO dataset ({err})"
        ) from None

    def decode(indices: list[int]) -> np.ndarray:
        return np.stack([decode_jpeg(dataset.read_image(i)) for i in indices])

    return ImageSource(dataset.image_names(), dataset.labels, decode, str(path))
