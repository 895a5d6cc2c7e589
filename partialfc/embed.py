"""Face embeddings from a trained model: ``python -m partialfc.embed --help``.

Also the one place that opens a trained model for inference, shared by ``partialfc.eval`` and
``partialfc.export``: :func:`load_backbone` reads this project's ``model.pt``
(``{"backbone", "embedding_size", "state_dict"}``, written by the trainer) and
:func:`load_embedder` turns a ``model.pt`` or an exported ``.onnx`` into an :class:`Embedder`,
which maps uint8 RGB ``[B, H, W, 3]`` batches to float32 embeddings with the model's own input
normalisation (``model.input_config``, or the ONNX metadata written by the exporter).
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partialfc.cli import ArgumentParser
from partialfc.data import RecordDataset, VerificationSet
from partialfc.data.image import ImageDecodeError, decode_jpeg
from partialfc.data.progress import Progress
from partialfc.eval.align import align_face, decode_bgr
from partialfc.eval.ijb import META, IJBRelease, ReleaseImages, open_release, read_release_images
from partialfc.models import create_model
from partialfc.models.input_config import InputConfig

__all__ = [
    "Embedder",
    "ImageSource",
    "ModelFileError",
    "TrainedModel",
    "OnnxEmbedder",
    "TorchEmbedder",
    "embed_batch",
    "embed_source",
    "load_backbone",
    "load_embedder",
    "open_image_source",
    "release_image_source",
]

MODEL_KEYS = ("backbone", "embedding_size", "state_dict")
JPEG_SUFFIXES = (".jpg", ".jpeg")


class ModelFileError(ValueError):
    """A model file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TrainedModel:
    """A ``model.pt`` opened: the backbone (eval mode, CPU), its registry name and embedding size."""

    backbone: nn.Module
    name: str
    embedding_size: int


