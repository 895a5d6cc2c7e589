"""One cell of the study: (C, r, head, seed) trained on 2 gloo ranks, then evaluated on the held-out set.

The package's real training pieces: a DDP backbone (a small MLP), :class:`~partialfc.PartialFC` (sampling,
margins, distributed cross-entropy) with its lazy centre optimizer,
:class:`~partialfc.training.optimizer.TrainingOptimizer` (one global gradient norm, then both halves step),
the LR schedule. The MLP and the centres are trained for ``epochs`` passes over the training images
(shuffled per epoch by the training seed; the same K and epochs in every cell), then the backbone embeds
the held-out set: 10-fold verification accuracy on fixed pairs, TAR@FAR=1e-3 on them, and 1:N
identification (rank-1, TPIR@FPIR=1e-2) with a gallery of one sample per identity.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from partialfc.common.distributed import derive_seed
from partialfc.config import OptimConfig
from partialfc.core.centre_optim import LazySGD
from partialfc.core.margins import CombinedMargin, Margin, Softmax
from partialfc.core.partial_fc import PartialFC
from partialfc.eval.identification import identification_metrics
from partialfc.eval.scores import strict_tar_at_far, verification_accuracy
from partialfc.training.lr_schedule import LRSchedule
from partialfc.training.optimizer import TrainingOptimizer
from sample_rate.identities import HOLDOUT_BASE, HeldOut, IdentitySpace

_SHUFFLE = 6  # purpose of the training seed's epoch permutations (identities.py numbers the generator's)

HEADS: dict[str, str] = {
    "arcface": "ArcFace s=32 m2=0.5",
    "cosface": "CosFace s=32 m3=0.35",
    "softmax": "softmax (unnormalised)",
}


def build_margin(head: str) -> Margin:
    """The package's margin family for ``head`` (s = 32: D = 32 and up to 1M classes need s ≳ 20)."""
    if head == "arcface":
        return CombinedMargin(s=32.0, m1=1.0, m2=0.5, m3=0.0)
    if head == "cosface":
        return CombinedMargin(s=32.0, m1=1.0, m2=0.0, m3=0.35)
    if head == "softmax":
        return Softmax()
    raise ValueError(f"unknown head {head!r}; one of {sorted(HEADS)}")


@dataclass(frozen=True)
class Settings:
    """Everything but (C, r, head, seed) that a cell's result depends on; cells are resumed by it."""

    space: IdentitySpace = field(default_factory=IdentitySpace)
    holdout: HeldOut = field(default_factory=HeldOut)
    samples_per_identity: int = 8
    epochs: float = 1.0
    batch_per_rank: int = 64
    embedding_size: int = 32
    hidden: int = 256
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """``optim.name`` of backbone and centres (momentum 0.9 / AdamW betas, weight decay 5e-4: the package's
    defaults)."""
    lr: float = 0.1
    max_steps: int = 0
    """0: epochs decide; else stop after this many steps (smoke runs and tests only)."""
    centre_momentum: float | None = None
    """Diagnostics only: SGD momentum of the centres alone (None: the backbone's, as the trainer does)."""
    dense_centre_momentum: bool | None = None
    """Diagnostics only: :class:`DenseMomentumSGD` for the centres instead of the package's lazy SGD."""
    curve_points: int | None = None
    """Loss points recorded along the run (None: every ``steps // 20`` steps)."""
    rank1_points: int | None = None
    """Held-out rank-1 points along the run, on the first ``CURVE_GALLERY`` identities (None: none)."""

    def key(self) -> str:
        """The settings as JSON; options left at None (at any depth) are omitted, so adding one keeps
        earlier results valid."""
        return json.dumps(_without_none(asdict(self)), sort_keys=True)


