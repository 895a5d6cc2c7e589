"""A training run at a glance: ``python -m partialfc.report RUN_DIR`` (``--help``).

Reads the run record ``train_log.jsonl`` (the start, step and evaluation records the trainer
writes, see :mod:`partialfc.training.run_log`) and ``summary.json``, and writes PNG plots over steps of loss,
learning rate, throughput, gradient norm, data wait and memory, one line per start of the job (a
restart on another world size is another curve, not a jump in one), and one per evaluation protocol of
its headline number per source (``.bin`` accuracy with its spread over the 10 folds, IJB TAR@FAR,
rank-1); plus ``report.md``, a short markdown summary that embeds them.
A resumed run may record a step twice; in the summary figures the later record wins, as it describes
the run that went on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.common.cli import ArgumentParser
from partialfc.eval.plots import line_plot
from partialfc.training.records import RUN_RECORD_TYPES, RunRecord, StartRecord, StepRecord, from_json, required_fields
from partialfc.training.run_log import RECORD_FILE


class ReportError(ValueError):
    """The run directory lacks what a report needs; the message names the file."""


METRICS = ("loss", "lr", "samples_per_s", "grad_norm", "data_wait", "mem_gib")


@dataclass
class Segment:
    """The step records of one start of the job, in the order recorded."""

    label: str
    values: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in ("step", *METRICS)})


@dataclass
class EvaluationCurve:
    """One evaluation's headline number over steps (the later record of a step wins)."""

    protocol: str
    target: str
    headline: str
    steps: np.ndarray
    values: np.ndarray
    spread: np.ndarray | None  # the protocol's ``<headline>_std`` where it reports one (.bin: over the 10 folds)


@dataclass
class RunHistory:
    """Per-step values from the run record, sorted by step (the later record wins), and per start."""

    steps: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    samples_per_s: np.ndarray
    total_steps: int
    seconds: float  # from the first to the last step record
    evaluation: dict[str, EvaluationCurve] = field(default_factory=dict)  # by "protocol/target", in record order
    segments: list[Segment] = field(default_factory=list)


def read_records(path: Path) -> list[RunRecord]:
    """The records of a run record file, each checked for its event's fields; ReportError names the line."""
    if not path.is_file():
        raise ReportError(f"{path}: no {RECORD_FILE} (is this a run directory written by partialfc.train?)")
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            values = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # the last write of a killed run, cut short
            raise ReportError(f"{path}:{number}: not a JSON record: {err}") from None
        kind = RUN_RECORD_TYPES.get(values.get("event"))
        missing = [name for name in required_fields(kind) if name not in values] if kind else ["event"]
        if kind is None or missing:
            raise ReportError(f"{path}:{number}: a record of event {values.get('event')!r} lacking {missing}")
        records.append(from_json(values))
    return records


