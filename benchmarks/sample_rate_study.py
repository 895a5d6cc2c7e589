"""How low can Partial FC's sample rate go? A feature-level study over many classes.

Image training at 100k+ classes is out of reach on CPUs, but the question (does sampling a fraction
r of the negative centres cost accuracy?) is about the classifier layer, so this study trains on
synthetic identities defined directly in feature space, with a small MLP as the backbone and the
package's real training pieces: a DDP backbone, :class:`~partialfc.PartialFC` (sampling, margins,
distributed cross-entropy) with its lazy centre optimizer, :class:`~partialfc.training.optimizer.TrainingOptimizer`
(one global gradient norm, then both halves step), the LR schedule, on 2 gloo ranks.

The study's parts live in ``benchmarks/sample_rate/``: ``identities`` (the generator, defined once, before
any result: docs/sample_rate_study.md), ``cell`` (training and evaluating one (C, r, head, seed) cell),
``runner`` (the first grid's order and the resumable, budgeted runner on spawned ranks), ``design`` (the
factorial grid ``--factorial``: calibration search, timing model, plan) and ``report`` (both reports). This
script is their command line:

    python benchmarks/sample_rate_study.py --output docs/sample_rate_study      # the grid (resumable)
    python benchmarks/sample_rate_study.py --output docs/sample_rate_study --report   # report only
    python benchmarks/sample_rate_study.py --quick --output /tmp/srs            # a smoke run
    python benchmarks/sample_rate_study.py --factorial --output docs/sample_rate_study/factorial \\
        --doc docs/sample_rate_study.md [--calibrate [C ...] | --timing | --plan | --report] [--budget-hours H]

Each finished cell appends one JSON line to ``OUTPUT/results.jsonl``; a rerun skips cells already
there with the same settings. ``--report`` (also run after the grid) writes the generated section of
``OUTPUT.md`` (``--doc`` for the factorial grid) and the plots from whatever results exist.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sample_rate.cell import Cell, Settings
from sample_rate.design import FACTORIAL_SETTINGS, Design, calibrate, factorial_jobs, fit_timing, plan, timing_jobs
from sample_rate.identities import HeldOut
from sample_rate.report import calibration_summary, factorial_report, report
from sample_rate.runner import grid, pending_cells, pending_jobs, run_grid, run_jobs
from study_report import read_results, write_generated


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
