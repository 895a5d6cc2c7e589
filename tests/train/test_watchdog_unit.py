"""The stall watchdog's decisions with fake heartbeat files and an injected clock: when it fires,
whom it names, and that a checkpoint save is never taken for a stall; how the stalled process ends
(exit code 4, recorded for the launcher), and that ``train.stall_timeout_s 0`` turns it off."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
from training_run import run_job, training_env

from partialfc.common.exit_codes import EXIT_DIR_VAR, ExitCode, container_exit_code
from partialfc.config import load_config
from partialfc.training.watchdog import StallWatchdog

TIMEOUT_S = 60.0
ROUND_S = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakePeers:
    """Heartbeat files of other ranks, written the way the watchdog thread of each would write them."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.beats = directory, {}

    def beat(self, rank: int, step: int, phase: str = "forward") -> None:
        self.beats[rank] = self.beats.get(rank, 0) + 1
        record = {
            "rank": rank,
            "beat": self.beats[rank],
            "step": step,
            "phase": phase,
            "host": f"node{rank}",
            "pid": 1000 + rank,
        }
        (self.directory / f"rank-{rank:05d}.json").write_text(json.dumps(record))


@pytest.fixture
def setup(tmp_path):
    clock, reports = FakeClock(), []
    watchdog = StallWatchdog(
        tmp_path,
        rank=0,
        world_size=3,
        timeout_s=TIMEOUT_S,
        on_stall=lambda message, count: reports.append((message, count)),
        clock=clock,
    )
    return watchdog, clock, FakePeers(tmp_path)


def run_rounds(watchdog, clock, peers, peer_steps, until_s=10 * TIMEOUT_S):
    """Watchdog rounds every ROUND_S until it reports; peers in ``peer_steps`` beat before each round."""
    while clock.now < until_s:
        clock.now += ROUND_S
        for rank, step in peer_steps.items():
            peers.beat(rank, step)
        report = watchdog.check()
        if report is not None:
            return report, clock.now
    raise AssertionError(f"no stall report within {until_s} s")


def test_fires_at_the_timeout_not_later(setup):
    watchdog, clock, peers = setup
    watchdog.beat(10, "forward")  # step 10 reached at t=0, then no progress
    clock.now = TIMEOUT_S - 0.1
    peers.beat(1, 10)
    peers.beat(2, 9)
    assert watchdog.check() is None
    clock.now = TIMEOUT_S
    peers.beat(1, 10)
    peers.beat(2, 9)
    report = watchdog.check()
    assert report is not None and "no step progress for 60 s" in report[0], report


def test_an_evaluation_longer_than_the_timeout_is_progress_while_its_batches_go_on(setup):
    """IJB-C during training embeds for minutes inside one step: each batch resets the stall clock;
    when the batches stop (a hang inside the evaluation), the timeout counts from the last one."""
    watchdog, clock, peers = setup
    watchdog.beat(10, "evaluation")
    for _ in range(int(3 * TIMEOUT_S / ROUND_S)):  # three timeouts of evaluation, a batch every round
        clock.now += ROUND_S
        watchdog.working()
        peers.beat(1, 10, "evaluation")
        peers.beat(2, 10, "evaluation")
        assert watchdog.check() is None and not watchdog.stuck(min_seconds=ROUND_S / 2)  # SIGTERM still saves
    last_batch = clock.now
    (message, _), fired_at = run_rounds(watchdog, clock, peers, {1: 10, 2: 10})
    assert fired_at == last_batch + TIMEOUT_S and "no step progress for 60 s" in message, message


def test_a_peer_that_beats_but_lags_is_behind_not_silent_and_the_ranks_ahead_are_not_blamed(setup):
    watchdog, clock, peers = setup
    watchdog.beat(10, "forward")
    peers.beat(1, 10)
    peers.beat(2, 9)
    assert watchdog.check() is None  # both peers seen at t=0: their steps never change after
    (message, count), fired_at = run_rounds(watchdog, clock, peers, {1: 10, 2: 9})
    assert fired_at == TIMEOUT_S
    assert count == 1 and "rank 2 behind at step 9 (phase forward)" in message, message
    assert "not responding" not in message and "rank 1 " not in message, message


def test_a_silent_peer_is_named_with_its_host_and_pid(setup):
    watchdog, clock, peers = setup
    watchdog.beat(10, "forward")
    peers.beat(2, 10, "backward")  # one heartbeat, then nothing
    watchdog.check()
    (message, count), fired_at = run_rounds(watchdog, clock, peers, {1: 10})
    assert fired_at == TIMEOUT_S and count == 1
    assert "rank 2 not responding for 60 s (last heartbeat at step 10, phase backward, host node2, pid 1002" in message
    assert "rank 1 " not in message, message


