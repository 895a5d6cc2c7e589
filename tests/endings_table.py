"""The truth table of docs/operations.md, "How a job ends": for each cause, what the workers record, what
torchrun does, the container's exit code (computed by the launcher's own ``container_exit_code`` from those
records) and what each shipped manifest's failure policy does with it (tests/k8s_policies.py, on the manifests'
own rules). ``python tests/endings_table.py`` prints it; tests/launcher/test_endings_table.py keeps the doc equal.
The multi-node tests check the rows they reproduce (tests/multinode/test_endings.py)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from k8s_policies import Pod, policy_verdicts

from partialfc.common.exit_codes import AGENT_FAILURE, container_exit_code


@dataclass(frozen=True)
class Ending:
    cause: str
    records: str  # what the workers of the failing node record (exit records, first-failure record)
    torchrun: str  # what torchrun's agent does
    codes: tuple[int, ...]  # the node's exit records in the last attempt
    torchrun_code: int  # torchrun's own exit status (Popen's: -N when killed by signal N)
    lost: str = "the steps since the newest checkpoint"  # the work a resume repeats
    pod_sigterm: bool = False  # the launcher, the container's main process, got SIGTERM
    signal_death: bool = False  # torchrun's report names a worker killed by a signal
    disrupted: bool = False  # the pod carries DisruptionTarget
    deleted: bool = False  # the pod was deleted (drain, eviction, pre-emption)

    def exit_code(self) -> int:
        with tempfile.TemporaryDirectory() as directory:
            for rank, code in enumerate(self.codes):
                Path(directory, f"attempt-00000-rank-{rank:06d}").write_text(str(code))
            if self.signal_death:
                Path(directory, AGENT_FAILURE).write_text(json.dumps({}))
            return container_exit_code(Path(directory), self.torchrun_code, self.pod_sigterm)


RESTARTS = "restarts the group in place (`--max-restarts`), each rank resumes; when spent, exits 1"
ENDINGS = [
    Ending("success", "0 on every rank", "exits 0", (0, 0), 0, lost="none"),
    Ending(
        "worker exception (bad record, CUDA OOM, a bug)",
        "1; the rank writes the first-failure record with its error, peers report it (`PeerFailure`)",
        RESTARTS,
        (1, 1),
        1,
    ),
    Ending(
        "worker killed by a signal (9 OOM killer, 11 segfault, 6 NCCL watchdog abort)",
        "none from the killed rank; its blocked peers, SIGTERMed by the agent, record 1; the launcher writes the "
        "first-failure record from torchrun's report (rank, host, pid, signal)",
        RESTARTS,
        (1,),
        1,
        signal_death=True,
    ),
    Ending(
        "peer failure on another node (NCCL: blocked; gloo: connection reset)",
        "1 (gloo: `PeerFailure` naming the first failure; NCCL: SIGTERM from the agent while blocked)",
        "restarts the group when the failed node rejoins the rendezvous (not counted on this node)",
        (1, 1),
        1,
    ),
    Ending(
        "collective timeout (`dist.timeout_s`)",
        "gloo: 1 (the timeout error); NCCL: the watchdog aborts the process (SIGABRT, as a signal death)",
        RESTARTS,
        (1, 1),
        1,
    ),
    Ending(
        "stall (`train.stall_timeout_s`)",
        "4 from the ranks that see it; the first-failure record names the stalled rank, host and pid",
        RESTARTS,
        (4, 4),
        1,
        lost="the steps since the newest checkpoint, and `train.stall_timeout_s`",
    ),
    Ending(
        "checkpoint write fails (disk full)",
        "1 on every rank, naming the file and the free space; a start without room for one more checkpoint "
        "fails before training",
        RESTARTS,
        (1, 1),
        1,
    ),
    Ending(
        "pod SIGTERM (drain, API eviction, Kueue pre-emption)",
        "143: the ranks agree at the next log step, save a checkpoint and stop",
        "passes SIGTERM to the workers, exits 1 (SignalException)",
        (143, 143),
        1,
        pod_sigterm=True,
        disrupted=True,
        deleted=True,
        lost="none: saved at the next log step",
    ),
    Ending(
        "agreed stop seen by another node (its peer's pod got SIGTERM)",
        "143 after the pre-emption save",
        "restarts the group; waits in the rendezvous for the replacement",
        (143, 143),
        1,
        lost="none: saved at the next log step",
    ),
    Ending(
        "config or data error found before training",
        "2; the rank stops its torchrun agent",
        "stops without restarting (SIGTERM from the worker), exits 1",
        (2, 2),
        1,
        lost="none (nothing trained)",
    ),
    Ending(
        "divergence (`train.nonfinite: stop`)",
        "3; the rank stops its torchrun agent",
        "stops without restarting, exits 1",
        (3, 3),
        1,
        lost="the non-finite steps (dropped); the checkpoints before them are kept",
    ),
]


def _cell(verdict) -> str:
    return verdict.action + (" — counted" if verdict.counted else "")


def markdown() -> str:
    header = [
        "| cause | workers record | torchrun | container exit | work lost | Indexed Job | JobSet | PyTorchJob |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for ending in ENDINGS:
        code = ending.exit_code()
        if code == 0:
            policies = ["Succeeded"] * 3
        else:
            verdicts = policy_verdicts(Pod(code, ending.disrupted, ending.deleted))
            policies = [_cell(verdicts[name]) for name in ("indexed-job", "jobset", "pytorchjob")]
        rows.append(
            f"| {ending.cause} | {ending.records} | {ending.torchrun} | {code} | " + " | ".join(policies) + " |"
        )
    return "\n".join(header + rows)


def ending(cause_start: str) -> Ending:
    (found,) = [e for e in ENDINGS if e.cause.startswith(cause_start)]
    return found


if __name__ == "__main__":
    print(markdown())
