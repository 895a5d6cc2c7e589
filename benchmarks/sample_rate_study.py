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
grid) writes ``OUTPUT/../sample_rate_study.md`` and the plots from whatever results exist.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    low: float
    high: float


def summarise(values: Sequence[float]) -> Summary:
    """Mean, sample std and the 95% t-interval of the mean (a point when n = 1)."""
    values = np.asarray(values, dtype=np.float64)
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return Summary(n, mean, math.nan, mean, mean)
    std = float(np.std(values, ddof=1))
    half = _T95.get(n - 1, 1.96) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def overlaps(a: Summary, b: Summary) -> bool:
    return a.n >= 2 and b.n >= 2 and a.low <= b.high and b.low <= a.high


def _cells(results: Sequence[dict]) -> dict[tuple[str, int, float], list[dict]]:
    groups: dict[tuple[str, int, float], list[dict]] = {}
    for record in results:
        groups.setdefault((record["head"], record["num_classes"], record["sample_rate"]), []).append(record)
    return groups


def _points(s: Summary) -> str:
    if s.n < 2:
        return f"{100 * s.mean:.2f} (n=1)"
    return f"{100 * s.mean:.2f} ± {100 * s.std:.2f} [{100 * s.low:.2f}, {100 * s.high:.2f}]"


METRICS = {"verify_accuracy": "verification accuracy", "rank1": "rank-1 identification"}


@dataclass(frozen=True)
class Loss:
    """A sampled cell against r = 1.0 at the same C, for one metric (points)."""

    rate: float
    centres: float
    delta: float
    """Mean of r = 1.0 minus mean of r (positive: sampling lost accuracy)."""
    error: float
    """95% half-width of the difference of means (Welch, normal approximation; 0 with one seed)."""
    overlap: bool
    paired: Summary
    """Per-seed differences (r = 1.0 minus r, same training seed), points: mean and 95% t-interval."""


def losses_vs_full(results: Sequence[dict], metric: str) -> dict[int, list[Loss]]:
    """Per C, every sampled ArcFace rate against r = 1.0 on ``metric``."""
    groups = _cells([r for r in results if r["head"] == "arcface"])
    out: dict[int, list[Loss]] = {}
    for (_, c, rate), records in sorted(groups.items()):
        full = groups.get(("arcface", c, 1.0))
        if rate == 1.0 or not full:
            continue
        a, f = summarise([r[metric] for r in records]), summarise([r[metric] for r in full])
        error = 1.96 * math.sqrt((a.std**2 / a.n if a.n > 1 else 0.0) + (f.std**2 / f.n if f.n > 1 else 0.0))
        by_seed = {r["seed"]: r[metric] for r in full}
        paired = summarise(
            [100 * (by_seed[r["seed"]] - r[metric]) for r in records if r["seed"] in by_seed] or [math.nan]
        )
        out.setdefault(c, []).append(
            Loss(
                rate,
                float(np.mean([r["centres_per_step"] for r in records])),
                100 * (f.mean - a.mean),
                100 * error,
                overlaps(a, f),
                paired,
            )
        )
    return out


def smallest_rate_within(losses: Sequence[Loss], points: float = 0.3) -> float:
    """The smallest r whose mean is within ``points`` of r = 1.0, every larger sampled r too (1.0 if none)."""
    best = 1.0
    for loss in sorted(losses, key=lambda entry: -entry.rate):
        if loss.delta > points:
            break
        best = loss.rate
    return best


def _rate_text(rate: float) -> str:
    return "no sampled r (only r = 1.0)" if rate == 1.0 else f"r = {rate:g}"


