"""Stall watchdog: name the rank that stopped making progress before the collective timeout fires.

A stopped, hung or very slow rank blocks every other rank inside the next collective; after
``dist.timeout_s`` the *healthy* ranks time out and torchrun blames one of them. Here each rank
runs a thread that publishes a heartbeat (its step and phase) to ``<run>/heartbeats/`` every few
seconds and reads everyone else's. When its own step has not moved for ``stall_timeout_s`` it
names the culprits: ranks whose heartbeat stopped (a frozen or dead process), else the ranks
behind (lower step, or another phase). It reports to stderr, to ``summary.json`` (rank 0) and to
the ``partialfc_stalled_ranks`` metric, records the message as torchrun's error for this rank, and
ends the process (exit code 4), so the job fails in minutes with the stalled rank named.

The run directory is shared by every node (checkpoints are written there too), so files need no
extra service; ages are measured on each reader's own clock, so node clocks need not agree.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from partialfc.common.exit_codes import ExitCode, record_exit


@dataclass
class _Peer:
    beat: int = -1
    changed_at: float = 0.0
    step: int = 0
    phase: str = ""
    host: str = ""
    pid: int = 0


class StallWatchdog:
    """Per-rank watchdog thread; the training loop only calls :meth:`beat` (no I/O, no sync)."""

    def __init__(
        self,
        directory: Path,
        rank: int,
        world_size: int,
        timeout_s: float,
        on_stall: Callable[[str, int], None],
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory, self.rank, self.world_size = directory, rank, world_size
        self.timeout_s = timeout_s
        self.interval_s = interval_s or min(10.0, max(0.5, timeout_s / 10))
        # Every live rank's thread beats each interval_s, even while its main thread is blocked in a
        # collective: a peer silent for five of them is stopped, hung or dead.
        self.silence_s = min(timeout_s, 5 * self.interval_s)
        self.on_stall = on_stall  # reports (message, number of stalled ranks); the process ends after it
        self.clock = clock  # seconds, monotonic; injected by tests
        self.step, self.phase = 0, "start"
        self._progress_at = clock()
        self._step_seconds = 0.0
        self._beats = 0
        self._peers: dict[int, _Peer] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.timeout_s <= 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._progress_at = self.clock()
        self._thread = threading.Thread(target=self._run, name="partialfc-stall-watchdog", daemon=True)
        self._thread.start()

    def beat(self, step: int, phase: str) -> None:
        """Record progress: a new ``step`` resets the stall clock; ``phase`` says where the rank is."""
        if step != self.step:
            now = self.clock()
            self._step_seconds = max(self._step_seconds * 0.9, now - self._progress_at)  # slow steps dominate
            self.step, self._progress_at = step, now
        self.phase = phase

    def working(self) -> None:
        """Progress inside a step (each batch of an evaluation, which may take minutes): resets the stall
        clock, not the step."""
        self._progress_at = self.clock()

    def stuck(self, min_seconds: float = 10.0) -> bool:
        """No step progress for ``min_seconds`` and ten recent step times, outside a checkpoint save."""
        waited = self.clock() - self._progress_at
        return self.phase != "checkpoint" and waited > max(min_seconds, 10 * self._step_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            report = self.check()
            if report is not None:
                try:
                    self.on_stall(*report)
                finally:  # the main thread is blocked in a collective: only ending the process frees the job
                    record_exit(ExitCode.STALLED)
                    os._exit(ExitCode.STALLED)

    def check(self) -> tuple[str, int] | None:
        """One round of the thread: publish this rank's heartbeat, read the peers', and return the
        stall report (message, number of culprits) once this rank's step has not moved for the timeout."""
        self._publish()
        now = self.clock()
        self._read_peers(now)
        stalled_for = now - self._progress_at
        if stalled_for < self.timeout_s:
            return None
        # A peer that went quiet after this rank's last step (stopped while this rank waited for it) has
        # missed beats but not yet been silent long: wait for its silence to say so, at most silence_s.
        missing = [now - peer.changed_at for peer in self._peers.values()]
        waiting = any(2 * self.interval_s < quiet < self.silence_s for quiet in missing)
        if waiting and stalled_for < self.timeout_s + self.silence_s:
            return None
        return self.diagnose(now, stalled_for)

    def _publish(self) -> None:
        self._beats += 1
        record = {
            "rank": self.rank,
            "beat": self._beats,
            "step": self.step,
            "phase": self.phase,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        path = self.directory / f"rank-{self.rank:05d}.json"
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError as error:  # a full or read-only disk must not kill training from this thread
            print(f"partialfc: stall watchdog cannot write {path}: {error}", file=sys.stderr)

    def _read_peers(self, now: float) -> None:
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            peer = self._peers.setdefault(rank, _Peer(changed_at=now))
            try:
                record = json.loads((self.directory / f"rank-{rank:05d}.json").read_text())
            except (OSError, ValueError):
                continue  # not written yet, or replaced while reading: try again next time
            if record["beat"] != peer.beat:
                peer.beat, peer.changed_at = record["beat"], now
            peer.step, peer.phase, peer.host, peer.pid = record["step"], record["phase"], record["host"], record["pid"]

    def diagnose(self, now: float, stalled_for: float) -> tuple[str, int]:
        """The report: who is silent or behind, and where every rank is."""
        silent = {r: p for r, p in self._peers.items() if now - p.changed_at >= self.silence_s}
        if silent:
            culprits = [
                f"rank {r} not responding for {now - p.changed_at:.0f} s (last heartbeat at step {p.step}, "
                f"phase {p.phase}, host {p.host or '?'}, pid {p.pid or '?'}: stopped, hung or dead)"
                for r, p in sorted(silent.items())
            ]
        else:
            positions = {r: (p.step, p.phase) for r, p in self._peers.items()}
            positions[self.rank] = (self.step, self.phase)
            lowest = min(step for step, _ in positions.values())
            behind = sorted(r for r, (step, _) in positions.items() if step == lowest)
            if len(behind) == len(positions):  # all at one step: the odd phase out is the culprit
                phases = [phase for _, phase in positions.values()]
                common = max(set(phases), key=phases.count)
                behind = sorted(r for r, (_, phase) in positions.items() if phase != common) or behind
            culprits = [f"rank {r} behind at step {positions[r][0]} (phase {positions[r][1]})" for r in behind]
        message = (
            f"stall: rank {self.rank} made no step progress for {stalled_for:.0f} s "
            f"(train.stall_timeout_s={self.timeout_s:g}) at step {self.step}, phase {self.phase}; "
            + "; ".join(culprits)
        )
        return message, len(culprits)
