"""What a run reports: console lines (a live bar on a terminal), a log file, and summary.json.

Only rank 0 writes. ``summary.json`` is replaced atomically at every log and at the end, so
scripts and dashboards can read a run's state without parsing logs. A restart updates the
previous summary instead of starting a new one (``starts`` counts the starts), so the best
scores, the newest checkpoint and the model survive a start that fails. ``status`` is one of
``starting``, ``running``, ``finished``, ``preempted``, ``diverged`` and ``failed`` (with
``error``, the error line).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.summary: dict[str, Any] = self._previous_summary() if enabled else {}
        self.summary.update(status="starting", started_at=time.time(), error=None)
        self.summary.setdefault("starts", 1)
        self._file: TextIO | None = None
        self._tty = enabled and sys.stdout.isatty()
        self._bar_shown = False
        self._writer = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / "train.log", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def info(self, message: str) -> None:
        """A permanent line on the console and in train.log."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
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

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

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
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for ETAs."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