def load_backbone(path: str | Path) -> TrainedModel:
    """The backbone of a ``model.pt``, with strict key matching."""
    path = Path(path)
    if path.is_dir():
        inside = path / "model.pt"
        hint = f"its model is {inside}: --model {inside}" if inside.is_file() else "give a model.pt (written into a run directory at the end of training)"
        raise ModelFileError(f"{path}: a directory, not a model file; {hint}")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ModelFileError(f"{path}: no such model file{where}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ModelFileError(f"{path}: not a model.pt written by partialfc.train: {' '.join(str(err).split())[:300]}") from None
    if isinstance(saved, dict) and saved and all(isinstance(value, torch.Tensor) for value in saved.values()):
        raise ModelFileError(
            f"{path}: a bare state_dict ({len(saved)} tensors, e.g. {next(iter(saved))!r}), such as insightface's "
            "backbone.pth: it does not say which backbone or embedding size it is. Start a run from it with "
            f"`python -m partialfc.train --model.init_from {path} --model.backbone NAME`; that run's model.pt "
            "then works here")
    if not isinstance(saved, dict) or not all(key in saved for key in MODEL_KEYS):
        found = (f"keys {sorted(map(str, saved))[:8]}" + (" ..." if len(saved) > 8 else "")) if isinstance(saved, dict) \
            else type(saved).__name__
        raise ModelFileError(f"{path}: not a model.pt written by partialfc.train (keys {list(MODEL_KEYS)}); found {found}")
    try:
        model = create_model(str(saved["backbone"]), int(saved["embedding_size"]))
    except ValueError as err:
        raise ModelFileError(f"{path}: {err}") from None
    fit = f"weights do not fit backbone {saved['backbone']!r} with embedding size {saved['embedding_size']}"
    try:
        result = model.load_state_dict(saved["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches are raised even when strict=False
        raise ModelFileError(f"{path}: {fit}: {' '.join(str(err).split())}") from None  # one line
    if result.missing_keys or result.unexpected_keys:
        raise ModelFileError(
            f"{path}: {fit}: {len(result.missing_keys)} missing keys {result.missing_keys[:8]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:8]}"
        )
    return TrainedModel(model.eval(), str(saved["backbone"]), int(saved["embedding_size"]))


class Embedder(ABC):
    """uint8 RGB ``[B, H, W, 3]`` -> float32 ``[B, D]`` embeddings (not L2-normalised)."""

    input_config: InputConfig
    embedding_size: int
    description: str

    @abstractmethod
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class TorchEmbedder(Embedder):
    """A PyTorch backbone on ``device``, optionally under autocast (``amp_dtype``)."""

    def __init__(self, model: nn.Module, device: torch.device, embedding_size: int,
                 amp_dtype: torch.dtype | None = None, description: str = "pytorch") -> None:
        self.model, self.device, self.amp_dtype = model, device, amp_dtype
        self.input_config: InputConfig = model.input_config
        self.embedding_size = embedding_size
        self.description = description

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        images = self.input_config.normalize(pixels.to(self.device))
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return self.model(images).float()


class OnnxEmbedder(Embedder):
    """An exported ``.onnx`` under onnxruntime; input size and normalisation come from its metadata."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort  # optional dependency: only ONNX users need it

        from partialfc.export import read_input_config

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own unrelated exception types
            raise ModelFileError(f"{path}: onnxruntime cannot load it: {err}") from None
        self.input_config = read_input_config(path, self.session.get_modelmeta().custom_metadata_map)
        self.input_name = self.session.get_inputs()[0].name
        self.embedding_size = int(self.session.get_outputs()[0].shape[-1])
        self.description = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        images = self.input_config.normalize(pixels.cpu()).numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: images})[0])


def load_embedder(path: str | Path, device: str | torch.device = "cpu") -> Embedder:
    """A ``model.pt`` (PyTorch) or ``.onnx`` (onnxruntime) as an :class:`Embedder` on ``device``."""
    path, device = Path(path), torch.device(device)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ModelFileError(f"{path}: no such ONNX file")
        return OnnxEmbedder(path, device)
    trained = load_backbone(path)
    return TorchEmbedder(trained.backbone.to(device), device, trained.embedding_size,
                         description=f"pytorch {trained.name} ({device})")


def embed_batch(embedder: Embedder, pixels: np.ndarray, flip: bool,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings ``[B, D]``, L2-normalised unless ``normalize=False``; norms of the raw embeddings ``[B, 1 or 2]``).

    With ``flip`` the embeddings of the image and its mirror image are summed before normalising
    (the verification protocol); the norms are those of each raw embedding, insightface's "XNorm".
    IJB's norm-score mode (N1) needs the sums unnormalised.
    """
    views = [pixels, pixels[:, :, ::-1]] if flip else [pixels]
    raw = [embedder(torch.from_numpy(np.ascontiguousarray(view))) for view in views]
    norms = torch.stack([r.norm(dim=1) for r in raw], dim=1)
    summed = torch.stack(raw).sum(dim=0)
    return (F.normalize(summed, dim=1) if normalize else summed), norms


# ---------------------------------------------------------------------------------- image sources
@dataclass
class ImageSource:
    """Images to embed: names, optional integer labels, and decoded batches in order."""

    names: list[str]
    labels: np.ndarray | None
    decode: Callable[[list[int]], np.ndarray]  # indices -> uint8 [n, H, W, 3]
    origin: str

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Decoded batches in order; the next batch is decoded while the caller embeds this one."""
        starts = range(0, len(self.names), batch_size)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for start in starts:
                indices = list(range(start, min(start + batch_size, len(self.names))))
                future = pool.submit(self.decode, indices)
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()


def _decode_files(root: Path, names: Sequence[str]) -> Callable[[list[int]], np.ndarray]:
    def decode(indices: list[int]) -> np.ndarray:
        images = []
        for i in indices:
            path = root / names[i]
            try:
                images.append(decode_jpeg(path.read_bytes()))
            except (ImageDecodeError, OSError) as err:
                raise ModelFileError(f"{path}: {err}") from None
            if images[-1].shape != images[0].shape:
                first = root / names[indices[0]]
                raise ModelFileError(f"{path}: {images[-1].shape[:2]} differs from {images[0].shape[:2]} of {first}")
        return np.stack(images)
    return decode


def image_folder_source(root: str | Path, names: Sequence[str] | None = None) -> ImageSource:
    """JPEGs under ``root`` (recursively, sorted), or the listed ``names`` relative to it."""
    root = Path(root)
    if names is None:
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES)
        if not names:
            raise ModelFileError(f"{root}: no .jpg/.jpeg images found (searched recursively)")
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
                raise ModelFileError(f"{path}: {err}") from None
        return np.stack(aligned)

    return ImageSource(images.names, None, decode, f"{release.root} (aligned with {release.landmarks.name})")


def open_image_source(path: str | Path) -> ImageSource:
    """A folder of JPEGs, an IJB release folder (aligned on the fly), a RecordIO dataset (``.rec``,
    prefix or directory with one) or a verification ``.bin``."""
    path = Path(path)
    if (path / META).is_dir():
        release = open_release(path)
        return release_image_source(release, read_release_images(release))
    if path.suffix == ".bin":
        vset = VerificationSet(path)
        names = [f"pair{k:06d}.{side}" for k in range(vset.num_pairs) for side in "ab"]
        return ImageSource(names, None, vset.images, str(path))
    if path.is_dir() and not any(path.glob("*.rec")):
        return image_folder_source(path)
    dataset = RecordDataset(path)

    def decode(indices: list[int]) -> np.ndarray:
        return np.stack([decode_jpeg(dataset.read_image(i)) for i in indices])

    return ImageSource(dataset.image_names(), dataset.labels, decode, str(path))


def embed_source(embedder: Embedder, source: ImageSource, batch_size: int, flip: bool,
                 progress: bool = True, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings ``[N, D]`` float32, L2-normalised unless ``normalize=False``; raw-embedding norms
    ``[N, 1 or 2]``) of every image."""
    expected = tuple(embedder.input_config.size)
    embeddings, norms = [], []
    with Progress(len(source.names), "images") if progress else contextlib.nullcontext() as bar:
        for pixels in source.batches(batch_size):
            if pixels.shape[1:3] != expected:
                raise ModelFileError(
                    f"{source.origin}: images are {pixels.shape[1]}x{pixels.shape[2]}, the model expects "
                    f"{expected[0]}x{expected[1]} aligned crops"
                )
            batch, batch_norms = embed_batch(embedder, pixels, flip, normalize)
            embeddings.append(batch.cpu().numpy())
            norms.append(batch_norms.cpu().numpy())
            if bar is not None:
                bar.update(len(pixels))
    width = 2 if flip else 1
    if not embeddings:
        return np.empty((0, embedder.embedding_size), np.float32), np.empty((0, width), np.float32)
    return np.concatenate(embeddings), np.concatenate(norms)


# ---------------------------------------------------------------------------------- command line
DEFAULT_MODEL = "runs/quickstart/model.pt"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --batch-size and --device, shared by the embed and eval commands."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model.pt written by partialfc.train, or an .onnx from partialfc.export (default: {DEFAULT_MODEL})")
    parser.add_argument("--batch-size", type=_positive_int, default=128, help="images per forward pass (default 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for the model, e.g. cpu, cuda, cuda:1 (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.embed",
        description="Embed aligned face crops with a trained model and write OUT.npy (float32 [N, D], "
        "L2-normalised rows unless --raw), OUT.txt (one image name per line, same order) and, for a .rec, "
        "OUT.labels.npy (int64 class ids). Prints progress and images/s on stderr.",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="a folder of .jpg/.jpeg crops (searched recursively; names are paths relative to it), "
                        "an IJB-B/C release folder (loose_crop/ + meta/; each crop aligned with its five landmarks, "
                        "names as in the image list), "
                        "a RecordIO dataset (.rec, its prefix, or a directory holding one; names are record keys, as "
                        "SHARD.rec:KEY when there are several shards), "
                        "or a verification .bin (names pairNNNNNN.a / .b)")
    add_model_options(parser)
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="output prefix: writes OUT.npy, OUT.txt (and OUT.labels.npy for a .rec)")
    parser.add_argument("--no-flip", action="store_true",
                        help="embed each image alone instead of summing it with its mirror image")
    parser.add_argument("--raw", action="store_true",
                        help="write the unnormalised (image + mirror) sums: `eval pairs/identify --embeddings` "
                        "then keep each image's norm as weight (insightface's N1 mode)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        embedder = load_embedder(args.model, args.device)
        source = open_image_source(args.source)
        start = time.perf_counter()
        embeddings, _ = embed_source(embedder, source, args.batch_size, flip=not args.no_flip,
                                     progress=not args.quiet, normalize=not args.raw)
        seconds = time.perf_counter() - start
    except (ValueError, OSError) as err:  # ModelFileError, DatasetError, VerificationError ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_name(out.name + ".npy"), embeddings)
    out.with_name(out.name + ".txt").write_text("".join(f"{name}\n" for name in source.names))
    if source.labels is not None:
        np.save(out.with_name(out.name + ".labels.npy"), source.labels)
    print(f"{len(embeddings)} images -> {out}.npy ({embeddings.shape[1]}-d, {embedder.description}) in "
          f"{seconds:.1f}s, {len(embeddings) / max(seconds, 1e-9):,.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