def report(results: Sequence[dict], expected: Sequence[Cell], figures: Path, wall: str) -> str:
    """The markdown tables (ArcFace over (C, r), heads at r = 1.0), the recommendation and the plot."""
    groups = _cells(results)
    deltas = {metric: losses_vs_full(results, metric) for metric in METRICS}

    def delta_text(metric: str, c: int, rate: float) -> str:
        found = [entry for entry in deltas[metric].get(c, []) if entry.rate == rate]
        if not found:
            return "—"
        loss = found[0]
        paired = f" paired [{-loss.paired.high:+.2f}, {-loss.paired.low:+.2f}]" if loss.paired.n > 1 else ""
        return f"{-loss.delta:+.2f}{paired}" + (" (no difference measured)" if loss.overlap else "")

    lines = [
        "| C | r | centres/step | seeds | verify acc % (mean ± std [95% CI]) | Δ verify "
        "| rank-1 % (mean ± std [95% CI]) | Δ rank-1 | TAR@FAR=1e-3 % | train s/seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (head, c, rate), records in sorted(groups.items(), key=lambda item: (item[0][1], -item[0][2])):
        if head != "arcface":
            continue
        acc, rank1 = summarise([r["verify_accuracy"] for r in records]), summarise([r["rank1"] for r in records])
        tar = summarise([r["tar_at_far_1e-3"] for r in records])
        lines.append(
            f"| {c:,} | {rate:g} | {np.mean([r['centres_per_step'] for r in records]):,.0f} | {acc.n} "
            f"| {_points(acc)} | {delta_text('verify_accuracy', c, rate)} | {_points(rank1)} "
            f"| {delta_text('rank1', c, rate)} | {_points(tar)} "
            f"| {np.mean([r['train_seconds'] for r in records]):.0f} |"
        )
    head_rows = [
        "| C | head | seeds | verify acc % (mean ± std [95% CI]) | rank-1 % (mean ± std [95% CI]) | TAR@FAR=1e-3 % |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted({c for h, c, _ in groups if h != "arcface"}):
        for head in HEADS:
            records = groups.get((head, c, 1.0))
            if records:
                summaries = [
                    summarise([r[m] for r in records]) for m in ("verify_accuracy", "rank1", "tar_at_far_1e-3")
                ]
                head_rows.append(
                    f"| {c:,} | {HEADS[head]} | {summaries[0].n} | " + " | ".join(_points(s) for s in summaries) + " |"
                )
    recommendation = [
        f"- C = {c:,} (global batch {groups[('arcface', c, 1.0)][0]['global_batch']}): "
        + ", ".join(f"{METRICS[m]} " + _rate_text(smallest_rate_within(deltas[m].get(c, []))) for m in METRICS)
        for c in sorted({c for h, c, r in groups if h == "arcface" and r == 1.0})
    ]
    done = {(r["num_classes"], r["sample_rate"], r["head"], r["seed"]) for r in results}
    missing = [c.name() for c in expected if (c.num_classes, c.sample_rate, c.head, c.seed) not in done]
    plot = _plot(deltas, figures) if any(deltas.values()) else None
    return "\n".join(
        [
            "<!-- generated by benchmarks/sample_rate_study.py (--report): everything up to the end marker -->",
            "### ArcFace over (C, r), held-out identities",
            "",
            *lines,
            "",
            'Δ: mean of r minus mean of r = 1.0 at the same C, in points; "no difference measured" where the two '
            '95% t-intervals (over seeds) overlap. "paired": 95% t-interval of the per-seed differences (the '
            "same training seed gives both cells the same initialisation and data order), a sharper test than the "
            "overlap. Intervals are t-intervals of the mean and can pass 100%. centres/step: centres in the "
            "softmax per step, all ranks (the batch's positives included).",
            "",
            "### Heads at r = 1.0",
            "",
            *(head_rows if len(head_rows) > 2 else ["(no head-comparison cells finished)"]),
            "",
            "### Smallest r within 0.3 points of r = 1.0 (means; every larger sampled r also within)",
            "",
            *recommendation,
            "",
            f"![accuracy lost vs r]({figures.name}/{plot.name})" if plot else "",
            "",
            f"Cells finished: {len(results)} of {len(expected)} planned; {wall}.",
            "",
            ("Missing cells (not run yet; rerun the command to add them): " + "; ".join(missing))
            if missing
            else "All planned cells finished.",
        ]
    )


def _plot(deltas: dict[str, dict[int, list[Loss]]], figures: Path) -> Path:
    """Points lost vs r and vs centres sampled per step, one line per C, 95% error bars; a row per metric."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(deltas), 2, figsize=(11, 4 * len(deltas)), dpi=100, squeeze=False)
    try:
        for row, (metric, per_c) in enumerate(deltas.items()):
            for c, losses in sorted(per_c.items()):
                losses = sorted(losses, key=lambda entry: entry.rate)
                y, err = [entry.delta for entry in losses], [entry.error for entry in losses]
                axes[row][0].errorbar(
                    [entry.rate for entry in losses], y, yerr=err, marker="o", capsize=3, label=f"C={c:,}"
                )
                axes[row][1].errorbar(
                    [entry.centres for entry in losses], y, yerr=err, marker="o", capsize=3, label=f"C={c:,}"
                )
            for ax, xlabel in zip(axes[row], ("sample rate r", "centres in the softmax per step (all ranks)")):
                ax.set_xscale("log")
                ax.axhline(0.0, color="grey", lw=0.8)
                ax.axhline(0.3, color="grey", lw=0.8, ls="--")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"{METRICS[metric]} lost vs r=1.0 (points)")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend()
            rates = sorted({entry.rate for losses in per_c.values() for entry in losses})
            axes[row][0].xaxis.set_major_locator(matplotlib.ticker.FixedLocator(rates))
            axes[row][0].xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{r:g}" for r in rates]))
            axes[row][0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        figure.suptitle("Partial FC: accuracy lost to sampling (ArcFace, mean over seeds, 95% interval)")
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
    seconds = sum(r["train_seconds"] for r in results)
    wall = (
        f"{seconds / 60:.1f} min of training summed over cells, 2 gloo ranks on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}"
    )
    doc = args.output.parent / f"{args.output.name}.md"
    text = report(results, cells, args.output, wall)
    return write_generated(doc, text, "Sample-rate study (generated)")


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
