"""Models as embedders: a ``model.pt`` (or a bare state dict as arcface_torch saves it) under PyTorch or
an exported ``.onnx`` under onnxruntime, both mapping uint8 RGB ``[B, H, W, 3]`` batches to float32
embeddings with the model's own input normalisation (``model.input_config``, or the ONNX metadata
written by the exporter). The trainer's verification, the embed and eval commands and data cleaning
all embed through this one interface.
"""

from __future__ import annotations

import argparse
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partialfc.common.cli import positive_int
from partialfc.common.distributed import all_gather_shards, shard_range
from partialfc.data.progress import Progress
from partialfc.eval.sources import ImageSource, ImageSourceError
from partialfc.models.input_config import InputConfig, input_config_of
from partialfc.models.model_file import ModelFileError, load_model, read_onnx_input_config

__all__ = [
    "Embedder",
    "OnnxEmbedder",
    "StoredEmbeddings",
    "TorchEmbedder",
    "add_backbone_option",
    "embed_batch",
    "embed_source",
    "evaluating",
    "load_embedder",
]


class Embedder(ABC):
    """uint8 RGB ``[B, H, W, 3]`` -> float32 ``[B, D]`` embeddings (not L2-normalised)."""

    input_config: InputConfig
    embedding_size: int
    description: str

    @abstractmethod
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class TorchEmbedder(Embedder):
    """A PyTorch backbone on ``device``, optionally under autocast (``amp_dtype``); ``on_batch`` is called
    after each batch (training's stall watchdog counts an evaluation's batches as progress)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        embedding_size: int,
        amp_dtype: torch.dtype | None = None,
        description: str = "pytorch",
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self.model, self.device, self.amp_dtype, self.on_batch = model, device, amp_dtype, on_batch
        self.input_config = input_config_of(model)
        self.embedding_size = embedding_size
        self.description = description

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        images = self.input_config.normalize(pixels.to(self.device))
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            embeddings = self.model(images).float()
        if self.on_batch is not None:
            self.on_batch()
        return embeddings


class OnnxEmbedder(Embedder):
    """An exported ``.onnx`` under onnxruntime; input size and normalisation come from its metadata."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort  # optional dependency: only ONNX users need it

        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        )
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own unrelated exception types
            raise ModelFileError(f"{path}: onnxruntime cannot load it: {err}") from None
        self.input_config = read_onnx_input_config(path, self.session.get_modelmeta().custom_metadata_map)
        self.input_name = self.session.get_inputs()[0].name
        self.embedding_size = int(self.session.get_outputs()[0].shape[-1])
        self.description = f"model {path} (onnxruntime {ort.__version__}, {self.session.get_providers()[0]})"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        images = self.input_config.normalize(pixels.cpu()).numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: images})[0])


class StoredEmbeddings:
    """Embeddings ``PREFIX.npy`` written by ``partialfc.embed --raw``, looked up by the image names in
    ``PREFIX.txt``: what a protocol reads in place of running a model."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.description = f"embeddings {prefix}.npy"

    def rows(self, names: list[str]) -> np.ndarray:
        """The embedding of each of ``names``; ValueError names the file lacking one."""
        prefix = self.prefix
        matrix = np.load(prefix.with_name(prefix.name + ".npy"))
        stored = prefix.with_name(prefix.name + ".txt").read_text().splitlines()
        if len(stored) != len(matrix):
            raise ValueError(f"{prefix}.txt lists {len(stored)} names for {len(matrix)} rows of {prefix}.npy")
        row_of = {name: row for row, name in enumerate(stored)}
        missing = [name for name in names if name not in row_of]
        if missing:
            raise ValueError(f"{prefix}.txt: {len(missing)} images of the image list are absent (first: {missing[:3]})")
        return matrix[[row_of[name] for name in names]]


def load_embedder(path: str | Path, device: str | torch.device = "cpu", backbone: str | None = None) -> Embedder:
    """A ``model.pt`` or a bare state dict as arcface_torch saves it (PyTorch), or an ``.onnx`` (onnxruntime),
    as an :class:`Embedder` on ``device``; ``backbone`` names a bare state dict's backbone where several fit."""
    path, device = Path(path), torch.device(device)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ModelFileError(f"{path}: no such ONNX file")
        if backbone is not None:
            raise ModelFileError(f"{path}: an ONNX model carries its own backbone; --backbone is for a state dict")
        return OnnxEmbedder(path, device)
    trained = load_model(path, backbone)
    return TorchEmbedder(
        trained.backbone.to(device),
        device,
        trained.embedding_size,
        description=f"model {path} (pytorch {trained.name}, {device})",
    )


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then back in the mode it was in (a backbone in training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def embed_batch(
    embedder: Embedder, pixels: np.ndarray, flip: bool, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
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


def embed_source(
    embedder: Embedder,
    source: ImageSource,
    batch_size: int,
    flip: bool,
    progress: bool = True,
    normalize: bool = True,
    across_ranks: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings ``[N, D]`` float32, L2-normalised unless ``normalize=False``; raw-embedding norms
    ``[N, 1 or 2]``) of every image.

    ``across_ranks`` (collective when torch.distributed is initialised): each rank embeds its
    :func:`~partialfc.common.distributed.shard_range` block and every rank gets every row, so that
    no rank idles while another embeds a whole evaluation set.
    """
    expected = tuple(embedder.input_config.size)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if across_ranks and dist.is_initialized() else (0, 1)
    first, count = shard_range(len(source.names), rank, world_size)
    width = 2 if flip else 1
    chunks = [torch.empty(0, embedder.embedding_size + width)]  # embeddings, then norms: one gather for both
    with Progress(count, "images") if progress else contextlib.nullcontext() as bar:
        for pixels in source.batches(batch_size, first, first + count):
            if pixels.shape[1:3] != expected:
                raise ImageSourceError(
                    f"{source.origin}: images are {pixels.shape[1]}x{pixels.shape[2]}, the model expects "
                    f"{expected[0]}x{expected[1]} aligned crops"
                )
            batch, batch_norms = embed_batch(embedder, pixels, flip, normalize)
            chunks.append(torch.cat([batch, batch_norms], dim=1).float().cpu())
            if bar is not None:
                bar.update(len(pixels))
    rows = torch.cat(chunks)
    if world_size > 1:
        rows = all_gather_shards(rows, len(source.names))
    return rows[:, :-width].numpy(), rows[:, -width:].numpy()


DEFAULT_MODEL = "runs/quickstart/model.pt"


def add_backbone_option(parser: argparse.ArgumentParser) -> None:
    """--backbone: which registered backbone a bare state dict is, where its keys and shapes fit several."""
    parser.add_argument(
        "--backbone",
        metavar="NAME",
        default=None,
        help="the registered backbone of a bare state dict whose keys and shapes fit several (default: recognised "
        "from them)",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --backbone, --batch-size and --device, shared by the embed and eval commands."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model.pt written by partialfc.train, a bare state dict as arcface_torch saves it (its model.pt, a "
        f"released backbone.pth; the backbone recognised from its keys and shapes), or an .onnx from "
        f"partialfc.export (default: {DEFAULT_MODEL})",
    )
    add_backbone_option(parser)
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass (default 128)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the model, e.g. cpu, cuda, cuda:1 (default: cuda when available)",
    )
