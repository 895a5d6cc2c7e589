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
held-out identities start at 2^40, disjoint from every training set.

**Cell** = (C, r, head, seed): the MLP and the centres are trained for ``epochs`` passes over the
``C·K`` samples (shuffled per epoch by the training seed; the same K and epochs in every cell), then
the backbone embeds the held-out set: 10-fold verification accuracy on fixed pairs, TAR@FAR=1e-3 on
them, and 1:N identification (rank-1, TPIR@FPIR=1e-2) with a gallery of one sample per identity.

    python benchmarks/sample_rate_study.py --output docs/sample_rate_study      # the grid (resumable)
    python benchmarks/sample_rate_study.py --output docs/sample_rate_study --report   # report only
    python benchmarks/sample_rate_study.py --quick --output /tmp/srs            # a smoke run

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


def counter_gaussians(seed: int, purpose: int, keys: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[len(keys), count]`` standard normals, each a pure function of (seed, purpose, key, index, column).

    Counter-based (hash, then Box-Muller), so any row is computed without generating the others:
    identities and samples are addressed, not streamed.
    """
    with np.errstate(over="ignore"):
        base = np.uint64(derive_seed(seed, purpose))
        row = _mix(_mix(base ^ np.asarray(keys, dtype=np.uint64)) + np.asarray(index, dtype=np.uint64) * _GOLDEN)
        half = (count + 1) // 2
        columns = np.arange(2 * half, dtype=np.uint64) * _GOLDEN
        bits = _mix(row[:, None] ^ _mix(columns + base)[None, :])
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
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

    def basis(self) -> np.ndarray:
        """U: ``[d, k]`` orthonormal nuisance directions of this data seed."""
        raw = np.random.default_rng(derive_seed(self.seed, _BASIS)).standard_normal(
            (self.input_dim, self.nuisance_rank)
        )
        return np.linalg.qr(raw)[0]

    def prototypes(self, ids: np.ndarray) -> np.ndarray:
        """``[n, d]`` unit-norm prototypes of identities ``ids``."""
        raw = counter_gaussians(self.seed, _PROTOTYPE, ids, np.zeros(len(ids), np.uint64), self.input_dim)
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

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

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        ids = HOLDOUT_BASE + np.repeat(np.arange(self.identities, dtype=np.uint64), self.samples)
        index = np.tile(np.arange(self.samples, dtype=np.uint64), self.identities)
        return ids, index

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

    def key(self) -> str:
        """The settings as JSON; options left at None are omitted, so adding one keeps earlier results valid."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)


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
    space, per_id = settings.space, settings.samples_per_identity
    basis = space.basis()
    global_batch = settings.batch_per_rank * world_size
    slots = num_classes * per_id
    steps_per_epoch = slots // global_batch
    epoch = 0
    while True:
        order = torch.randperm(
            slots, generator=torch.Generator().manual_seed(derive_seed(seed, _SHUFFLE, epoch))
        ).numpy()
        for step in range(steps_per_epoch):
            start = step * global_batch + rank * settings.batch_per_rank
            chosen = order[start : start + settings.batch_per_rank]
            ids, index = chosen // per_id, chosen % per_id
            yield torch.from_numpy(space.samples(ids, index, basis)), torch.from_numpy(ids.astype(np.int64))
        epoch += 1


def total_steps(settings: Settings, num_classes: int, world_size: int) -> int:
    per_epoch = num_classes * settings.samples_per_identity // (settings.batch_per_rank * world_size)
    if per_epoch == 0:
        raise ValueError(f"C={num_classes} x K={settings.samples_per_identity} is below one global batch")
    steps = math.ceil(settings.epochs * per_epoch)
    return min(steps, settings.max_steps) if settings.max_steps else steps


@torch.no_grad()
def evaluate(backbone: nn.Module, settings: Settings) -> dict[str, float]:
    """Held-out verification (10-fold accuracy, TAR@FAR=1e-3) and identification (rank-1, TPIR@FPIR=1e-2)."""
    holdout = settings.holdout
    ids, index = holdout.ids()
    features = torch.from_numpy(settings.space.samples(ids, index))
    backbone.eval()
    embeddings = torch.cat([backbone(chunk) for chunk in features.split(4096)])
    backbone.train()
    embeddings = nn.functional.normalize(embeddings.double(), dim=1).numpy()
    first, second, issame = holdout.pair_rows(settings.space.seed)
    scores = np.einsum("ij,ij->i", embeddings[first], embeddings[second])
    accuracy = verification_accuracy(scores, issame)
    tar, _ = strict_tar_at_far(scores[issame], scores[~issame], [1e-3])  # at most FAR x negatives accepted
    # 1:N: sample 0 of the first 90% of identities is the gallery; the other samples of every identity
    # probe it (the last 10% are non-mated).
    subject = (ids - HOLDOUT_BASE).astype(np.int64)
    enrolled = subject < int(0.9 * holdout.identities)
    gallery = (index == 0) & enrolled
    ident = identification_metrics(
        embeddings[index != 0], subject[index != 0], embeddings[gallery], subject[gallery], fpirs=(1e-2,)
    )
    return {
        "verify_accuracy": accuracy.mean,
        "verify_fold_std": accuracy.std,
        "tar_at_far_1e-3": float(tar[0]),
        "rank1": ident.rank(1),
        "tpir_at_fpir_1e-2": ident.tpir_at_fpir[1e-2],
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
    start = time.perf_counter()
    for step in range(steps):  # the trainer's train_step without its logging and watchdog
        optimizer.set_lr(schedule(step))
        features, labels = next(batches)
        loss = pfc(model(features), labels)
        (loss * optimizer.loss_multiplier).backward()
        sampled += pfc.last_sampled_rows.numel()
        optimizer.step(loss.detach(), step_number=step + 1)
        if step % max(1, steps // 20) == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
    if world_size > 1:
        dist.all_reduce(sampled)
    seconds = time.perf_counter() - start
    metrics = evaluate(backbone, settings) if rank == 0 else {}
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


def pending_cells(cells: Sequence[Cell], results: Sequence[dict], settings: Settings) -> list[Cell]:
    done = {
        (r["num_classes"], r["sample_rate"], r["head"], r["seed"])
        for r in results
        if json.dumps(r["settings"], sort_keys=True) == settings.key()
    }
    return [c for c in cells if (c.num_classes, c.sample_rate, c.head, c.seed) not in done]


def _worker(rank: int, world_size: int, port: int, cells: list[Cell], settings: Settings, results: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for cell in cells:
            # Another invocation may have finished this cell meanwhile (a grid extended in parallel): rank 0 decides.
            done = torch.tensor(rank == 0 and not pending_cells([cell], read_results(Path(results)), settings))
            dist.broadcast(done, 0)
            if done:
                continue
            record = run_cell(cell, settings, rank, world_size)
            if rank == 0:
                append_result(Path(results), record)
                print(
                    f"{time.strftime('%H:%M:%S')} {cell.name()}: verify {record['verify_accuracy']:.4f} "
                    f"rank-1 {record['rank1']:.4f} loss {record['final_loss']:.3f} "
                    f"({record['steps']} steps, {record['train_seconds']:.0f}s)",
                    flush=True,
                )
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_grid(cells: Sequence[Cell], settings: Settings, results: Path, world_size: int = 2) -> None:
    """Train ``cells`` on ``world_size`` gloo ranks (one process group for all), appending to ``results``."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(
        _worker,
        args=(world_size, port, list(cells), settings, str(results)),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
