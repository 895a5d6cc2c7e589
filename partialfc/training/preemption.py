"""SIGTERM (pre-emption, Kubernetes eviction, an elastic restart) turned into a stop every rank agrees on.

Signals reach ranks at different moments (and inside collectives), so each rank only notes it; a
MAX all-reduce at the next log step, where the host syncs anyway, makes every rank stop after the
same step, with a checkpoint.

The same signal also comes from torchrun's agent when a *peer* died and the group restarts. Then
this rank is blocked inside a collective that will never complete (NCCL does not fail a collective
whose peer died), and a Python signal handler would not run until the collective timeout (the agent
kills it after its own stop timeout). So :func:`block_sigterm` blocks SIGTERM in every thread before
any is started, and a dedicated thread takes it with ``sigwait``: it sets the flag, and ends the
process when the training loop makes no progress for a while outside a checkpoint save, or on a
second SIGTERM. How it ends depends on whose SIGTERM it was: the pod's (the launcher marked it) is a
pre-emption, 143; the agent's, while blocked, means a peer failed, and the rank records a failure.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from partialfc.common.exit_codes import ExitCode, pod_sigterm_noted, record_exit


def block_sigterm() -> None:
    """Block SIGTERM in this thread and every thread or process it starts later; call first thing in main."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class SigtermFlag:
    """``received`` turns True on SIGTERM; the trainer makes it a collective decision at log steps.

    ``stuck()`` tells whether the training loop stopped progressing (the watchdog knows); it is
    asked once per ``poll_s`` after a SIGTERM, when the signal was blocked by :func:`block_sigterm`.
    Without that (e.g. a Trainer built inside a test process or a notebook) a plain handler records the
    signal until :meth:`close` gives SIGTERM back to the handler it replaced.
    """

    def __init__(self, enabled: bool, stuck: Callable[[], bool] = lambda: False, poll_s: float = 1.0) -> None:
        self.received = False
        self.stuck, self.poll_s = stuck, poll_s
        self._replaced: signal.Handlers | Callable[..., object] | int | None = None
        if not enabled or threading.current_thread() is not threading.main_thread():
            return
        if signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            threading.Thread(target=self._wait, name="partialfc-sigterm", daemon=True).start()
        else:
            self._replaced = signal.signal(signal.SIGTERM, self._note)

    def close(self) -> None:
        if self._replaced is not None:
            signal.signal(signal.SIGTERM, self._replaced)
            self._replaced = None

    def _note(self, signum: int, frame: object) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM terminates

    def _wait(self) -> None:
        signal.sigwait({signal.SIGTERM})
        self.received = True
        while signal.sigtimedwait({signal.SIGTERM}, self.poll_s) is None:
            if self.stuck():  # blocked in a collective whose peer is gone: nothing to save, leave now
                self._leave()
        self._leave()  # a second SIGTERM: saving takes too long

    @staticmethod
    def ending() -> ExitCode:
        """The code of a rank that leaves without an agreed stop: 143 when the pod is being stopped,
        else a failure (torchrun's agent stopped the group because a worker failed)."""
        return ExitCode.PREEMPTED if pod_sigterm_noted() else ExitCode.FAILED

    def _leave(self) -> None:
        code = self.ending()
        if code == ExitCode.FAILED:
            print(
                "partialfc: SIGTERM from torchrun's agent while blocked in a collective: a peer failed; "
                "leaving without a checkpoint",
                file=sys.stderr,
                flush=True,
            )
        record_exit(code)
        os._exit(code)