def test_a_peer_stopped_after_this_ranks_last_step_is_named_once_its_silence_shows(setup):
    """Peer 2 is stopped (SIGSTOP, a hang) 40 s after this rank's last step, while this rank waits for it:
    at the timeout it has been quiet 20 s, missed beats but not yet silent. The report waits for its
    silence (silence_s, five beats) instead of blaming it as merely "behind", without its host or pid."""
    watchdog, clock, peers = setup
    watchdog.beat(10, "allreduce")
    while clock.now < 40:
        clock.now += ROUND_S
        peers.beat(1, 10, "allreduce")
        peers.beat(2, 10, "backward")
        assert watchdog.check() is None
    (message, count), fired_at = run_rounds(watchdog, clock, peers, {1: 10})
    assert TIMEOUT_S < fired_at <= TIMEOUT_S + watchdog.silence_s, fired_at
    assert count == 1 and "rank 2 not responding for 30 s (last heartbeat at step 10, phase backward" in message
    assert "pid 1002" in message and "rank 1 " not in message, message


def test_the_odd_phase_out_is_blamed_when_every_rank_is_at_one_step(setup):
    watchdog, clock, peers = setup
    watchdog.beat(10, "allreduce")
    for _ in range(int(TIMEOUT_S / ROUND_S)):
        clock.now += ROUND_S
        peers.beat(1, 10, "allreduce")
        peers.beat(2, 10, "data")
        report = watchdog.check()
    assert report is not None and report[1] == 1 and "rank 2 behind at step 10 (phase data)" in report[0], report


def test_stuck_never_counts_a_checkpoint_save(setup):
    """stuck() lets the SIGTERM thread end a rank blocked in a dead collective; a long save is not that."""
    watchdog, clock, _ = setup
    for step in range(1, 6):  # steps of 5 s: "stuck" needs 10 step times (50 s) without progress
        clock.now += 5.0
        watchdog.beat(step, "forward")
    clock.now += 49.0
    assert not watchdog.stuck()
    clock.now += 2.0
    assert watchdog.stuck()
    watchdog.beat(5, "checkpoint")
    clock.now += 3600.0
    assert not watchdog.stuck()
    watchdog.beat(5, "forward")
    assert watchdog.stuck()


# A rank whose main thread is blocked for good (as in a collective a stopped peer never joins), with
# a real watchdog thread: only the watchdog can end the process.
BLOCKED_RANK = """
import sys, threading
from pathlib import Path
from partialfc.training.watchdog import StallWatchdog

report = lambda message, count: print(message, flush=True)
watchdog = StallWatchdog(Path(sys.argv[1]), rank=1, world_size=2, timeout_s=1.0, on_stall=report, interval_s=0.1)
watchdog.beat(7, "allreduce")
watchdog.start()
threading.Event().wait(120)
"""


def test_a_stall_ends_the_process_with_exit_code_4_and_records_it_for_the_launcher(tmp_path):
    """torchrun exits 1 for any failed worker: only the record in PARTIALFC_EXIT_DIR tells the
    launcher (and the container's exit code) that this was a stall, not a crash."""
    exit_dir = tmp_path / "exit"
    env = {**training_env(), EXIT_DIR_VAR: str(exit_dir), "RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2"}
    env.pop("TORCHELASTIC_RUN_ID", None)  # no torchrun agent to stop
    result = run_job([sys.executable, "-c", BLOCKED_RANK, str(tmp_path / "heartbeats")], env, timeout=120)
    assert "stall: rank 1 made no step progress for 1 s" in result.stdout, result.stdout + result.stderr
    assert result.returncode == ExitCode.STALLED == 4, result.stderr[-2000:]
    assert [path.name for path in exit_dir.iterdir()] == ["attempt-00002-rank-000001"]
    assert (exit_dir / "attempt-00002-rank-000001").read_text() == "4"
    assert container_exit_code(exit_dir, torchrun_code=1, sigterm_received=False) == ExitCode.STALLED


def test_a_stall_timeout_of_0_turns_the_watchdog_off(tmp_path):
    """train.stall_timeout_s: 0 disables, -1 is half of dist.timeout_s (config.py's help)."""

    def resolved(value: float) -> float:
        return load_config(None, {"dist.timeout_s": 120, "train.stall_timeout_s": value}).stall_timeout()

    assert (resolved(0), resolved(-1), resolved(7.5)) == (0, 60, 7.5)
    # A thread started all the same would check (and end this process) only after interval_s: never in this test.
    watchdog = StallWatchdog(tmp_path / "heartbeats", 0, 2, resolved(0), lambda *report: None, interval_s=3600)
    watchdog.start()
    try:
        assert "partialfc-stall-watchdog" not in [thread.name for thread in threading.enumerate()]
        assert not (tmp_path / "heartbeats").exists()  # nothing published: peers never see this rank
    finally:
        watchdog.stop()