def _without_none(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


class MLP(nn.Module):
    """The backbone: d -> hidden -> hidden -> D with ReLU and batch norm (per-rank statistics, as the trainer)."""

    def __init__(self, input_dim: int, hidden: int, embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass
class DenseMomentumSGD(LazySGD):
    """Diagnostics: centre SGD whose momentum moves every row each step, sampled or not.

    That is dense SGD on a gradient that is zero off the sampled rows (the incumbent's behaviour,
    weight decay aside: here only sampled rows decay), against which the package's lazy rule (a row's
    momentum waits, frozen, until the row is sampled again) is compared. Needs every sampled row in
    one ``update`` call (fp32 rows per call: 16 MiB, 131,072 rows at D = 32) and fp32 storage.
    """

    def update(
        self,
        weight: torch.Tensor,
        state: dict[str, torch.Tensor],
        rows: torch.Tensor | slice,
        row_values: torch.Tensor,
        grad: torch.Tensor,
        generator: torch.Generator | None = None,
        found_inf: torch.Tensor | None = None,
    ) -> None:
        if found_inf is not None and bool(found_inf):
            return
        if isinstance(rows, slice):
            rows = torch.arange(weight.shape[0])[rows]
        if rows.numel() != grad.shape[0] or weight.dtype != torch.float32:
            raise ValueError("DenseMomentumSGD: needs fp32 centres and all sampled rows in one call")
        buf = state["momentum"]
        buf.mul_(self.momentum).index_add_(0, rows, grad.add_(row_values, alpha=self.weight_decay))
        weight.sub_(buf, alpha=self.lr)


def training_batches(
    settings: Settings,
    num_classes: int,
    seed: int,
    rank: int,
    world_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (features, labels) per step: epochs over the C·K samples, reshuffled each epoch
    by the training seed; every rank walks the same permutation and takes its slice of each global batch."""
    space = settings.space
    basis = space.basis()
    global_batch = settings.batch_per_rank * world_size
    counts = space.images(np.arange(num_classes), settings.samples_per_identity)
    first_slot = np.cumsum(counts) - counts
    slots = int(counts.sum())
    steps_per_epoch = slots // global_batch
    epoch = 0
    while True:
        order = torch.randperm(
            slots, generator=torch.Generator().manual_seed(derive_seed(seed, _SHUFFLE, epoch))
        ).numpy()
        for step in range(steps_per_epoch):
            start = step * global_batch + rank * settings.batch_per_rank
            chosen = order[start : start + settings.batch_per_rank]
            ids = np.searchsorted(first_slot, chosen, side="right") - 1
            index = chosen - first_slot[ids]
            labels = space.labels(ids, index, num_classes)
            yield torch.from_numpy(space.samples(ids, index, basis)), torch.from_numpy(labels)
        epoch += 1


def total_steps(settings: Settings, num_classes: int, world_size: int) -> int:
    """``epochs`` passes over the training images: steps = epochs · C · (expected images per identity) / N."""
    images = int(num_classes * settings.space.mean_images(settings.samples_per_identity))
    per_epoch = images // (settings.batch_per_rank * world_size)
    if per_epoch == 0:
        raise ValueError(f"C={num_classes} ({images} images) is below one global batch")
    steps = math.ceil(settings.epochs * per_epoch)
    return min(steps, settings.max_steps) if settings.max_steps else steps


CURVE_GALLERY = 2000
"""Enrolled held-out identities of the rank-1 points along a run (a cheap read-out of the same set)."""


def _embed(backbone: nn.Module, features: np.ndarray) -> np.ndarray:
    """L2-normalised float64 embeddings, the backbone in eval mode (running batch-norm statistics)."""
    backbone.eval()
    with torch.no_grad():
        embeddings = torch.cat([backbone(chunk) for chunk in torch.from_numpy(features).split(4096)])
    backbone.train()
    return nn.functional.normalize(embeddings.double(), dim=1).numpy()


def curve_rank1(backbone: nn.Module, gallery: np.ndarray, probes: np.ndarray) -> float:
    """Rank-1 of probe i against gallery row i's identity (one sample each, row order = identity)."""
    subjects = np.arange(len(gallery))
    result = identification_metrics(_embed(backbone, probes), subjects, _embed(backbone, gallery), subjects)
    return result.rank(1)


def evaluate(backbone: nn.Module, settings: Settings) -> dict[str, float]:
    """Held-out verification (10-fold accuracy, TAR@FAR=1e-3, and TAR@FAR=1e-4 with the extra impostors) and
    identification (rank-1, TPIR@FPIR=1e-2)."""
    holdout = settings.holdout
    ids, index = holdout.ids()
    embeddings = _embed(backbone, settings.space.samples(ids, index))
    first, second, issame = holdout.pair_rows(settings.space.seed)
    scores = np.einsum("ij,ij->i", embeddings[first], embeddings[second])
    accuracy = verification_accuracy(scores, issame)
    tar, _ = strict_tar_at_far(scores[issame], scores[~issame], [1e-3])  # at most FAR x negatives accepted
    extra: dict[str, float] = {}
    if holdout.impostors:
        more_first, more_second = holdout.impostor_rows(settings.space.seed)
        impostors = np.r_[scores[~issame], np.einsum("ij,ij->i", embeddings[more_first], embeddings[more_second])]
        extra["tar_at_far_1e-4"] = float(strict_tar_at_far(scores[issame], impostors, [1e-4])[0][0])
    # 1:N: sample 0 of each enrolled identity is the gallery. Without ``non_mated``, the first 90% of the
    # identities are enrolled and every other sample of every identity probes; with it, sample 1 of each
    # enrolled identity is its mated probe and every sample of the non-mated identities probes.
    subject = (ids - HOLDOUT_BASE).astype(np.int64)
    if holdout.non_mated is None:
        enrolled = subject < int(0.9 * holdout.identities)
        probes = index != 0
    else:
        enrolled = subject < holdout.identities
        probes = (index == 1) | ~enrolled
    gallery = (index == 0) & enrolled
    ident = identification_metrics(
        embeddings[probes], subject[probes], embeddings[gallery], subject[gallery], fpirs=(1e-2,)
    )
    return {
        "verify_accuracy": accuracy.mean,
        "verify_fold_std": accuracy.std,
        "tar_at_far_1e-3": float(tar[0]),
        "rank1": ident.rank(1),
        "tpir_at_fpir_1e-2": ident.tpir_at_fpir[1e-2],
        **extra,
    }


@dataclass(frozen=True)
class Cell:
    num_classes: int
    sample_rate: float
    head: str
    seed: int

    def name(self) -> str:
        return f"C={self.num_classes} r={self.sample_rate:g} {self.head} seed {self.seed}"


def run_cell(cell: Cell, settings: Settings, rank: int, world_size: int) -> dict[str, object]:
    """Train one cell with the package's step pieces on this process group; every rank returns the record."""
    torch.manual_seed(derive_seed(cell.seed, 0))  # identical backbone initialisation on every rank
    backbone = MLP(settings.space.input_dim, settings.hidden, settings.embedding_size)
    model: nn.Module = nn.parallel.DistributedDataParallel(backbone) if world_size > 1 else backbone
    optim = OptimConfig(name=settings.optimizer, lr=settings.lr)
    centre_optim = optim if settings.centre_momentum is None else replace(optim, momentum=settings.centre_momentum)
    centres = centre_optim.build_centre_optimizer()
    if settings.dense_centre_momentum:
        assert isinstance(centres, LazySGD), "the dense-momentum diagnostic replaces the SGD centre optimizer"
        centres = DenseMomentumSGD(**asdict(centres))
    pfc = PartialFC(
        settings.embedding_size,
        cell.num_classes,
        cell.sample_rate,
        build_margin(cell.head),
        optimizer=centres,
        seed=cell.seed,
    )
    optimizer = TrainingOptimizer(optim, backbone, pfc)
    steps = total_steps(settings, cell.num_classes, world_size)
    schedule = LRSchedule(settings.lr, 0, steps, "poly", 2.0)
    batches = training_batches(settings, cell.num_classes, cell.seed, rank, world_size)
    sampled = torch.zeros((), dtype=torch.float64)
    losses: list[float] = []
    loss_steps: list[int] = []
    every = max(1, steps // (settings.curve_points or 20))
    points = settings.rank1_points or 0
    rank1_at = {round(steps * (i + 1) / points) for i in range(points)}
    if rank1_at and rank == 0:
        ids = HOLDOUT_BASE + np.arange(min(CURVE_GALLERY, settings.holdout.identities), dtype=np.uint64)
        curve_sets = [settings.space.samples(ids, np.full(len(ids), j, np.uint64)) for j in (0, 1)]
    rank1_curve: list[list[float]] = []
    curve_seconds = 0.0
    start = time.perf_counter()
    for step in range(steps):  # the trainer's train_step without its logging and watchdog
        optimizer.set_lr(schedule(step))
        features, labels = next(batches)
        loss = pfc(model(features), labels)
        (loss * optimizer.loss_multiplier).backward()
        sampled += pfc.last_sampled_rows.numel()
        optimizer.step(loss.detach(), step_number=step + 1)
        if step % every == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
            loss_steps.append(step + 1)
        if step + 1 in rank1_at and rank == 0:  # the other rank waits at the next step's first collective
            tick = time.perf_counter()
            rank1_curve.append([step + 1, curve_rank1(backbone, *curve_sets)])
            curve_seconds += time.perf_counter() - tick
    if world_size > 1:
        dist.all_reduce(sampled)
    seconds = time.perf_counter() - start - curve_seconds
    tick = time.perf_counter()
    metrics = evaluate(backbone, settings) if rank == 0 else {}
    curves = (
        {
            "loss_steps": loss_steps,
            "rank1_curve": rank1_curve,
            "eval_seconds": round(curve_seconds + time.perf_counter() - tick, 2),
        }
        if settings.curve_points or settings.rank1_points
        else {}
    )
    return {
        "num_classes": cell.num_classes,
        "sample_rate": cell.sample_rate,
        "head": cell.head,
        "seed": cell.seed,
        **metrics,
        "steps": steps,
        "global_batch": settings.batch_per_rank * world_size,
        "centres_per_step": float(sampled) / max(steps, 1),
        "final_loss": losses[-1] if losses else math.nan,
        "loss_curve": losses,
        "train_seconds": round(seconds, 2),
        **curves,
        "world_size": world_size,
        "settings": json.loads(settings.key()),
    }
