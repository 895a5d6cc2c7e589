"""Sub-centre data cleaning (Deng et al., ECCV 2020, "Sub-center ArcFace", §3.2).

A model trained with ``loss.sub_centers = K > 1`` lets noisy images of a class gather around
non-dominant sub-centres, while its clean images pick the *dominant* one (the sub-centre most of
the class's images are closest to). Cleaning embeds every image of the dataset with the trained
backbone, finds each class's dominant sub-centre, and drops the images whose angle to it exceeds
a threshold (75° in the paper). Classes left without images are dropped with them. The result is
an image subset (:mod:`partialfc.data.subset`) that ``data.path`` can point to; the ``.rec``
files are only read. The paper then retrains (or continues) with K = 1 on the cleaned data.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from partialfc.data.dataset import RecordDataset
from partialfc.data.progress import Progress
from partialfc.data.subset import write_subset
from partialfc.eval.embedder import Embedder, TorchEmbedder, embed_source, load_embedder
from partialfc.eval.sources import ImageSource
from partialfc.models import create_model
from partialfc.training.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    read_centres,
    read_manifest,
    verify_file,
)

__all__ = ["CleanReport", "clean_dataset", "load_run_embedder"]

_CHUNK_IMAGES = 16384  # images embedded per chunk: bounds memory to the per-image cosines, not N×D


@dataclass(frozen=True)
class CleanReport:
    checkpoint: str
    model: str
    sub_centers: int
    max_angle_deg: float
    images: int
    kept_images: int
    classes: int
    """Classes with at least one image in the dataset."""
    kept_classes: int
    off_dominant_images: int
    """Images whose nearest sub-centre of their class is not the dominant one (kept or not)."""
    dropped_classes: list[int]
    """Class ids left without an image; every dropped image is listed in the output's dropped.tsv."""

    def lines(self) -> list[str]:
        shown = ", ".join(map(str, self.dropped_classes[:20]))
        more = f" and {len(self.dropped_classes) - 20} more" if len(self.dropped_classes) > 20 else ""
        dropped_images, dropped_classes = self.images - self.kept_images, self.classes - self.kept_classes
        return [
            f"centres   {self.checkpoint} ({self.sub_centers} sub-centre(s) per class); backbone {self.model}",
            f"images    {self.kept_images:,} kept, {dropped_images:,} dropped "
            f"({100.0 * dropped_images / max(self.images, 1):.2f}%) of {self.images:,}: angle to the class's "
            f"dominant sub-centre > {self.max_angle_deg:g}°",
            f"classes   {self.kept_classes:,} kept, {dropped_classes:,} dropped (no image left) of {self.classes:,}"
            + (f": class {shown}{more}" if self.dropped_classes else ""),
            f"nearest sub-centre not the dominant one: {self.off_dominant_images:,} images",
            "dropped images (source index, class, angle to the dominant sub-centre): dropped.tsv in the output",
        ]


def load_run_embedder(
    run_dir: Path, checkpoint: Path, model: Path | None, device: torch.device
) -> tuple[Embedder, str]:
    """The backbone to embed with, and where it came from.

    ``model`` (a model.pt or .onnx) if given, else ``RUN_DIR/model.pt`` (written at the end of
    training; the EMA weights when ``train.ema_decay`` is set), else the checkpoint's ``model``
    component in ``trainer.pt`` with the backbone named in its manifest's config.
    """
    path = model if model is not None else run_dir / "model.pt"
    if model is not None or path.is_file():
        return load_embedder(path, device), str(path)
    manifest = read_manifest(checkpoint)
    shared_path = checkpoint / "trainer.pt"
    verify_file(shared_path, manifest)
    config = manifest.get("config", {}).get("model", {})
    if "backbone" not in config or "embedding_size" not in config:
        raise CheckpointError(f"{checkpoint}/meta.json: config lacks model.backbone/model.embedding_size; pass --model")
    backbone = create_model(str(config["backbone"]), int(config["embedding_size"]))
    backbone.load_state_dict(torch.load(shared_path, map_location="cpu", weights_only=True)["model"])
    embedder = TorchEmbedder(
        backbone.eval().to(device),
        device,
        int(config["embedding_size"]),
        description=f"pytorch {config['backbone']} ({device})",
    )
    return embedder, f"{shared_path} (model)"


