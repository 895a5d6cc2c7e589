"""The factorial grid's design: cells (C, M, N, seed, label noise), calibration, timing model and plan.

r = M / C, global batch N, data seed = training seed, ArcFace, the same epochs over the same data at every
N (steps = epochs · images / N), the learning rate per N by a pilot's chosen rule, the difficulty σ_e per
C by a search (``--calibrate``, ``OUTPUT/calibration.jsonl``), loss and held-out rank-1 curves along each
run, TAR@FAR=1e-4 on 200k impostor pairs; cells run in a stated priority order, within a time budget
estimated by a per-step timing model (``--timing``, ``OUTPUT/timing.jsonl``; ``--plan`` prints it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from study_report import read_results

from sample_rate.cell import Cell, Settings, total_steps
from sample_rate.identities import HeldOut, IdentitySpace
from sample_rate.runner import Job, cell_seconds, done_key, pending_jobs, record_key, run_jobs

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


def calibrating(record: dict, design: Design, purpose: str) -> bool:
    """A calibration record of ``purpose`` run under this design's settings (σ_e, N and lr aside)."""
    if record.get("purpose") != purpose:
        return False
    c, space = record["num_classes"], record["settings"]["space"]
    job = design.job(
        c, record_centres(record), record["global_batch"], True, 0, space["noise_std"], record["settings"]["lr"]
    )
    return job.settings.key() == record_key(record) and record_centres(record) == design.centres_at(c)[0]


def _probes(records: Sequence[dict], design: Design, num_classes: int) -> list[tuple[float, float]]:
    return [
        (r["settings"]["space"]["noise_std"], r["rank1"])
        for r in records
        if r["num_classes"] == num_classes and calibrating(r, design, "difficulty")
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
    scores = {rule: [r["rank1"] for r in records if calibrating(r, design, f"lr:{rule}")] for rule in design.lr_rules}
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
        done_key(Cell(r["num_classes"], r["sample_rate"], r["head"], r["seed"]), record_key(r), None): r
        for r in results
    }
    lines = [f"{'#':>4} {'C':>9} {'N':>5} {'M':>7} {'r':>8} noise seed {'steps':>7} {'seconds':>8} {'cum h':>7}"]
    runs, everything, cut = 0.0, 0.0, 0
    for number, job in enumerate(jobs, 1):
        record = finished.get(done_key(job.cell, job.settings.key(), None))
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