def read_history(path: str | Path) -> RunHistory:
    """The run's history from its run record ``path`` (``RUN_DIR/train_log.jsonl``)."""
    path = Path(path)
    by_step: dict[int, tuple[float, float, float]] = {}
    evaluated: dict[str, dict[int, tuple[float, float]]] = {}
    headlines: dict[str, tuple[str, str, str, bool]] = {}
    total, times = 0, []
    segments: list[Segment] = []
    for record in read_records(path):
        if isinstance(record, StepRecord):
            step = record.step
            by_step[step] = (record.loss, record.lr, record.samples_per_s)
            total = record.total_steps
            times.append(record.time)
            if not segments:
                segments.append(Segment("start 1"))
            row = {
                "step": step,
                "loss": record.loss,
                "lr": record.lr,
                "samples_per_s": record.samples_per_s,
                "grad_norm": float("nan") if record.grad_norm is None else record.grad_norm,
                "data_wait": 100 * record.data_wait,
                "mem_gib": record.memory_bytes / 2**30,
            }
            for name, value in row.items():
                segments[-1].values[name].append(value)
        elif isinstance(record, StartRecord):
            segments.append(
                Segment(f"start {len(segments) + 1}: {record.world_size} rank(s) from step {record.start_step}")
            )
        else:
            spread_name = f"{record.headline}_std"
            headlines[record.key] = (record.protocol, record.target, record.headline, spread_name in record.summary)
            evaluated.setdefault(record.key, {})[record.step] = (record.score, record.summary.get(spread_name, 0.0))
    if not by_step:
        raise ReportError(f"{path}: no step records; nothing to plot")
    steps = np.array(sorted(by_step))
    values = np.array([by_step[s] for s in steps])
    evaluation = {}
    for key, by_eval_step in evaluated.items():
        protocol, target, headline, has_spread = headlines[key]
        order = sorted(by_eval_step)
        spread = np.array([by_eval_step[s][1] for s in order]) if has_spread else None
        evaluation[key] = EvaluationCurve(
            protocol, target, headline, np.array(order), np.array([by_eval_step[s][0] for s in order]), spread
        )
    return RunHistory(
        steps,
        values[:, 0],
        values[:, 1],
        values[:, 2],
        total,
        max(times) - min(times),
        evaluation,
        [segment for segment in segments if segment.values["step"]],
    )


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from None


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plots and ``report.md`` into ``out`` (default ``RUN_DIR/report``); returns the markdown path."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report"
    history = read_history(run_dir / RECORD_FILE)
    summary = read_summary(run_dir)
    panels = [
        ("loss", "loss", "loss", "Training loss", "loss"),
        ("learning rate", "lr", "lr", "Learning rate", "lr"),
        ("throughput", "samples_per_s", "throughput", "Throughput (global batch)", "samples/s"),
        ("gradient norm", "grad_norm", "grad_norm", "Global gradient norm (before clipping)", "norm"),
        ("data wait", "data_wait", "data_wait", "Time waiting for data", "% of step time"),
        ("memory", "mem_gib", "memory", "Peak device memory of rank 0 (CPU: its resident set)", "GiB"),
    ]
    plots = {}
    for title, metric, file, heading, unit in panels:
        series = [
            (segment.label, np.array(segment.values["step"]), np.array(segment.values[metric]))
            for segment in history.segments
            if not np.isnan(segment.values[metric]).all()
        ]
        if series:
            plots[title] = line_plot(out / f"{file}.png", series, heading, "step", unit)
    for protocol in dict.fromkeys(curve.protocol for curve in history.evaluation.values()):
        curves = [curve for curve in history.evaluation.values() if curve.protocol == protocol]
        headline, spread = curves[0].headline, curves[0].spread is not None
        low = min(float((c.values - (c.spread if c.spread is not None else 0)).min()) for c in curves)
        plots[f"{protocol} {headline}"] = line_plot(
            out / f"{protocol}.png",
            [
                (c.target, c.steps, c.values, c.spread) if c.spread is not None else (c.target, c.steps, c.values)
                for c in curves
            ],
            f"{protocol}: {headline}" + (", mean ± std over the folds" if spread else ""),
            "step",
            headline,
            ylim=(max(0.0, min(low - 0.01, 0.95)), 1.0),
        )

    last = len(history.steps) - 1
    lines = [
        f"# Run report: {run_dir.resolve().name}",
        "",
        f"- status: {summary.get('status', 'unknown (no summary.json)')}",
        f"- steps logged: {history.steps[0]}..{history.steps[last]} of {history.total_steps}"
        f" over {history.seconds / 60:.1f} min of logged time",
        f"- loss: {history.loss[0]:.4f} at step {history.steps[0]} -> "
        f"{history.loss[last]:.4f} at step {history.steps[last]}",
        f"- throughput: median {np.median(history.samples_per_s):,.0f} samples/s "
        f"(min {history.samples_per_s.min():,.0f}, max {history.samples_per_s.max():,.0f})",
        f"- final learning rate: {history.lr[last]:.5g}",
    ]
    for curve in history.evaluation.values():
        best, last_evaluation = int(np.argmax(curve.values)), len(curve.values) - 1

        def reading(index: int, curve: EvaluationCurve = curve) -> str:
            spread = f" ± {curve.spread[index]:.4f}" if curve.spread is not None else ""
            return f"{curve.values[index]:.4f}{spread} at step {curve.steps[index]}"

        lines.append(
            f"- {curve.protocol} {curve.target}: best {curve.headline} {reading(best)}, last {reading(last_evaluation)}"
            + (" (± std over the 10 folds)" if curve.spread is not None else "")
        )
    if len(history.segments) > 1:
        lines.append(f"- starts: {len(history.segments)} ({'; '.join(s.label for s in history.segments)})")
    if summary.get("model"):
        lines.append(f"- model: `{summary['model']}`")
    lines += ["", *(f"![{title}]({path.name})" for title, path in plots.items()), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.report",
        description=f"Turn a run directory's run record ({RECORD_FILE}) and summary.json into PNG plots over "
        "steps (loss, learning rate, throughput, gradient norm, data wait, memory: one line per start of the job; "
        "each evaluation protocol's headline per source) and a short markdown summary, report.md.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help=f"the training run's output directory (holds {RECORD_FILE})")
    parser.add_argument("--out", default=None, help="folder for the plots and report.md (default: RUN_DIR/report)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = write_report(args.run_dir, args.out)
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
