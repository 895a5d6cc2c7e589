"""The study's reports, from the result files alone, so the text is the same on any machine.

The first grid: each sampled cell is compared with r = 1.0 at its C (each head with ArcFace) through
per-seed paired differences, labelled by :func:`study_stats.verdict`: a t-interval with n − 1 d.f., then
TOST at the metric's margin in ``MARGINS``; the seeds share one data set, so the intervals hold
optimisation noise only. The factorial grid: its calibration, timing model and, per C, paired Δ tables
against the reference M at each (N, label noise), with plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from study_stats import Estimate, t_half_width, t_interval, verdict

from partialfc.common.distributed import shard_range
from partialfc.core.partial_fc import sampled_classes
from sample_rate.cell import CURVE_GALLERY, HEADS, Cell
from sample_rate.design import (
    TIMING_TERMS,
    WORLD_SIZE,
    Design,
    TimingModel,
    calibrating,
    chosen_lr_rule,
    chosen_noise_std,
    record_centres,
)
from sample_rate.runner import Job, cell_seconds, done_key, record_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


def _save(figure: Figure, path: Path) -> Path:
    """Lay ``figure`` out and write it as a PNG at ``path``; the caller closes it."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


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
                for limit in (-MARGINS[metric], MARGINS[metric]):
                    ax.axhline(limit, color="grey", lw=0.8, ls="--")
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
        return _save(figure, figures / "accuracy_loss.png")
    finally:
        plt.close(figure)


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
            if r["num_classes"] == c and calibrating(r, design, "difficulty"):
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
        return _save(figure, figures / f"curves_{c}.png")
    finally:
        plt.close(figure)


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
        return _save(figure, figures / f"deltas_{c}.png")
    finally:
        plt.close(figure)


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
        done_key(Cell(r["num_classes"], r["sample_rate"], r["head"], r["seed"]), record_key(r), None) for r in results
    }
    missing: dict[tuple[int, int, bool], int] = {}
    for job in jobs:
        if done_key(job.cell, job.settings.key(), None) not in done:
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
