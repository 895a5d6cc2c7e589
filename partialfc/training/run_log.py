"""What a run reports: the run record, console lines (a live bar on a terminal), train.log, summary.json.

Only rank 0 writes. :class:`RunLog` is the trainer's first sink (:mod:`partialfc.training.records`):
the run record, ``train_log.jsonl``, holds one JSON object per line for each start of the job, log
step and evaluation; the console and train.log line of such an event is made from its record by
:func:`format_record`, and ``partialfc.report`` reads the records, never the text. Non-finite
values are written as ``NaN``/``Infinity``, as Python's json module reads them back.
``summary.json`` is replaced atomically at every log and at the end, so scripts and dashboards can
read a run's state without parsing logs. A restart updates the previous summary instead of starting
a new one (``starts`` counts the starts), so the best scores, the newest checkpoint and the model
survive a start that fails. ``status`` is one of ``starting``, ``running``, ``finished``,
``preempted``, ``diverged`` and ``failed`` (with ``error``, the error line).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from partialfc.training.records import CheckpointRecord, Record, StartRecord, StepRecord, to_json


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.summary: dict[str, Any] = self._previous_summary() if enabled else {}
        self.summary.update(status="starting", started_at=time.time(), error=None)
        self.summary.setdefault("starts", 1)
        self._open_files = contextlib.ExitStack()  # train.log and the record stay open for the run; close() ends both
        self._file: TextIO | None = None
        self._records: TextIO | None = None
        self._tty = enabled and sys.stdout.isatty()
        self._bar_shown = False
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = self._open_files.enter_context(open(run_dir / "train.log", "a", buffering=1))  # noqa: SIM115 (closed by close())
            self._records = self._open_files.enter_context(open(run_dir / RECORD_FILE, "a", buffering=1))  # noqa: SIM115 (closed by close())

    def info(self, message: str) -> None:
        """A permanent line on the console and in train.log."""
        self._line(message, time.time())

    def write(self, record: Record) -> None:
        """A record's run-record line, console and train.log line, and its figures in summary.json."""
        if isinstance(record, CheckpointRecord):
            if record.path is not None:
                self.info(f"checkpoint {record.path} ({record.seconds:.1f}s)")
                self.update_summary(checkpoint=record.path)
            return
        if self.enabled:
            values = to_json(record)
            line = format_record(values)  # first: a record its line cannot be made from is never written
            assert self._records is not None
            self._records.write(json.dumps(values) + "\n")
            self._line(line, record.time)
        if isinstance(record, StartRecord):
            self.update_summary(status="running", total_steps=record.total_steps, world_size=record.world_size)
        elif isinstance(record, StepRecord):
            self.update_summary(
                step=record.step,
                epoch=record.epoch,
                loss=record.loss,
                lr=record.lr,
                samples_per_second=record.samples_per_s,
                grad_norm=record.grad_norm,
            )
        else:
            last = {"step": record.step, **record.summary, "seconds": record.seconds}
            self.update_summary(
                best_evaluation={**self.summary.get("best_evaluation", {}), record.key: record.best},
                last_evaluation={**self.summary.get("last_evaluation", {}), record.key: last},
            )

    def _line(self, message: str, stamp: float) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp))} {message}"
        if self._bar_shown:
            sys.stdout.write("\r\033[K")
            self._bar_shown = False
        print(line, flush=True)
        assert self._file is not None
        self._file.write(line + "\n")

    def progress(self, step: int, total: int, text: str) -> None:
        """A live bar on a terminal; nothing otherwise (the periodic info lines carry progress)."""
        if not self._tty:
            return
        width = 30
        filled = int(width * step / max(total, 1))
        sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {text}")
        sys.stdout.flush()
        self._bar_shown = True

    def _previous_summary(self) -> dict[str, Any]:
        """An earlier start's summary, kept so a failed resume does not erase the run's history."""
        try:
            previous = json.loads((self.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(previous, dict):
            return {}
        previous["starts"] = int(previous.get("starts", 1)) + 1
        return previous

    def update_summary(self, **fields: Any) -> None:
        """Merge ``fields`` into summary.json and rewrite it atomically."""
        if not self.enabled:
            return
        self.summary.update(fields, updated_at=time.time())
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2, sort_keys=True))
        os.replace(tmp, self.run_dir / "summary.json")

    def close(self) -> None:
        self._open_files.close()


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for ETAs."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


RECORD_FILE = "train_log.jsonl"


def format_record(record: dict[str, Any]) -> str:
    """The console and train.log line of a record (without the time stamp)."""
    r = record
    if r["event"] == "start":
        return (
            f"partialfc {r['version']}: {r['backbone']}, {r['num_classes']} classes on {r['world_size']} rank(s) "
            f"({r['device']}), {r['images']} images, global batch {r['global_batch']}, {r['total_steps']} steps "
            f"({r['steps_per_epoch']}/epoch), loader {r['loader']}, start at step {r['start_step']}"
            f" (restart {r['restart']})"
        )
    if r["event"] == "step":
        grad_norm = "-" if r["grad_norm"] is None else f"{r['grad_norm']:.3f}"
        return (
            f"step {r['step']}/{r['total_steps']} epoch {r['epoch']} loss {r['loss']:.4f} lr {r['lr']:.5g} "
            f"grad_norm {grad_norm} {r['samples_per_s']:,.0f} samples/s data_wait {100 * r['data_wait']:.0f}% "
            f"mem {r['memory_bytes'] / 2**30:.2f}GiB eta {format_duration(r['eta_s'])}"
            + (f" loss_scale {r['loss_scale']:g} skipped {r['skipped_steps']}" if "loss_scale" in r else "")
            + (
                f" nonfinite {r['nonfinite_steps']} (dropped; first at step {r['first_nonfinite_step']})"
                if "nonfinite_steps" in r
                else ""
            )
        )
    if r["event"] == "evaluation":
        others = dict(r["summary"])
        headline = f"{r['headline']} {others.pop(r['headline']):.4f}"
        spread = others.pop(f"{r['headline']}_std", None)
        if spread is not None:
            headline += f" ± {spread:.4f}"
        rest = "".join(f", {name} {value:.4f}" for name, value in others.items())
        seconds = "" if math.isnan(r["seconds"]) else f" ({r['seconds']:.1f}s)"
        return f"{r['protocol']} {r['target']} step {r['step']}: {headline}{rest}{seconds}"
    raise ValueError(f"run record: unknown event {r['event']!r}")
