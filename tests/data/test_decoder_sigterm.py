"""A decoder process (a DataLoader worker) survives the SIGTERM torchrun sends a training worker's whole
process group, but ends on its trainer's: multiprocessing's exit handler terminates and then joins its
daemon children, and a decoder that ignored that SIGTERM would hang the trainer's exit."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from partialfc.data.loaders.pytorch import end_on_the_trainers_sigterm


def _sigterm_pending(pid: int) -> bool:
    """SIGTERM (bit 14) in the process's pending set, or its thread's: not taken yet."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    pending = [int(line.split()[1], 16) for line in lines if line.startswith(("ShdPnd:", "SigPnd:"))]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pending += [
            int(line.split()[1], 16)
            for line in (task / "status").read_text().splitlines()
            if line.startswith("SigPnd:")
        ]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in pending)


def _decoder(ready, pings) -> None:
    end_on_the_trainers_sigterm(0)
    ready.send("ready")
    while True:
        pings.send(pings.recv())  # answers while alive


def test_a_decoder_drops_a_foreign_sigterm_and_ends_on_its_trainers():
    context = multiprocessing.get_context("fork")
    ready_parent, ready_child = context.Pipe()
    pings_parent, pings_child = context.Pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as the trainer's block_sigterm, inherited
    try:
        decoder = context.Process(target=_decoder, args=(ready_child, pings_child), daemon=True)
        decoder.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        assert ready_parent.poll(60) and ready_parent.recv() == "ready"
        # torchrun's agent: another process; the SIGTERM is taken and dropped, the decoder answers after it
        subprocess.run([sys.executable, "-c", f"import os; os.kill({decoder.pid}, 15)"], check=True, timeout=60)
        deadline = time.monotonic() + 60
        while _sigterm_pending(decoder.pid):
            assert time.monotonic() < deadline, "the decoder never took the SIGTERM"
            time.sleep(0.01)
        for ping in range(3):
            pings_parent.send(ping)
            assert pings_parent.poll(60) and pings_parent.recv() == ping
        assert decoder.is_alive()
        decoder.terminate()  # the trainer's own SIGTERM, as multiprocessing's exit handler sends it
        decoder.join(60)
        assert decoder.exitcode == 0, decoder.exitcode
    finally:
        if decoder.is_alive():
            os.kill(decoder.pid, signal.SIGKILL)