def _own_class_cosines(
    embedder: Embedder, dataset: RecordDataset, centres: torch.Tensor, batch_size: int, progress: bool
) -> np.ndarray:
    """``[N, K]``: cosine of every image to each sub-centre of its own class."""
    unit_centres = F.normalize(centres, dim=2)
    labels = torch.from_numpy(dataset.labels)
    cosines = np.empty((dataset.num_images, centres.shape[1]), np.float32)
    with Progress(dataset.num_images, "images") if progress else contextlib.nullcontext() as bar:
        for start in range(0, dataset.num_images, _CHUNK_IMAGES):
            stop = min(start + _CHUNK_IMAGES, dataset.num_images)

            def decode(indices: list[int], first: int = start) -> np.ndarray:
                return np.stack([dataset.decode_image(first + i) for i in indices])

            chunk = ImageSource([str(i) for i in range(start, stop)], None, decode, str(dataset.shards[0].rec_path))
            embeddings, _ = embed_source(embedder, chunk, batch_size, flip=False, progress=False)
            own = unit_centres[labels[start:stop]]  # [n, K, D]
            cosines[start:stop] = torch.einsum("nd,nkd->nk", torch.from_numpy(embeddings), own).numpy()
            if bar is not None:
                bar.update(stop - start)
    return cosines


def clean_dataset(
    run_dir: str | Path,
    dataset_path: str | Path,
    max_angle_deg: float,
    out: str | Path | None = None,
    *,
    model: str | Path | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Path, CleanReport]:
    """Write the cleaned image subset of ``dataset_path`` (default ``RUN_DIR/cleaned``); returns it and the report."""
    run_dir = Path(run_dir)
    if not 0.0 < max_angle_deg < 180.0:
        raise ValueError(f"--angle must be in (0, 180) degrees, got {max_angle_deg}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    checkpoint = find_latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no complete checkpoint to read the class centres from")
    centres, sub_centers = read_centres(checkpoint)
    embedder, model_origin = load_run_embedder(
        run_dir, checkpoint, Path(model) if model else None, torch.device(device)
    )
    with RecordDataset(dataset_path) as dataset:
        if dataset.num_classes != centres.shape[0]:
            raise ValueError(
                f"{dataset_path}: {dataset.num_classes} classes, the centres of {checkpoint} "
                f"{centres.shape[0]}: not the dataset this run trained on"
            )
        if embedder.embedding_size != centres.shape[2]:
            raise ValueError(
                f"{model_origin}: {embedder.embedding_size}-d embeddings, the centres of {checkpoint} "
                f"are {centres.shape[2]}-d"
            )
        cosines = _own_class_cosines(embedder, dataset, centres, batch_size, progress)
        labels = dataset.labels
        nearest = cosines.argmax(axis=1)
        votes = np.bincount(labels * sub_centers + nearest, minlength=dataset.num_classes * sub_centers)
        dominant = votes.reshape(dataset.num_classes, sub_centers).argmax(axis=1)
        to_dominant = cosines[np.arange(len(labels)), dominant[labels]]
        keep = to_dominant >= math.cos(math.radians(max_angle_deg))
        report = CleanReport(
            checkpoint=str(checkpoint),
            model=model_origin,
            sub_centers=sub_centers,
            max_angle_deg=max_angle_deg,
            images=len(labels),
            kept_images=int(keep.sum()),
            classes=len(np.unique(labels)),
            kept_classes=len(np.unique(labels[keep])),
            off_dominant_images=int((nearest != dominant[labels]).sum()),
            dropped_classes=sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[keep]).tolist())),
        )
        # Indices into the dataset as opened: for a subset of a subset, map back to the source images.
        source_indices = np.flatnonzero(keep)
        if dataset.subset_indices is not None:
            source_indices = dataset.subset_indices[source_indices]
        directory = write_subset(
            out if out is not None else run_dir / "cleaned",
            dataset.shards,
            dataset.source_num_images,
            source_indices,
            asdict(report),
        )
        dropped = np.flatnonzero(~keep)
        angles = np.degrees(np.arccos(np.clip(to_dominant[dropped], -1.0, 1.0)))
        source = dataset.subset_indices[dropped] if dataset.subset_indices is not None else dropped
        rows = [f"{index}\t{label}\t{angle:.1f}" for index, label, angle in zip(source, labels[dropped], angles)]
        (directory / "dropped.tsv").write_text("\n".join(["source_index\tclass\tangle_deg", *rows]) + "\n")
    return directory, report
