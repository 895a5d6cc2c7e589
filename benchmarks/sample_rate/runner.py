"""The resumable runner: cells in order on spawned gloo ranks, one JSON line per finished cell.

A rerun skips cells already in the results file with the same settings (:meth:`Settings.key`), so a grid
can be extended later; with a budget, the runner stops before the first cell that would pass it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from study_report import append_result, read_results

from sample_rate.cell import Cell, Settings, run_cell


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


def done_key(cell: Cell, settings_key: str, purpose: str | None) -> tuple[object, ...]:
    """What identifies a finished run: the cell, its settings (as :meth:`Settings.key`) and its purpose."""
    return (cell.num_classes, cell.sample_rate, cell.head, cell.seed, settings_key, purpose)


def pending_jobs(jobs: Sequence[Job], results: Sequence[dict]) -> list[Job]:
    """The jobs without a record of the same cell, settings and purpose."""
    done = {
        done_key(Cell(r["num_classes"], r["sample_rate"], r["head"], r["seed"]), record_key(r), r.get("purpose"))
        for r in results
    }
    return [job for job in jobs if done_key(job.cell, job.settings.key(), job.purpose) not in done]


def record_key(record: dict) -> str:
    """A record's settings as :meth:`Settings.key` wrote them, so that records and jobs compare."""
    return json.dumps(record["settings"], sort_keys=True)


def pending_cells(cells: Sequence[Cell], results: Sequence[dict], settings: Settings) -> list[Cell]:
    """The first grid's cells without a record under ``settings``."""
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
