"""A training run at a glance: ``python -m partialfc.report RUN_DIR`` (``--help``).

Reads ``train.log`` (the start, step and verification lines the trainer writes, see
``Trainer._run``, ``Trainer._log`` and ``Trainer._verify``) and ``summary.json`` (see
:mod:`partialfc.run_log`), and writes PNG plots over steps of loss, learning rate, throughput,
gradient norm, data wait and memory, one line per start of the job (a restart on another world size
is another curve, not a jump in one), and of verification accuracy per set with its spread over the
10 folds; plus ``report.md``, a short markdown summary that embeds them. A resumed run may log a step
twice; in the summary figures the later line wins, as it describes the run that went on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.cli import ArgumentParser
from partialfc.eval.plots import line_plot

_STAMP = r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)"
STEP_LINE = re.compile(
    _STAMP + r" step (?P<step>\d+)/(?P<total>\d+) epoch (?P<epoch>\d+) loss (?P<loss>\S+) lr (?P<lr>\S+) "
    r"grad_norm (?P<grad_norm>\S+) (?P<samples>[\d,.]+) samples/s(?: data_wait (?P<data_wait>[\d.]+)%)?"
    r"(?: mem (?P<mem>[\d.]+)GiB)?"
)
START_LINE = re.compile(_STAMP + r" partialfc .* on (?P<world>\d+) rank\(s\) .* start at step (?P<step>\d+)")
VERIFICATION_LINE = re.compile(
    _STAMP + r" verification (?P<name>\S+) step (?P<step>\d+): accuracy (?P<accuracy>[\d.]+) ± (?P<std>[\d.]+), "
    r"TAR@FAR=(?P<far>\S+) (?P<tar>[\d.]+|nan)"
)


class ReportError(ValueError):
    """The run directory lacks what a report needs; the message names the file."""


METRICS = ("loss", "lr", "samples_per_s", "grad_norm", "data_wait", "mem_gib")


@dataclass
class Segment:
    """The step lines of one start of the job, in the order logged."""

    label: str
    values: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in ("step", *METRICS)})


@dataclass
class RunHistory:
    """Per-step values parsed from train.log, sorted by step (the later line wins), and per start."""

    steps: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    samples_per_s: np.ndarray
    total_steps: int
    seconds: float  # from the first to the last step line
    # name -> (steps, accuracy, standard deviation over the folds)
    verification: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)


def _timestamp(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def parse_train_log(path: str | Path) -> RunHistory:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no train.log (is this a run directory written by partialfc.train?)")
    by_step: dict[int, tuple[float, float, float]] = {}
    accuracy: dict[str, dict[int, tuple[float, float]]] = {}
    total, times, segments = 0, [], []
    for line in path.read_text(errors="replace").splitlines():
        if match := STEP_LINE.match(line):
            step = int(match["step"])
            by_step[step] = (float(match["loss"]), float(match["lr"]), float(match["samples"].replace(",", "")))
            total = int(match["total"])
            times.append(_timestamp(match["time"]))
            if not segments:
                segments.append(Segment("start 1"))
            row = {"step": step, "loss": by_step[step][0], "lr": by_step[step][1], "samples_per_s": by_step[step][2],
                   "grad_norm": float(match["grad_norm"]), "data_wait": float(match["data_wait"] or "nan"),
                   "mem_gib": float(match["mem"] or "nan")}
            for name, value in row.items():
                segments[-1].values[name].append(value)
        elif match := START_LINE.match(line):
            segments.append(Segment(f"start {len(segments) + 1}: {match['world']} rank(s) from step {match['step']}"))
        elif match := VERIFICATION_LINE.match(line):
            accuracy.setdefault(match["name"], {})[int(match["step"])] = (float(match["accuracy"]), float(match["std"]))
    if not by_step:
        raise ReportError(f"{path}: no step lines ('... step N/M epoch E loss L lr X ...'); nothing to plot")
    steps = np.array(sorted(by_step))
    values = np.array([by_step[s] for s in steps])
    verification = {name: (np.array(sorted(v)), np.array([v[s][0] for s in sorted(v)]),
                           np.array([v[s][1] for s in sorted(v)])) for name, v in accuracy.items()}
    return RunHistory(steps, values[:, 0], values[:, 1], values[:, 2], total, max(times) - min(times),
                      verification, [segment for segment in segments if segment.values["step"]])


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
    history = parse_train_log(run_dir / "train.log")
    summary = read_summary(run_dir)
    panels = [("loss", "loss", "loss", "Training loss", "loss"), ("learning rate", "lr", "lr", "Learning rate", "lr"),
              ("throughput", "samples_per_s", "throughput", "Throughput (global batch)", "samples/s"),
              ("gradient norm", "grad_norm", "grad_norm", "Global gradient norm (before clipping)", "norm"),
              ("data wait", "data_wait", "data_wait", "Time waiting for data", "% of step time"),
              ("memory", "mem_gib", "memory", "Peak device memory of rank 0 (CPU: its resident set)", "GiB")]
    plots = {}
    for title, metric, file, heading, unit in panels:
        series = [(segment.label, np.array(segment.values["step"]), np.array(segment.values[metric]))
                  for segment in history.segments if not np.isnan(segment.values[metric]).all()]
        if series:
            plots[title] = line_plot(out / f"{file}.png", series, heading, "step", unit)
    if history.verification:
        low = min(float((a - e).min()) for _, a, e in history.verification.values())
        plots["verification accuracy"] = line_plot(
            out / "verification.png", [(name, s, a, e) for name, (s, a, e) in history.verification.items()],
            "Verification accuracy, mean ± std over 10 folds", "step", "accuracy",
            ylim=(max(0.0, min(low - 0.01, 0.95)), 1.0))

    last = len(history.steps) - 1
    lines = [
        f"# Run report: {run_dir.resolve().name}",
        "",
        f"- status: {summary.get('status', 'unknown (no summary.json)')}",
        f"- steps logged: {history.steps[0]}..{history.steps[last]} of {history.total_steps}"
        f" over {history.seconds / 60:.1f} min of logged time",
        f"- loss: {history.loss[0]:.4f} at step {history.steps[0]} -> {history.loss[last]:.4f} at step {history.steps[last]}",
        f"- throughput: median {np.median(history.samples_per_s):,.0f} samples/s "
        f"(min {history.samples_per_s.min():,.0f}, max {history.samples_per_s.max():,.0f})",
        f"- final learning rate: {history.lr[last]:.5g}",
    ]
    for name, (steps, accuracy, spread) in history.verification.items():
        best = int(np.argmax(accuracy))
        lines.append(f"- {name}: best accuracy {accuracy[best]:.4f} ± {spread[best]:.4f} at step {steps[best]}, "
                     f"last {accuracy[-1]:.4f} ± {spread[-1]:.4f} at step {steps[-1]} (± std over the 10 folds)")
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
        description="Turn a run directory's train.log and summary.json into PNG plots over steps (loss, learning "
        "rate, throughput, gradient norm, data wait, memory: one line per start of the job; verification "
        "accuracy per set with its spread over the folds) and a short markdown summary, report.md.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the training run's output directory (holds train.log)")
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
