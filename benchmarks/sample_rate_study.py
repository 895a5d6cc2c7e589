"""How low can Partial FC's sample rate go? A feature-level study over many classes.

Image training at 100k+ classes is out of reach on CPUs, but the question (does sampling a fraction
r of the negative centres cost accuracy?) is about the classifier layer, so this study trains on
synthetic identities defined directly in feature space, with a small MLP as the backbone and the
package's real training pieces: a DDP backbone, :class:`~partialfc.PartialFC` (sampling, margins,
distributed cross-entropy) with its lazy centre optimizer, :class:`~partialfc.training.optimizer.TrainingOptimizer`
(one global gradient norm, then both halves step), the LR schedule, on 2 gloo ranks.

**Generator** (:class:`IdentitySpace`; defined once, before any result, see docs/sample_rate_study.md).
Identity ``c`` has a prototype ``p_c``: a unit vector in R^d (d = ``input_dim``). Sample ``j`` of
identity ``c`` is ``x = p_c + U·(σ_n·z) + σ_e·ε`` where ``U`` (d×k, orthonormal columns, k =
``nuisance_rank``) spans nuisance directions shared by every identity (pose/lighting-like: large,
low-rank, identity-independent), ``z ~ N(0, I_k)``, ``ε ~ N(0, I_d)``. ``p_c``, ``z`` and ``ε`` are
counter-based functions of (data seed, identity, sample): any sample of any of 2^40 identities is
computed on the fly, nothing is stored. Training identities are ``0..C-1`` with ``K`` samples each;
held-out identities start at 2^40, disjoint from every training set. Knobs of the factorial grid, each
off by default and a function of (data seed, identity[, sample]) too: a long tail of images per
identity (truncated power law, :meth:`IdentitySpace.images`), label noise (a share of training images
labelled as a uniformly random other identity, :meth:`IdentitySpace.labels`), near-duplicate
identities (a share of odd ids whose prototype is a near copy, at a stated cosine, of the id below,
:meth:`IdentitySpace.duplicate_of`). The held-out set is always clean.

**Cell** = (C, r, head, seed): the MLP and the centres are trained for ``epochs`` passes over the
training images (shuffled per epoch by the training seed; the same K and epochs in every cell), then
the backbone embeds the held-out set: 10-fold verification accuracy on fixed pairs, TAR@FAR=1e-3 on
them, and 1:N identification (rank-1, TPIR@FPIR=1e-2) with a gallery of one sample per identity.

**Factorial grid** (``--factorial``, :class:`Design`): cells (C, M, N, seed, label noise) with r = M / C,
global batch N, data seed = training seed, ArcFace, the same epochs over the same data at every N
(steps = epochs · images / N), the learning rate per N by a pilot's chosen rule, the difficulty σ_e per
C by a search (``--calibrate``, ``OUTPUT/calibration.jsonl``), loss and held-out rank-1 curves along
each run, TAR@FAR=1e-4 on 200k impostor pairs; cells run in a stated priority order, within a time
budget estimated by a per-step timing model (``--timing``, ``OUTPUT/timing.jsonl``; ``--plan`` prints it).

    python benchmarks/sample_rate_study.py --output docs/sample_rate_study      # the grid (resumable)
    python benchmarks/sample_rate_study.py --output docs/sample_rate_study --report   # report only
    python benchmarks/sample_rate_study.py --quick --output /tmp/srs            # a smoke run
    python benchmarks/sample_rate_study.py --factorial --output docs/sample_rate_study/factorial \\
        --doc docs/sample_rate_study.md [--calibrate [C ...] | --timing | --plan | --report] [--budget-hours H]

Each finished cell appends one JSON line to ``OUTPUT/results.jsonl``; a rerun skips cells already
there with the same settings, so the grid can be extended later. ``--report`` (also run after the
grid) writes ``OUTPUT/../sample_rate_study.md`` and the plots from whatever results exist, and from
nothing else, so the text is the same on any machine. Each sampled cell is compared with r = 1.0 at
its C (each head with ArcFace) through per-seed paired differences, labelled by
:func:`study_stats.verdict`: a t-interval with n − 1 d.f., then TOST at the metric's margin in
``MARGINS``; the seeds share one data set, so the intervals hold optimisation noise only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from study_report import append_result, read_results, write_generated
from study_stats import Estimate, t_half_width, t_interval, verdict
from torch import nn

from partialfc.common.distributed import derive_seed, shard_range
from partialfc.config import OptimConfig
from partialfc.core.centre_optim import LazySGD
from partialfc.core.margins import CombinedMargin, Margin, Softmax
from partialfc.core.partial_fc import PartialFC, sampled_classes
from partialfc.eval.identification import identification_metrics
from partialfc.eval.scores import strict_tar_at_far, verification_accuracy
from partialfc.training.lr_schedule import LRSchedule
from partialfc.training.optimizer import TrainingOptimizer

HOLDOUT_BASE = 1 << 40  # held-out identity ids start here: disjoint from any training C
_PROTOTYPE, _NUISANCE, _NOISE, _BASIS, _PAIRS = 1, 2, 3, 4, 5  # purposes of the generator's streams
_SHUFFLE = 6  # purpose of the training seed's epoch permutations
_TAIL, _NOISY, _DUPLICATE, _IMPOSTORS = 7, 8, 10, 11  # purposes of the factorial grid's knobs
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

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


# ---------------------------------------------------------------------- the generator
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective 64-bit hash (numpy uint64 arithmetic wraps mod 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniforms(seed: int, purpose: int, keys: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[len(keys), count]`` uniforms in (0, 1), each a pure function of (seed, purpose, key, index, column)."""
    with np.errstate(over="ignore"):
        base = np.uint64(derive_seed(seed, purpose))
        row = _mix(_mix(base ^ np.asarray(keys, dtype=np.uint64)) + np.asarray(index, dtype=np.uint64) * _GOLDEN)
        columns = np.arange(count, dtype=np.uint64) * _GOLDEN
        bits = _mix(row[:, None] ^ _mix(columns + base)[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def counter_gaussians(seed: int, purpose: int, keys: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[len(keys), count]`` standard normals, each a pure function of (seed, purpose, key, index, column).

    Counter-based (hash, then Box-Muller), so any row is computed without generating the others:
    identities and samples are addressed, not streamed.
    """
    half = (count + 1) // 2
    uniform = counter_uniforms(seed, purpose, keys, index, 2 * half)
    radius = np.sqrt(-2.0 * np.log(uniform[:, :half]))
    angle = 2.0 * math.pi * uniform[:, half:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count]


@dataclass(frozen=True)
class IdentitySpace:
    """Synthetic identities in feature space; see the module docstring for the formula.

    The defaults are the study's difficulty, fixed once by the calibration run recorded in
    docs/sample_rate_study.md (r = 1.0 at the smallest C only); never tune them per result.
    """

    seed: int = 0
    input_dim: int = 64
    """d: dimension of the observed features."""
    nuisance_rank: int = 8
    """k: number of shared nuisance directions."""
    nuisance_std: float = 0.3
    """σ_n: std of each nuisance coordinate (prototypes have norm 1; the nuisance has norm ≈ 0.85)."""
    noise_std: float = 0.05
    """σ_e: per-dimension isotropic noise; what makes held-out verification imperfect."""
    images_tail: tuple[float, int, int] | None = None
    """(α, lo, hi): training images per identity drawn from P(k) ∝ k^-α on lo..hi (None: K each)."""
    label_noise: float | None = None
    """Share of training images labelled as a uniformly random other training identity (None: clean)."""
    duplicates: float | None = None
    """Share of training identities that are a near copy of another one (same person, two labels)."""
    duplicate_cosine: float | None = None
    """Cosine between a near-duplicate's prototype and its original's."""

    def images(self, ids: np.ndarray, default: int) -> np.ndarray:
        """Training images of each identity: ``default`` each, or the long tail's truncated power law
        (inverse CDF of one counter uniform per (data seed, identity))."""
        ids = np.asarray(ids, np.uint64)
        if self.images_tail is None:
            return np.full(len(ids), default, np.int64)
        exponent, lo, hi = self.images_tail
        support = np.arange(lo, hi + 1)
        cdf = np.cumsum(support.astype(np.float64) ** -exponent)
        uniform = counter_uniforms(self.seed, _TAIL, ids, np.zeros(len(ids), np.uint64), 1)[:, 0]
        return support[np.minimum(np.searchsorted(cdf / cdf[-1], uniform), len(support) - 1)]

    def mean_images(self, default: int) -> float:
        """The expected images per identity (the long tail's, exactly): what sets a run's steps, so that
        every data seed trains for the same number of steps."""
        if self.images_tail is None:
            return float(default)
        exponent, lo, hi = self.images_tail
        support = np.arange(lo, hi + 1, dtype=np.float64)
        weights = support**-exponent
        return float(np.sum(weights * support) / np.sum(weights))

    def labels(self, ids: np.ndarray, index: np.ndarray, num_classes: int) -> np.ndarray:
        """The training label of sample ``index`` of identity ``ids``: the identity itself, or (a
        ``label_noise`` share, per (data seed, identity, sample)) a uniformly random *other* one of ``0..C-1``."""
        ids = np.asarray(ids, np.int64)
        if not self.label_noise:
            return ids
        draws = counter_uniforms(self.seed, _NOISY, ids, np.asarray(index, np.uint64), 2)
        other = (ids + 1 + np.floor(draws[:, 1] * (num_classes - 1)).astype(np.int64)) % num_classes
        return np.where(draws[:, 0] < self.label_noise, other, ids)

    def duplicate_of(self, ids: np.ndarray) -> np.ndarray:
        """Per training identity, the identity it near-duplicates, or -1. Pairs are (2j, 2j+1): an odd
        id is a copy of the even one below it with probability ``2·duplicates``, so an original is never
        itself a copy and the share over all training identities is ``duplicates``; held-out ids never are."""
        ids = np.asarray(ids, np.uint64)
        if not self.duplicates:
            return np.full(len(ids), -1, np.int64)
        pair = counter_uniforms(self.seed, _DUPLICATE, ids >> np.uint64(1), np.zeros(len(ids), np.uint64), 1)[:, 0]
        copy = (ids % np.uint64(2) == 1) & (ids < HOLDOUT_BASE) & (pair < 2 * self.duplicates)
        return np.where(copy, ids.astype(np.int64) - 1, -1)

    def basis(self) -> np.ndarray:
        """U: ``[d, k]`` orthonormal nuisance directions of this data seed."""
        raw = np.random.default_rng(derive_seed(self.seed, _BASIS)).standard_normal(
            (self.input_dim, self.nuisance_rank)
        )
        return np.linalg.qr(raw)[0]

    def prototypes(self, ids: np.ndarray) -> np.ndarray:
        """``[n, d]`` unit-norm prototypes of identities ``ids`` (a near-duplicate: its original's, turned
        by ``duplicate_cosine`` towards its own direction)."""
        raw = counter_gaussians(self.seed, _PROTOTYPE, ids, np.zeros(len(ids), np.uint64), self.input_dim)
        own = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        original = self.duplicate_of(ids)
        copies = original >= 0
        if not copies.any() or self.duplicate_cosine is None:
            return own
        base = self.prototypes(original[copies].astype(np.uint64))
        away = own[copies] - np.sum(own[copies] * base, axis=1, keepdims=True) * base
        away /= np.linalg.norm(away, axis=1, keepdims=True)
        cosine = self.duplicate_cosine
        own[copies] = cosine * base + math.sqrt(1.0 - cosine**2) * away
        return own

    def samples(self, ids: np.ndarray, index: np.ndarray, basis: np.ndarray | None = None) -> np.ndarray:
        """``[n, d]`` float32 sample ``index[i]`` of identity ``ids[i]`` (pass ``basis`` to reuse it)."""
        ids, index = np.asarray(ids, np.uint64), np.asarray(index, np.uint64)
        basis = self.basis() if basis is None else basis
        nuisance = counter_gaussians(self.seed, _NUISANCE, ids, index, self.nuisance_rank)
        noise = counter_gaussians(self.seed, _NOISE, ids, index, self.input_dim)
        x = self.prototypes(ids) + self.nuisance_std * nuisance @ basis.T + self.noise_std * noise
        return x.astype(np.float32)


@dataclass(frozen=True)
class HeldOut:
    """The evaluation set: ``identities`` held-out identities x ``samples`` each, fixed pairs."""

    identities: int = 2000
    samples: int = 4
    pairs: int = 12000
    """Verification pairs, half genuine, half impostor (the same pairs for every cell)."""
    non_mated: int | None = None
    """Identities after ``identities`` whose every sample is a non-mated probe; then all ``identities``
    are enrolled (None: the last 10% of ``identities`` are the non-mated ones)."""
    impostors: int | None = None
    """Impostor pairs beyond the ``pairs / 2`` of the verification set, for TAR at a low FAR."""

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        people = self.identities + (self.non_mated or 0)
        ids = HOLDOUT_BASE + np.repeat(np.arange(people, dtype=np.uint64), self.samples)
        index = np.tile(np.arange(self.samples, dtype=np.uint64), people)
        return ids, index

    def impostor_rows(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The extra impostor pairs' rows (into :meth:`ids`' order): two different enrolled identities."""
        rng = np.random.default_rng(derive_seed(seed, _IMPOSTORS))
        count = self.impostors or 0
        first = rng.integers(0, self.identities, count)
        second = (first + rng.integers(1, self.identities, count)) % self.identities
        return (
            first * self.samples + rng.integers(0, self.samples, count),
            second * self.samples + rng.integers(0, self.samples, count),
        )

    def pair_rows(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (into :meth:`ids`' order) of the first and second sample of each pair, and issame."""
        rng = np.random.default_rng(derive_seed(seed, _PAIRS))
        half = self.pairs // 2
        who = rng.integers(0, self.identities, half)
        a = rng.integers(0, self.samples, half)
        b = (a + rng.integers(1, self.samples, half)) % self.samples  # a different sample of the same identity
        first = rng.integers(0, self.identities, self.pairs - half)
        second = (first + rng.integers(1, self.identities, self.pairs - half)) % self.identities
        genuine = (who * self.samples + a, who * self.samples + b)
        impostor = (
            first * self.samples + rng.integers(0, self.samples, len(first)),
            second * self.samples + rng.integers(0, self.samples, len(first)),
        )
        # Interleaved (genuine, impostor, ...) so that each of the 10 folds holds both kinds.
        order = np.argsort(np.r_[np.arange(half) * 2, np.arange(self.pairs - half) * 2 + 1], kind="stable")
        issame = np.r_[np.ones(half, bool), np.zeros(self.pairs - half, bool)][order]
        return np.r_[genuine[0], impostor[0]][order], np.r_[genuine[1], impostor[1]][order], issame


# ---------------------------------------------------------------------- training settings
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
    optimizer: str = "sgd"
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


# ---------------------------------------------------------------------- the grid, resumable
def grid(classes: Sequence[int], rates: Sequence[float], seeds: Sequence[int], heads_at: Sequence[int]) -> list[Cell]:
    """Cells in the order that informs first (the largest C costs most, so its repeats come late):
    every (C, r) at the first seed, C ascending; the other seeds at the smaller C and the head
    comparison (softmax, CosFace; ArcFace r=1.0 is in the grid) at the smaller ``heads_at``; the
    other seeds at the largest C; the head comparison at the largest C."""
    largest, first, rest = max(classes), seeds[:1], seeds[1:]
    rates = sorted(rates, reverse=True)

    def arcface(cs: Sequence[int], ss: Sequence[int]) -> list[Cell]:
        return [Cell(c, r, "arcface", s) for s in ss for c in sorted(cs) for r in rates]

    def heads(cs: Sequence[int]) -> list[Cell]:
        return [Cell(c, 1.0, h, s) for c in sorted(cs) for s in seeds for h in ("softmax", "cosface", "arcface")]

    cells = (
        arcface(classes, first)
        + arcface([c for c in classes if c != largest], rest)
        + heads([c for c in heads_at if c != largest])
        + arcface([largest], rest)
        + heads([c for c in heads_at if c == largest])
    )
    unique: list[Cell] = []
    for cell in cells:
        if cell not in unique:
            unique.append(cell)
    return unique


@dataclass(frozen=True)
class Job:
    """A cell with the settings it runs under; ``purpose`` tags calibration, pilot and timing runs."""

    cell: Cell
    settings: Settings
    purpose: str | None = None
    estimate: float = 0.0
    """Seconds the timing model expects (training + evaluation); what the budget counts before it runs."""


def _done_key(cell: Cell, settings_key: str, purpose: str | None) -> tuple[object, ...]:
    return (cell.num_classes, cell.sample_rate, cell.head, cell.seed, settings_key, purpose)


def pending_jobs(jobs: Sequence[Job], results: Sequence[dict]) -> list[Job]:
    """The jobs without a record of the same cell, settings and purpose."""
    done = {
        _done_key(Cell(r["num_classes"], r["sample_rate"], r["head"], r["seed"]), _record_key(r), r.get("purpose"))
        for r in results
    }
    return [job for job in jobs if _done_key(job.cell, job.settings.key(), job.purpose) not in done]


def _record_key(record: dict) -> str:
    return json.dumps(record["settings"], sort_keys=True)


def pending_cells(cells: Sequence[Cell], results: Sequence[dict], settings: Settings) -> list[Cell]:
    return [job.cell for job in pending_jobs([Job(cell, settings) for cell in cells], results)]


def cell_seconds(record: dict) -> float:
    """What a finished cell cost: training plus (where recorded) its evaluations."""
    return float(record["train_seconds"]) + float(record.get("eval_seconds", 0.0))


_RUN, _SKIP, _STOP = 0, 1, 2


def _decide(job: Job, results: Path, budget_seconds: float | None) -> int:
    """Rank 0's decision for the next job: another invocation may have finished it meanwhile (a grid
    extended in parallel); the budget stops the run before a job whose estimate would pass it."""
    records = read_results(results)
    if not pending_jobs([job], records):
        return _SKIP
    if budget_seconds is not None and sum(map(cell_seconds, records)) + job.estimate > budget_seconds:
        return _STOP
    return _RUN


def _worker(rank: int, world_size: int, port: int, jobs: list[Job], results: str, budget_seconds: float | None) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for job in jobs:
            decision = torch.tensor(_decide(job, Path(results), budget_seconds) if rank == 0 else _RUN)
            dist.broadcast(decision, 0)
            if int(decision) == _STOP:
                if rank == 0:
                    print(f"budget reached before {job.cell.name()}: stopping", flush=True)
                break
            if int(decision) == _SKIP:
                continue
            record = run_cell(job.cell, job.settings, rank, world_size)
            if rank == 0:
                append_result(Path(results), record if job.purpose is None else {**record, "purpose": job.purpose})
                print(
                    f"{time.strftime('%H:%M:%S')} {job.cell.name()} N={record['global_batch']} "
                    f"{job.purpose or ''}: verify {record['verify_accuracy']:.4f} "
                    f"rank-1 {record['rank1']:.4f} loss {record['final_loss']:.3f} "
                    f"({record['steps']} steps, {record['train_seconds']:.0f}s)",
                    flush=True,
                )
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_jobs(jobs: Sequence[Job], results: Path, world_size: int = 2, budget_hours: float | None = None) -> None:
    """Run ``jobs`` in order on ``world_size`` gloo ranks (one process group for all), appending to
    ``results``; with a budget, stop before the first job that would take the summed cell time of
    ``results`` past it."""
    if not jobs:
        return
    results.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    budget = None if budget_hours is None else 3600.0 * budget_hours
    mp.start_processes(
        _worker,
        args=(world_size, port, list(jobs), str(results), budget),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def run_grid(cells: Sequence[Cell], settings: Settings, results: Path, world_size: int = 2) -> None:
    """Train ``cells`` under one ``settings`` (the first grid), appending to ``results``."""
    run_jobs([Job(cell, settings) for cell in cells], results, world_size)


# ---------------------------------------------------------------------- the factorial grid
WORLD_SIZE = 2
FACTORIAL_SETTINGS = Settings(
    space=IdentitySpace(images_tail=(1.7, 2, 64), label_noise=0.1, duplicates=0.02, duplicate_cosine=0.95),
    holdout=HeldOut(identities=10_000, samples=4, pairs=40_000, non_mated=1_000, impostors=180_000),
    epochs=4.0,
    curve_points=50,
    rank1_points=5,
)
Block = tuple[int, tuple[int, ...], bool]
"""(C, global batches, label noise on) in the order the grid runs them."""


@dataclass(frozen=True)
class Design:
    """The factorial grid's fixed choices (docs/sample_rate_study.md states each and why)."""

    settings: Settings = FACTORIAL_SETTINGS
    """Every cell's settings but the per-cell ones: data seed, difficulty, label noise on/off, N and lr."""
    centres: tuple[int, ...] = (500, 1_000, 3_000, 10_000, 30_000)
    """M: centres sampled per step (r = M / C; M ≥ C is r = 1)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Training seed = data seed: a seed changes the identities, the held-out set and the initialisation."""
    blocks: tuple[Block, ...] = (
        (10_000, (128, 512, 2048), True),
        (10_000, (128, 512, 2048), False),
        (100_000, (512, 2048), True),
        (100_000, (512, 2048), False),
        (100_000, (128,), True),
        (100_000, (128,), False),
        (1_000_000, (2048, 512, 128), True),
    )
    full_softmax_up_to: int = 100_000
    """Above this C the reference is the largest M, not r = 1."""
    base_batch: int = 128
    """The global batch of lr 0.1 (the package's default lr), where no learning-rate rule is needed."""
    lr_rules: tuple[str, ...] = ("fixed", "linear")
    pilot_batches: tuple[int, ...] = (512, 2048)
    calibration_batch: int = 2048
    """N of the difficulty search at every C but the smallest (which uses ``base_batch``, before the pilot)."""
    target_rank1: float = 0.90
    tolerance: float = 0.02
    max_probes: int = 6
    search_factor: float = 1.25
    """σ_e's step while the target is not bracketed (rank-1 falls steeply: 0.97 to 0.26 from σ_e 0.05 to 0.1)."""
    timing_steps: int = 40
    timing_cells: tuple[tuple[int, int, int], ...] = (
        (10_000, 10_000, 128),
        (10_000, 500, 2048),
        (10_000, 10_000, 2048),
        (100_000, 100_000, 512),
        (100_000, 3_000, 128),
        (1_000_000, 30_000, 2048),
        (1_000_000, 500, 512),
    )
    """(C, M, N) of the short runs the per-step timing model is fitted on."""

    @property
    def classes(self) -> list[int]:
        return sorted({c for c, _, _ in self.blocks})

    def centres_at(self, num_classes: int) -> list[int]:
        """M values at C, the reference (r = 1, or the largest M above ``full_softmax_up_to``) first."""
        reference = num_classes if num_classes <= self.full_softmax_up_to else max(self.centres)
        return sorted({min(m, reference) for m in self.centres} | {reference}, reverse=True)

    def lr(self, rule: str, batch: int) -> float:
        """0.1 at ``base_batch``; ``linear`` scales it with N, ``fixed`` keeps it."""
        base = self.settings.lr
        if rule == "linear":
            return base * batch / self.base_batch
        if rule == "fixed":
            return base
        raise ValueError(f"unknown learning-rate rule {rule!r}; one of {self.lr_rules}")

    def job(
        self, num_classes: int, centres: int, batch: int, noisy: bool, seed: int, noise_std: float, lr: float
    ) -> Job:
        """The cell (C, M, N, seed, label noise) at difficulty σ_e = ``noise_std``."""
        space = replace(
            self.settings.space,
            seed=seed,
            noise_std=noise_std,
            label_noise=self.settings.space.label_noise if noisy else None,
        )
        settings = replace(self.settings, space=space, batch_per_rank=batch // WORLD_SIZE, lr=lr)
        return Job(Cell(num_classes, min(1.0, centres / num_classes), "arcface", seed), settings)


def record_centres(record: dict) -> int:
    """M of a record: the centres per step its sample rate names (measured ones can be more: positives)."""
    return round(record["sample_rate"] * record["num_classes"])


def _calibrating(record: dict, design: Design, purpose: str) -> bool:
    """A calibration record of ``purpose`` run under this design's settings (σ_e, N and lr aside)."""
    if record.get("purpose") != purpose:
        return False
    c, space = record["num_classes"], record["settings"]["space"]
    job = design.job(
        c, record_centres(record), record["global_batch"], True, 0, space["noise_std"], record["settings"]["lr"]
    )
    return job.settings.key() == _record_key(record) and record_centres(record) == design.centres_at(c)[0]


def _probes(records: Sequence[dict], design: Design, num_classes: int) -> list[tuple[float, float]]:
    return [
        (r["settings"]["space"]["noise_std"], r["rank1"])
        for r in records
        if r["num_classes"] == num_classes and _calibrating(r, design, "difficulty")
    ]


def search_done(probes: Sequence[tuple[float, float]], design: Design) -> bool:
    """A probe within the tolerance of the target rank-1, or ``max_probes`` probes."""
    near = any(abs(rank1 - design.target_rank1) <= design.tolerance for _, rank1 in probes)
    return near or len(probes) >= design.max_probes


def next_noise_std(probes: Sequence[tuple[float, float]], design: Design, start: float) -> float | None:
    """The next σ_e of the difficulty search (None: done). Rank-1 falls as σ_e grows: from ``start``,
    step σ_e by ``search_factor`` until the target is bracketed, then bisect geometrically."""
    if not probes:
        return start
    if search_done(probes, design):
        return None
    easy = [s for s, r in probes if r > design.target_rank1]
    hard = [s for s, r in probes if r < design.target_rank1]
    if easy and hard:
        return math.sqrt(max(easy) * min(hard))
    return design.search_factor * max(easy) if easy else min(hard) / design.search_factor


def chosen_noise_std(records: Sequence[dict], design: Design, num_classes: int) -> float | None:
    """σ_e of C: the finished search's probe nearest the target rank-1 (None: not calibrated yet)."""
    probes = _probes(records, design, num_classes)
    if not probes or not search_done(probes, design):
        return None
    return min(probes, key=lambda probe: abs(probe[1] - design.target_rank1))[0]


def chosen_lr_rule(records: Sequence[dict], design: Design) -> str | None:
    """The rule whose pilot runs reach the higher mean rank-1 (None: the pilot has not finished)."""
    scores = {rule: [r["rank1"] for r in records if _calibrating(r, design, f"lr:{rule}")] for rule in design.lr_rules}
    if any(len(values) < len(design.pilot_batches) for values in scores.values()):
        return None
    return max(design.lr_rules, key=lambda rule: float(np.mean(scores[rule])))


def _search(design: Design, calibration: Path, num_classes: int, batch: int, lr: float, start: float) -> float:
    """Run the difficulty search at C (seed 0, reference M, label noise on), one probe at a time."""
    while (
        noise_std := next_noise_std(_probes(read_results(calibration), design, num_classes), design, start)
    ) is not None:
        job = design.job(num_classes, design.centres_at(num_classes)[0], batch, True, 0, noise_std, lr)
        run_jobs([replace(job, purpose="difficulty")], calibration)
    chosen = chosen_noise_std(read_results(calibration), design, num_classes)
    assert chosen is not None
    return chosen


def calibrate(design: Design, calibration: Path, classes: Sequence[int]) -> None:
    """Difficulty at the smallest C (N = ``base_batch``, from the default σ_e), then the learning-rate pilot
    there, then the difficulty at each other C of ``classes`` (N = ``calibration_batch``, the chosen rule,
    from the smallest C's σ_e). Resumable: probes already in ``calibration`` are not rerun."""
    smallest = design.classes[0]
    noise_std = _search(
        design, calibration, smallest, design.base_batch, design.settings.lr, design.settings.space.noise_std
    )
    pilot = [
        replace(design.job(smallest, smallest, batch, True, 0, noise_std, design.lr(rule, batch)), purpose=f"lr:{rule}")
        for rule in design.lr_rules
        for batch in design.pilot_batches
    ]
    run_jobs(pending_jobs(pilot, read_results(calibration)), calibration)
    rule = chosen_lr_rule(read_results(calibration), design)
    assert rule is not None
    for c in sorted(set(classes) - {smallest}):
        lr = design.lr(rule, design.calibration_batch)
        _search(design, calibration, c, design.calibration_batch, lr, start=noise_std)


# -- the timing model: seconds per step = a + b·N + c·N·S + d·C (S: centres in the softmax), plus a
# constant per cell for the evaluations.
TIMING_TERMS = ("per step", "per sample", "per logit (sample x centre)", "per class")


@dataclass(frozen=True)
class TimingModel:
    coefficients: tuple[float, ...]
    """Seconds, one per ``TIMING_TERMS``."""
    eval_seconds: float
    """The evaluations of one cell (rank-1 points along the run and the final one)."""

    def step_seconds(self, num_classes: int, centres: float, batch: int) -> float:
        return float(np.dot(self.coefficients, (1.0, batch, batch * centres, num_classes)))

    def estimate(self, job: Job) -> float:
        """Seconds of the job's training (its measured centres: M, or more where positives exceed it) and evaluation."""
        c, batch = job.cell.num_classes, job.settings.batch_per_rank * WORLD_SIZE
        centres = max(job.cell.sample_rate * c, expected_positives(c, batch))
        return total_steps(job.settings, c, WORLD_SIZE) * self.step_seconds(c, centres, batch) + self.eval_seconds


def expected_positives(num_classes: int, batch: int) -> float:
    """Distinct classes among ``batch`` uniform draws from C: the sample's floor when r·C is smaller."""
    return num_classes * -math.expm1(batch * math.log1p(-1.0 / num_classes))


def fit_timing(records: Sequence[dict]) -> TimingModel | None:
    """Least squares of the measured seconds per step on the terms (None: no timing runs yet)."""
    if not records:
        return None
    rows = np.array(
        [(1.0, r["global_batch"], r["global_batch"] * r["centres_per_step"], r["num_classes"]) for r in records]
    )
    seconds = np.array([r["train_seconds"] / r["steps"] for r in records])
    coefficients = np.linalg.lstsq(rows, seconds, rcond=None)[0]
    return TimingModel(tuple(float(x) for x in coefficients), float(np.mean([r["eval_seconds"] for r in records])))


def timing_jobs(design: Design) -> list[Job]:
    """Short runs (``timing_steps`` steps, full evaluation) over C, M and N for the timing model."""
    jobs = []
    for c, m, batch in design.timing_cells:
        job = design.job(c, m, batch, True, 0, design.settings.space.noise_std, design.settings.lr)
        jobs.append(replace(job, purpose="timing", settings=replace(job.settings, max_steps=design.timing_steps)))
    return jobs


def factorial_jobs(
    design: Design, calibration: Sequence[dict], timing: TimingModel | None
) -> tuple[list[Job], list[int]]:
    """Every cell of the grid in priority order (block by block; within a block, seed by seed, then N,
    then M from the reference down), with the timing model's estimate; and the C not calibrated yet,
    whose cells carry the default σ_e (for the plan's estimates; the runner leaves them out)."""
    rule = chosen_lr_rule(calibration, design)
    if rule is None:
        raise SystemExit("no learning-rate rule chosen yet: run --calibrate first")
    jobs: list[Job] = []
    uncalibrated: list[int] = []
    for c, batches, noisy in design.blocks:
        noise_std = chosen_noise_std(calibration, design, c)
        if noise_std is None and c not in uncalibrated:
            uncalibrated.append(c)
        for seed in design.seeds:
            for batch in batches:
                for m in design.centres_at(c):
                    job = design.job(
                        c, m, batch, noisy, seed, noise_std or design.settings.space.noise_std, design.lr(rule, batch)
                    )
                    jobs.append(replace(job, estimate=timing.estimate(job)) if timing else job)
    return jobs, uncalibrated


def plan(jobs: Sequence[Job], results: Sequence[dict], budget_hours: float) -> str:
    """Every cell with its steps and estimated (or, once finished, measured) seconds, the cumulative
    hours, and where the budget stops the runner (as :func:`run_jobs` does: before the first unfinished
    cell that would pass it)."""
    finished = {
        _done_key(Cell(r["num_classes"], r["sample_rate"], r["head"], r["seed"]), _record_key(r), None): r
        for r in results
    }
    lines = [f"{'#':>4} {'C':>9} {'N':>5} {'M':>7} {'r':>8} noise seed {'steps':>7} {'seconds':>8} {'cum h':>7}"]
    runs, everything, cut = 0.0, 0.0, 0
    for number, job in enumerate(jobs, 1):
        record = finished.get(_done_key(job.cell, job.settings.key(), None))
        seconds = cell_seconds(record) if record else job.estimate
        everything += seconds
        if not cut and not record and runs + seconds > 3600 * budget_hours:
            cut = number
        runs += 0.0 if cut else seconds
        c, s = job.cell, job.settings
        status = " done" if record else " CUT" if cut else ""
        lines.append(
            f"{number:>4} {c.num_classes:>9,} {s.batch_per_rank * WORLD_SIZE:>5} {record_centres(asdict(c)):>7,} "
            f"{c.sample_rate:>8.4g} {'on ' if s.space.label_noise else 'off'}   {c.seed:>4} "
            f"{total_steps(s, c.num_classes, WORLD_SIZE):>7,} {seconds:>8.0f} {everything / 3600:>7.2f}{status}"
        )
    lines.append(
        f"{len(jobs)} cells, {everything / 3600:.1f} h in all; the {budget_hours:g} h budget runs "
        + (f"cells 1-{cut - 1} ({runs / 3600:.2f} h) and cuts {len(jobs) - cut + 1}" if cut else "every cell")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the report
METRICS = {
    "verify_accuracy": "verification accuracy",
    "rank1": "rank-1 identification",
    "tar_at_far_1e-3": "TAR@FAR=1e-3",
    "tpir_at_fpir_1e-2": "TPIR@FPIR=1e-2",
}
MARGINS = {"verify_accuracy": 0.3, "rank1": 1.0, "tar_at_far_1e-3": 1.0, "tpir_at_fpir_1e-2": 2.0}
"""Equivalence margin of each metric, in points; docs/sample_rate_study.md gives the reason for each value."""


def _cells(results: Sequence[dict]) -> dict[tuple[str, int, float], list[dict]]:
    groups: dict[tuple[str, int, float], list[dict]] = {}
    for record in results:
        groups.setdefault((record["head"], record["num_classes"], record["sample_rate"]), []).append(record)
    return groups


def _same_runs(a: Sequence[dict], b: Sequence[dict]) -> bool:
    """Whether two cells are the same runs: for every seed the same centres per step and the same results."""

    def fingerprint(records: Sequence[dict]) -> list[tuple]:
        return sorted((r["seed"], r["centres_per_step"], *(r[m] for m in METRICS)) for r in records)

    return fingerprint(a) == fingerprint(b)


def requested_centres(num_classes: int, rate: float, world_size: int) -> int:
    """Centres per step that ``rate`` asks for, all ranks: what the softmax holds unless the batch's positives
    outnumber it."""
    return sum(sampled_classes(shard_range(num_classes, rank, world_size)[1], rate) for rank in range(world_size))


@dataclass(frozen=True)
class Row:
    """A row of the ArcFace tables: one C and the rates whose runs are identical there (usually one rate)."""

    num_classes: int
    rates: tuple[float, ...]
    records: tuple[dict, ...]

    def centres(self) -> float:
        return float(np.mean([r["centres_per_step"] for r in self.records]))

    def positives_bound(self) -> bool:
        """More centres per step than the rate asks for: the batch's positives, not r, filled the softmax."""
        world = self.records[0]["world_size"]
        return self.centres() > min(requested_centres(self.num_classes, rate, world) for rate in self.rates)


def arcface_rows(results: Sequence[dict]) -> list[Row]:
    """ArcFace cells by C, then r from 1.0 down; a rate whose runs are identical to the row above joins that row,
    so that one experiment is not counted as several."""
    rows: list[Row] = []
    for (head, c, rate), records in sorted(_cells(results).items(), key=lambda item: (item[0][1], -item[0][2])):
        if head != "arcface":
            continue
        if rows and rows[-1].num_classes == c and _same_runs(rows[-1].records, records):
            rows[-1] = replace(rows[-1], rates=(*rows[-1].rates, rate))
        else:
            rows.append(Row(c, (rate,), tuple(records)))
    return rows


@dataclass(frozen=True)
class Comparison:
    """A cell against its reference on one metric: the per-seed differences (cell minus reference, same
    training seed, so the same initialisation and data order), in points."""

    metric: str
    differences: tuple[float, ...]

    def estimate(self) -> Estimate:
        return t_interval(self.differences)

    def label(self) -> str:
        return verdict(self.differences, MARGINS[self.metric])

    def text(self) -> str:
        d = self.estimate()
        interval = f" [{d.low:+.2f}, {d.high:+.2f}]" if d.n > 1 else ""
        return f"{d.mean:+.2f}{interval} {self.label()}"


def compare(records: Sequence[dict], reference: Sequence[dict], metric: str) -> Comparison | None:
    """``records`` against ``reference`` on ``metric``, paired by training seed; None when no seed is in both."""
    by_seed = {r["seed"]: r[metric] for r in reference}
    differences = tuple(100 * (r[metric] - by_seed[r["seed"]]) for r in records if r["seed"] in by_seed)
    return Comparison(metric, differences) if differences else None


def sampled_vs_full(rows: Sequence[Row]) -> list[tuple[Row, dict[str, Comparison]]]:
    """Every sampled row against r = 1.0 at the same C, on every metric."""
    full = {row.num_classes: row for row in rows if 1.0 in row.rates}
    out = []
    for row in rows:
        reference = full.get(row.num_classes)
        if reference is None or row is reference:
            continue
        found = {m: c for m in METRICS if (c := compare(row.records, reference.records, m)) is not None}
        if found:
            out.append((row, found))
    return out


def _points(records: Sequence[dict], metric: str) -> str:
    s = t_interval([100 * r[metric] for r in records])
    return f"{s.mean:.2f} (n=1)" if s.n < 2 else f"{s.mean:.2f} ± {s.std:.2f}"


def _rates(row: Row) -> str:
    return ", ".join(f"{rate:g}" for rate in row.rates)


def _centres(row: Row) -> str:
    return f"{row.centres():,.0f}" + (" ‡" if row.positives_bound() else "")


_COLUMNS = " | ".join(f"{name} %" for name in ("verify acc", "rank-1", "TAR@FAR=1e-3", "TPIR@FPIR=1e-2"))
_DELTAS = " | ".join(f"Δ {name}" for name in ("verify", "rank-1", "TAR@FAR=1e-3", "TPIR@FPIR=1e-2"))


def report(results: Sequence[dict], expected: Sequence[Cell], figures: Path) -> str:
    """The markdown tables (ArcFace over (C, r) and its paired verdicts against r = 1.0, heads at r = 1.0
    against ArcFace) and the plot, from the results alone: the same results give the same text anywhere."""
    groups = _cells(results)
    rows = arcface_rows(results)
    versus = sampled_vs_full(rows)
    levels = [
        f"| C | r | centres/step | steps | seeds | {_COLUMNS} | train s/seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {row.num_classes:,} | {_rates(row)} | {_centres(row)} | {row.records[0]['steps']:,} "
            f"| {len(row.records)} | "
            + " | ".join(_points(row.records, m) for m in METRICS)
            + f" | {np.mean([r['train_seconds'] for r in row.records]):.0f} |"
            for row in rows
        ),
    ]
    deltas = [
        f"| C | r | centres/step | {_DELTAS} |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {row.num_classes:,} | {_rates(row)} | {_centres(row)} | "
            + " | ".join(found[m].text() if m in found else "—" for m in METRICS)
            + " |"
            for row, found in versus
        ),
    ]
    notes = []
    if any(row.positives_bound() for row in rows):
        notes.append(
            "‡ More centres per step than r asks for (⌈r·C/ranks⌉ per rank): the batch's positives outnumber "
            "the sample, so the softmax holds the positives alone on most steps and r is not what varies."
        )
    for row in rows:
        if len(row.rates) > 1:
            notes.append(
                f"r = {_rates(row)} at C = {row.num_classes:,}: identical runs (for every seed the same centres "
                "per step and the same results), shown once: one data point, not several."
            )
    head_levels = [f"| C | head | seeds | {_COLUMNS} |", "|---|---|---|---|---|---|---|"]
    head_deltas = [f"| C | head | {_DELTAS} |", "|---|---|---|---|---|---|"]
    for c in sorted({c for h, c, _ in groups if h != "arcface"}):
        arcface = groups.get(("arcface", c, 1.0), [])
        for head in HEADS:
            records = groups.get((head, c, 1.0))
            if not records:
                continue
            head_levels.append(
                f"| {c:,} | {HEADS[head]} | {len(records)} | " + " | ".join(_points(records, m) for m in METRICS) + " |"
            )
            found = {m: compare(records, arcface, m) for m in METRICS} if head != "arcface" else {}
            if any(found.values()):
                head_deltas.append(
                    f"| {c:,} | {HEADS[head]} | "
                    + " | ".join(comparison.text() if comparison else "—" for comparison in found.values())
                    + " |"
                )
    heads_text = [*head_levels]
    if len(head_deltas) > 2:
        heads_text += ["", "Δ against ArcFace at the same C, paired by training seed:", "", *head_deltas]
    data_sets = {json.dumps(r["settings"].get("space"), sort_keys=True) for r in results}
    shared = (
        " Every seed trains on the same data set, so the intervals hold optimisation noise only (initialisation, "
        "data order, sampling)."
        if len(data_sets) == 1
        else ""
    )
    done = {(r["num_classes"], r["sample_rate"], r["head"], r["seed"]) for r in results}
    missing = [c.name() for c in expected if (c.num_classes, c.sample_rate, c.head, c.seed) not in done]
    plot = _plot(versus, figures) if versus else None
    minutes = sum(r["train_seconds"] for r in results) / 60
    ranks = "/".join(str(w) for w in sorted({r["world_size"] for r in results}))
    return "\n".join(
        [
            "<!-- generated by benchmarks/sample_rate_study.py (--report): everything up to the end marker -->",
            "### ArcFace over (C, r), held-out identities",
            "",
            *levels,
            "",
            "Mean ± sample std over training seeds, in %. centres/step: centres in the softmax per step, all ranks "
            "(the batch's positives included), mean over steps and seeds.",
            "",
            "### Sampled r against r = 1.0 at the same C, paired by training seed",
            "",
            *deltas,
            "",
            "Δ: per-seed difference, sampled r minus r = 1.0 (the same training seed gives both the same "
            "initialisation and data order), in points: mean [95% t-interval, n − 1 d.f.] and the verdict: lower "
            "or higher where the interval excludes 0; equivalent (±margin) where two one-sided t-tests at 5% put "
            "the difference inside that margin; inconclusive otherwise." + shared,
            *(line for note in notes for line in ("", note)),
            "",
            "### Heads at r = 1.0",
            "",
            *(heads_text if len(head_levels) > 2 else ["(no head-comparison cells finished)"]),
            "",
            f"![accuracy change vs r]({figures.name}/{plot.name})" if plot else "",
            "",
            f"Cells finished: {len(results)} of {len(expected)} planned; {minutes:.1f} min of training summed over "
            f"cells, {ranks} gloo ranks.",
            "",
            ("Missing cells (not run yet; rerun the command to add them): " + "; ".join(missing))
            if missing
            else "All planned cells finished.",
        ]
    )


def _plot(versus: Sequence[tuple[Row, dict[str, Comparison]]], figures: Path) -> Path:
    """Δ against r and against centres sampled per step, one line per C, error bars the t-based half-width of
    the paired differences; a row per metric, dashed lines at ± its equivalence margin; hollow markers where
    the positives filled the softmax."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(METRICS), 2, figsize=(11, 3.6 * len(METRICS)), dpi=100, squeeze=False)
    try:
        for (metric, name), pair in zip(METRICS.items(), axes):
            for c in sorted({row.num_classes for row, _ in versus}):
                points = sorted(
                    ((row, found[metric]) for row, found in versus if row.num_classes == c and metric in found),
                    key=lambda item: -item[0].rates[0],
                )
                y = [comparison.estimate().mean for _, comparison in points]
                err = [np.nan_to_num(t_half_width(comparison.differences)) for _, comparison in points]
                per_rate = [(rate, i) for i, (row, _) in enumerate(points) for rate in row.rates]
                for ax, xs, ys, errs, hollow in (
                    (
                        pair[0],
                        [rate for rate, _ in per_rate],
                        [y[i] for _, i in per_rate],
                        [err[i] for _, i in per_rate],
                        [points[i][0].positives_bound() for _, i in per_rate],
                    ),
                    (pair[1], [row.centres() for row, _ in points], y, err, [r.positives_bound() for r, _ in points]),
                ):
                    line = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"C={c:,}")
                    bound = [i for i, flag in enumerate(hollow) if flag]
                    if bound:
                        colour = line.lines[0].get_color()
                        ax.plot([xs[i] for i in bound], [ys[i] for i in bound], "o", mfc="white", mec=colour, zorder=3)
            for ax, xlabel in zip(pair, ("sample rate r", "centres in the softmax per step (all ranks)")):
                ax.set_xscale("log")
                ax.axhline(0.0, color="grey", lw=0.8)
                for bound in (-MARGINS[metric], MARGINS[metric]):
                    ax.axhline(bound, color="grey", lw=0.8, ls="--")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"Δ {name} (points)")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend()
            rates = sorted({rate for row, _ in versus for rate in row.rates})
            pair[0].xaxis.set_major_locator(matplotlib.ticker.FixedLocator(rates))
            pair[0].xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{r:g}" for r in rates]))
            pair[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        figure.suptitle(
            "Partial FC: sampled r minus r = 1.0 (ArcFace, paired by seed, mean and 95% t-interval)\n"
            "dashed: equivalence margins; hollow: the batch's positives filled the softmax"
        )
        figure.tight_layout()
        figures.mkdir(parents=True, exist_ok=True)
        path = figures / "accuracy_loss.png"
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


# ---------------------------------------------------------------------- the factorial grid's report
FACTORIAL_METRICS: dict[str, tuple[str, float]] = {
    "verify_accuracy": ("verification accuracy", 0.2),
    "rank1": ("rank-1 identification", 1.0),
    "tpir_at_fpir_1e-2": ("TPIR@FPIR=1e-2", 1.0),
    "tar_at_far_1e-4": ("TAR@FAR=1e-4", 1.0),
}
"""Metric: (name, equivalence margin in points; docs/sample_rate_study.md says why each)."""


def calibration_summary(records: Sequence[dict], design: Design) -> str:
    """The difficulty searches (σ_e → reference rank-1 per C) and the learning-rate pilot, as markdown."""
    lines = ["| C | N | σ_n | σ_e | reference rank-1 % | chosen |", "|---|---|---|---|---|---|"]
    for c in design.classes:
        chosen = chosen_noise_std(records, design, c)
        for r in records:
            if r["num_classes"] == c and _calibrating(r, design, "difficulty"):
                space = r["settings"]["space"]
                lines.append(
                    f"| {c:,} | {r['global_batch']} | {space['nuisance_std']:g} | {space['noise_std']:g} "
                    f"| {100 * r['rank1']:.2f} | {'yes' if space['noise_std'] == chosen else ''} |"
                )
    pilot = [r for r in records if str(r.get("purpose", "")).startswith("lr:")]
    rule = chosen_lr_rule(records, design)
    lines += ["", "| learning-rate rule | N | lr | rank-1 % | verification accuracy % |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['purpose'][3:]} | {r['global_batch']} | {r['settings']['lr']:g} | {100 * r['rank1']:.2f} "
        f"| {100 * r['verify_accuracy']:.2f} |"
        for r in pilot
    ]
    lines += ["", f"Chosen rule: {rule or 'none yet (the pilot has not finished)'}."]
    return "\n".join(lines)


def _noisy(record: dict) -> bool:
    return bool(record["settings"]["space"].get("label_noise"))


def _factorial_groups(results: Sequence[dict]) -> dict[tuple[int, bool, int, int], dict[int, dict]]:
    """(C, noise, N, M) -> {seed: record}."""
    groups: dict[tuple[int, bool, int, int], dict[int, dict]] = {}
    for r in results:
        key = (r["num_classes"], _noisy(r), r["global_batch"], record_centres(r))
        groups.setdefault(key, {})[r["seed"]] = r
    return groups


def _differences(cell: dict[int, dict], reference: dict[int, dict], metric: str) -> list[float]:
    """Per seed present in both: cell minus reference, in points."""
    return [100 * (cell[s][metric] - reference[s][metric]) for s in sorted(cell) if s in reference]


def _positives_only(cell: dict[int, dict]) -> bool:
    """The softmax held more centres than M on average: the batch's positives outnumber M."""
    return any(r["centres_per_step"] > 1.02 * record_centres(r) for r in cell.values())


def delta_table(results: Sequence[dict], design: Design, c: int, noisy: bool, metric: str) -> list[str]:
    """N rows × M columns: the reference's mean, then each M's paired Δ, its 95% t-interval and verdict."""
    groups = _factorial_groups(results)
    centres = design.centres_at(c)
    batches = sorted({n for cc, nz, n, _ in groups if cc == c and nz == noisy})
    header = [f"reference M = {centres[0]:,} (r = {min(1.0, centres[0] / c):g})"] + [
        f"M = {m:,} (r = {m / c:g})" for m in centres[1:]
    ]
    lines = ["| N | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    margin = FACTORIAL_METRICS[metric][1]
    for n in batches:
        reference = groups.get((c, noisy, n, centres[0]), {})
        row = [_mean_text([r[metric] for r in reference.values()]) if reference else "—"]
        for m in centres[1:]:
            cell = groups.get((c, noisy, n, m), {})
            differences = _differences(cell, reference, metric)
            if not differences:
                row.append("—")
                continue
            estimate = t_interval(differences)
            interval = f" [{estimate.low:+.2f}, {estimate.high:+.2f}]" if estimate.n > 1 else ""
            mark = " ‡" if _positives_only(cell) else ""
            row.append(f"{estimate.mean:+.2f}{interval} {verdict(differences, margin)}{mark}")
        lines.append(f"| {n:,} | " + " | ".join(row) + " |")
    return lines


def _mean_text(values: Sequence[float]) -> str:
    estimate = t_interval([100 * v for v in values])
    if estimate.n < 2:
        return f"{estimate.mean:.2f} (n=1)"
    return f"{estimate.mean:.2f} [{estimate.low:.2f}, {estimate.high:.2f}], n={estimate.n}"


def noise_table(results: Sequence[dict], design: Design, c: int, metric: str) -> list[str]:
    """Does sampling lose less under label noise? Per (N, M): the paired Δ vs the reference with noise on
    minus the same Δ with noise off (same seed, so the same identities), its interval and verdict."""
    groups = _factorial_groups(results)
    centres = design.centres_at(c)
    batches = sorted({n for cc, _, n, _ in groups if cc == c})
    lines = ["| N | " + " | ".join(f"M = {m:,}" for m in centres[1:]) + " |", "|---|" + "---|" * len(centres[1:])]
    for n in batches:
        row = []
        for m in centres[1:]:
            per_setting = [
                dict(
                    zip(
                        sorted(s for s in groups.get((c, nz, n, m), {}) if s in groups.get((c, nz, n, centres[0]), {})),
                        _differences(groups.get((c, nz, n, m), {}), groups.get((c, nz, n, centres[0]), {}), metric),
                    )
                )
                for nz in (True, False)
            ]
            seeds = sorted(set(per_setting[0]) & set(per_setting[1]))
            if not seeds:
                row.append("—")
                continue
            gaps = [per_setting[0][s] - per_setting[1][s] for s in seeds]
            estimate = t_interval(gaps)
            interval = f" [{estimate.low:+.2f}, {estimate.high:+.2f}]" if estimate.n > 1 else ""
            row.append(f"{estimate.mean:+.2f}{interval} {verdict(gaps, FACTORIAL_METRICS[metric][1])}")
        lines.append(f"| {n:,} | " + " | ".join(row) + " |")
    return lines


def _plot_curves(results: Sequence[dict], c: int, figures: Path) -> Path:
    """Learning curves at C: loss (top) and the rank-1 read-out (bottom) against the share of the run,
    one panel per N, one line per M (noise on; mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _factorial_groups(results)
    batches = sorted({n for cc, nz, n, _ in groups if cc == c and nz})
    figure, axes = plt.subplots(2, len(batches), figsize=(5 * len(batches), 7), dpi=100, squeeze=False)
    try:
        for column, n in enumerate(batches):
            for (cc, nz, nn, m), cell in sorted(groups.items(), key=lambda item: -item[0][3]):
                if (cc, nz, nn) != (c, True, n):
                    continue
                records = list(cell.values())
                fraction = np.asarray(records[0]["loss_steps"]) / records[0]["steps"]
                loss = np.mean([r["loss_curve"] for r in records], axis=0)
                axes[0][column].plot(fraction, loss, label=f"M={m:,}")
                points = np.asarray([r["rank1_curve"] for r in records])  # [seed, point, (step, rank-1)]
                axes[1][column].plot(points[0, :, 0] / records[0]["steps"], 100 * points[:, :, 1].mean(axis=0), "o-")
            axes[0][column].set_title(f"C={c:,}, N={n}")
            axes[0][column].set_ylabel("training loss")
            axes[1][column].set_ylabel(f"rank-1 % (first {CURVE_GALLERY:,} held-out identities)")
            for ax in axes[:, column]:
                ax.set_xlabel("share of the run")
                ax.grid(True, alpha=0.3)
            axes[0][column].legend()
        figure.tight_layout()
        figures.mkdir(parents=True, exist_ok=True)
        path = figures / f"curves_{c}.png"
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


def _plot_deltas(results: Sequence[dict], design: Design, c: int, figures: Path) -> Path:
    """Δ vs M at C, one line per N (noise on), one panel per metric, 95% paired t-interval error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _factorial_groups(results)
    centres = design.centres_at(c)
    figure, axes = plt.subplots(1, len(FACTORIAL_METRICS), figsize=(5 * len(FACTORIAL_METRICS), 4), dpi=100)
    try:
        for ax, (metric, (name, margin)) in zip(axes, FACTORIAL_METRICS.items()):
            for n in sorted({n for cc, nz, n, _ in groups if cc == c and nz}):
                reference = groups.get((c, True, n, centres[0]), {})
                points = [
                    (m, t_interval(d))
                    for m in centres[1:]
                    if (d := _differences(groups.get((c, True, n, m), {}), reference, metric))
                ]
                if points:
                    ax.errorbar(
                        [m for m, _ in points],
                        [e.mean for _, e in points],
                        yerr=[0.0 if e.n < 2 else e.high - e.mean for _, e in points],
                        marker="o",
                        capsize=3,
                        label=f"N={n}",
                    )
            ax.set_xscale("log")
            for level, style in ((0.0, "-"), (margin, "--"), (-margin, "--")):
                ax.axhline(level, color="grey", lw=0.8, ls=style)
            ax.set_xlabel("M: centres sampled per step")
            ax.set_ylabel(f"Δ {name} vs reference (points)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        figure.suptitle(f"C={c:,}, label noise on: Δ vs the reference M = {centres[0]:,} (dashed: the margin)")
        figure.tight_layout()
        figures.mkdir(parents=True, exist_ok=True)
        path = figures / f"deltas_{c}.png"
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path


def factorial_report(
    results: Sequence[dict],
    calibration: Sequence[dict],
    jobs: Sequence[Job],
    uncalibrated: Sequence[int],
    design: Design,
    timing: TimingModel | None,
    figures: Path,
) -> str:
    """The generated section of the factorial grid, from its result files alone."""
    lines = [
        "<!-- generated by benchmarks/sample_rate_study.py --factorial (--report): everything up to the end marker -->",
        "### Calibration",
        "",
        calibration_summary(calibration, design),
        "",
        "### Timing model",
        "",
        (
            "Seconds per step = "
            + " + ".join(f"{v:.3g} ({term})" for v, term in zip(timing.coefficients, TIMING_TERMS))
            + f"; evaluations {timing.eval_seconds:.1f} s per cell."
            if timing
            else "(no timing runs)"
        ),
        "",
    ]
    for c in design.classes:
        present = [r for r in results if r["num_classes"] == c]
        if not present:
            continue
        lines += ["", f"### C = {c:,}", ""]
        for noisy in (True, False):
            if not any(_noisy(r) == noisy for r in present):
                continue
            for metric, (name, margin) in FACTORIAL_METRICS.items():
                lines += [
                    f"**{name}, label noise {'on' if noisy else 'off'}** (points; margin ±{margin:g})",
                    "",
                    *delta_table(results, design, c, noisy, metric),
                    "",
                ]
        if {True, False} <= {_noisy(r) for r in present}:
            for metric in ("rank1", "verify_accuracy"):
                lines += [
                    f"**Noise on minus noise off, Δ {FACTORIAL_METRICS[metric][0]}** (points; positive: sampling "
                    "loses less under noise)",
                    "",
                    *noise_table(results, design, c, metric),
                    "",
                ]
        if any(_noisy(r) for r in present):
            curves, deltas = _plot_curves(results, c, figures), _plot_deltas(results, design, c, figures)
            lines += [
                f"![learning curves]({figures.name}/{curves.name})",
                "",
                f"![Δ vs M]({figures.name}/{deltas.name})",
                "",
            ]
    done = {
        _done_key(Cell(r["num_classes"], r["sample_rate"], r["head"], r["seed"]), _record_key(r), None) for r in results
    }
    missing: dict[tuple[int, int, bool], int] = {}
    for job in jobs:
        if _done_key(job.cell, job.settings.key(), None) not in done:
            key = (job.cell.num_classes, job.settings.batch_per_rank * WORLD_SIZE, bool(job.settings.space.label_noise))
            missing[key] = missing.get(key, 0) + 1
    lines += [
        "Cells: Δ = cell minus the reference at the same (C, N, label noise), paired by seed (a seed fixes the "
        "data and the initialisation of both); [low, high]: the 95% t-interval of the paired differences; "
        "the verdict: lower / higher (interval excludes 0), equivalent (TOST inside the margin), inconclusive. "
        "‡: the batch's positives outnumber M, so the softmax held more than M centres (not the rate it names).",
        "",
        f"Cells finished: {len(results)} of {len(jobs)} planned; {sum(map(cell_seconds, results)) / 3600:.2f} h "
        "of cell time summed.",
        "",
        "Not run (cut by the budget or not yet run; rerun the command to add them): "
        + (
            "; ".join(f"C={c:,} N={n} noise {'on' if nz else 'off'}: {k} cells" for (c, n, nz), k in missing.items())
            or "none"
        )
        + ("; not calibrated: " + ", ".join(f"C={c:,}" for c in uncalibrated) if uncalibrated else ""),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="directory of results.jsonl and the plots; the report goes next to it as OUTPUT.md",
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--heads-at",
        type=int,
        nargs="*",
        default=None,
        help="C values of the softmax/CosFace/ArcFace comparison at r=1.0 (default: the two largest C)",
    )
    parser.add_argument("--samples-per-identity", type=int, default=Settings.samples_per_identity)
    parser.add_argument("--epochs", type=float, default=Settings.epochs)
    parser.add_argument("--batch-per-rank", type=int, default=Settings.batch_per_rank)
    parser.add_argument("--max-steps", type=int, default=0, help="cap steps per cell (smoke runs)")
    parser.add_argument(
        "--centre-momentum",
        type=float,
        default=None,
        help="diagnostics: SGD momentum of the centres only (default: the backbone's 0.9)",
    )
    parser.add_argument(
        "--dense-centre-momentum",
        action="store_true",
        default=None,
        help="diagnostics: the centres' momentum moves unsampled rows too (DenseMomentumSGD)",
    )
    parser.add_argument("--report", action="store_true", help="only (re)write the report from results.jsonl")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline, not the question")
    factorial = parser.add_argument_group("the factorial grid (C x M x N x seed x label noise)")
    factorial.add_argument("--factorial", action="store_true", help="run or report the factorial grid")
    factorial.add_argument(
        "--calibrate",
        type=int,
        nargs="*",
        default=None,
        metavar="C",
        help="difficulty search and learning-rate pilot (OUTPUT/calibration.jsonl) at the smallest C and these",
    )
    factorial.add_argument(
        "--timing", action="store_true", help="short runs for the timing model (OUTPUT/timing.jsonl)"
    )
    factorial.add_argument("--plan", action="store_true", help="print every cell, its estimate and the budget's cut")
    factorial.add_argument("--budget-hours", type=float, default=8.0, help="stop before a cell would pass this")
    factorial.add_argument("--doc", type=Path, default=None, help="the doc of the report (default OUTPUT.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.rates, args.seeds, args.max_steps = [200], [0.1, 1.0], [0], 4
        args.samples_per_identity, args.batch_per_rank = 4, 32
    if args.heads_at is None:
        args.heads_at = sorted(args.classes)[-2:]
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    holdout = HeldOut(identities=200, samples=4, pairs=1000) if args.quick else HeldOut()
    return Settings(
        holdout=holdout,
        samples_per_identity=args.samples_per_identity,
        epochs=args.epochs,
        batch_per_rank=args.batch_per_rank,
        max_steps=args.max_steps,
        centre_momentum=args.centre_momentum,
        dense_centre_momentum=args.dense_centre_momentum,
    )


def write_report(args: argparse.Namespace, settings: Settings, cells: Sequence[Cell]) -> Path:
    """Regenerate the results section of ``OUTPUT.md`` (between the markers; the prose around it stays)."""
    results = [
        r
        for r in read_results(args.output / "results.jsonl")
        if json.dumps(r["settings"], sort_keys=True) == settings.key()
    ]
    doc = args.output.parent / f"{args.output.name}.md"
    return write_generated(doc, report(results, cells, args.output), "Sample-rate study (generated)")


def quick_design() -> Design:
    """Seconds-long: one small C, two batches, both noise settings, a tiny held-out set, 4 steps."""
    tiny = replace(
        FACTORIAL_SETTINGS,
        holdout=HeldOut(identities=200, samples=4, pairs=1000, non_mated=50, impostors=2000),
        samples_per_identity=4,
        max_steps=4,
        rank1_points=2,
        space=replace(FACTORIAL_SETTINGS.space, images_tail=(1.7, 2, 8)),
    )
    return Design(
        settings=tiny,
        centres=(50, 100),
        seeds=(0,),
        blocks=((200, (32, 64), True), (200, (32,), False)),
        pilot_batches=(64,),
        max_probes=1,
        timing_steps=4,
        timing_cells=((200, 200, 32), (200, 50, 64)),
    )


def factorial_main(args: argparse.Namespace) -> int:
    """The factorial grid's modes: --calibrate, --timing, --plan, the (resumable, budgeted) grid, --report."""
    design = quick_design() if args.quick else Design()
    calibration_path, timing_path = args.output / "calibration.jsonl", args.output / "timing.jsonl"
    results_path = args.output / "results.jsonl"
    if args.calibrate is not None:
        calibrate(design, calibration_path, args.calibrate)
        print(calibration_summary(read_results(calibration_path), design))
        return 0
    if args.timing:
        run_jobs(pending_jobs(timing_jobs(design), read_results(timing_path)), timing_path)
        print(fit_timing(read_results(timing_path)))
        return 0
    if args.quick and not calibration_path.is_file():
        calibrate(design, calibration_path, design.classes)
    timing = fit_timing(read_results(timing_path))
    jobs, uncalibrated = factorial_jobs(design, read_results(calibration_path), timing)
    if args.plan:
        print(plan(jobs, read_results(results_path), args.budget_hours))
        print(f"timing model: {timing}")
        if uncalibrated:
            names = " ".join(map(str, uncalibrated))
            print(f"not calibrated yet (the runner leaves their cells out; run --calibrate {names}): C = {names}")
        return 0
    if not args.report:
        todo = pending_jobs(
            [job for job in jobs if job.cell.num_classes not in uncalibrated], read_results(results_path)
        )
        print(f"{len(jobs) - len(todo)} of {len(jobs)} cells done; running up to {len(todo)}", flush=True)
        if todo:
            run_jobs(todo, results_path, budget_hours=args.budget_hours)
    doc = args.doc or args.output.parent / f"{args.output.name}.md"
    text = factorial_report(
        read_results(results_path), read_results(calibration_path), jobs, uncalibrated, design, timing, args.output
    )
    print(write_generated(doc, text, "Sample-rate study (generated)", section="factorial"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.factorial:
        return factorial_main(args)
    settings = settings_from(args)
    cells = grid(args.classes, args.rates, args.seeds, args.heads_at)
    results_path = args.output / "results.jsonl"
    if not args.report:
        todo = pending_cells(cells, read_results(results_path), settings)
        print(f"{len(cells) - len(todo)} of {len(cells)} cells done; running {len(todo)}", flush=True)
        if todo:
            run_grid(todo, settings, results_path)
    print(write_report(args, settings, cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
