"""A small progress printer for the data CLI: a bar on a terminal, periodic lines in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Report ``done/total`` on stderr; redraws in place on a TTY, prints a line every ``every`` s otherwise."""

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.2 if self.tty else every
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._emit(now)

    def _emit(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.desc}: {self.done}/{self.total} ({pct:5.1f}%) {rate:,.0f}/s {elapsed:,.0f}s"
        if self.tty:
            width = 30
            filled = int(width * pct / 100)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.desc}: [{bar}] {text[len(self.desc) + 2 :]}" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._emit(time.monotonic(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
