"""The job's exit code reaches the container: the launcher stays torchrun's parent and turns the
workers' recorded codes into its own (torchrun itself exits 1 for any failure and on SIGTERM,
torch/distributed/run.py + elastic/multiprocessing/api.py), and a deterministic end is not retried."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from training_run import REPO, run_job, start_job, train_args

from launcher.command import node_local_dir
from launcher.environment import detect
from partialfc.common.exit_codes import AGENT_FAILURE, ExitCode, container_exit_code, markdown_table, record_exit

SCHEDULER_PREFIXES = (
    "PET_",
    "SLURM_",
    "MASTER_",
    "JOB_COMPLETION_INDEX",
    "PARTIALFC_",
    "RANK",
    "WORLD_SIZE",
    "TORCHELASTIC_",
)


def records(directory: Path, attempt: int, *codes: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rank, code in enumerate(codes):
        (directory / f"attempt-{attempt:05d}-rank-{rank:06d}").write_text(str(code))


@pytest.mark.parametrize(
    "attempts, torchrun_code, sigterm, expected",
    [
        ({}, 0, False, 0),
        ({0: (143, 143), 1: (0, 0)}, 0, False, 0),
        ({0: (3, 143)}, 1, False, 3),  # the rank that diverged stopped the agent, which SIGTERMed its peer
        ({0: (2, 2)}, 1, False, 2),
        ({0: (4, 1)}, 1, False, 4),
        ({0: (143, 143)}, 1, True, 143),
        ({}, 1, True, 143),  # evicted before any worker recorded anything: still not a failure
        ({0: (2, 2), 1: (1, 143)}, 1, False, 1),  # only the last attempt counts
        ({0: (1, 143)}, 1, False, 1),
        ({0: (143, 143)}, 1, False, 143),  # an agreed stop (the agent restarted the group for a new node)
        ({}, -9, False, 137),
    ],
)
def test_container_exit_code_precedence(tmp_path, attempts, torchrun_code, sigterm, expected):
    for attempt, codes in attempts.items():
        records(tmp_path, attempt, *codes)
    assert container_exit_code(tmp_path, torchrun_code, sigterm) == expected


def test_a_worker_killed_by_a_signal_is_a_counted_failure_whatever_its_peers_recorded(tmp_path):
    """The killed worker records nothing; torchrun's report (launcher/agent.py) names it. Its peers'
    records cannot turn that into a pre-emption unless the pod itself got SIGTERM."""
    records(tmp_path, 3, 143)
    (tmp_path / AGENT_FAILURE).write_text("{}")
    assert container_exit_code(tmp_path, 1, sigterm_received=False) == ExitCode.FAILED
    assert container_exit_code(tmp_path, 1, sigterm_received=True) == ExitCode.PREEMPTED


def test_record_exit_writes_this_ranks_code_for_the_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTIALFC_EXIT_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)  # not under torchrun: no agent to stop
    record_exit(ExitCode.DIVERGED)
    record_exit(ExitCode.PREEMPTED)  # the agent's SIGTERM after the divergence: the first code stays
    assert (tmp_path / "attempt-00002-rank-000005").read_text() == "3"
    monkeypatch.delenv("PARTIALFC_EXIT_DIR")
    record_exit(ExitCode.FAILED)  # not started by the launcher: nothing written
    assert len(list(tmp_path.iterdir())) == 1


def test_operations_doc_and_help_show_the_one_table():
    doc = (REPO / "docs" / "operations.md").read_text()
    assert markdown_table() in doc, "docs/operations.md's exit-code table differs from partialfc/common/exit_codes.py"
    help_text = subprocess.run(
        [sys.executable, "-m", "partialfc.train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}\s+{re.escape(code.meaning[:30])}", help_text, re.M), code


def launch(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """``python -m launcher`` on one node, as a container would run it (no scheduler variables), with a
    temporary directory of its own (TMPDIR): the workers record their exit codes in
    ``$TMPDIR/partialfc-exit-<rdzv id>-<host>``, a name every single-node launcher on this machine shares.

    The folder is a short one under /tmp (``tmp_path / "tmp"`` links to it): the loader's worker processes
    open AF_UNIX sockets in it, whose paths may not exceed 107 bytes, and pytest's own folders (numbered
    per run, named after the test) come close to that alone."""
    temp = Path(tempfile.mkdtemp(prefix="pfc-"))
    atexit.register(shutil.rmtree, temp, ignore_errors=True)
    (tmp_path / "tmp").symlink_to(temp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    with (tmp_path / "launcher.log").open("wb") as sink:
        return start_job(
            [sys.executable, "-m", "launcher", "--nproc-per-node", "2", "--max-restarts", "3", "--", *args],
            {**env, "TMPDIR": str(temp)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def exit_records(tmp_path: Path) -> dict[str, int]:
    """The codes the workers of :func:`launch`'s job recorded, by file name (``attempt-A-rank-R``)."""
    directory = node_local_dir("exit", detect({}), str(tmp_path / "tmp"), socket.gethostname())
    return {path.name: int(path.read_text()) for path in sorted(directory.glob("attempt-*"))}


def test_a_config_error_exits_2_without_restarts(tiny_dataset, tmp_path):
    log = tmp_path / "launcher.log"
    process = launch(train_args(tiny_dataset, tmp_path / "run", "--data.num_classes", "7"), tmp_path)
    assert process.wait(timeout=240) == ExitCode.CONFIG, log.read_text()[-4000:]
    errors = re.findall(r"config error: data.num_classes=7 but dataset", log.read_text())
    assert len(errors) == 2, f"{len(errors)} config errors: torchrun restarted the workers\n{log.read_text()[-4000:]}"
    records = exit_records(tmp_path)  # the agent's SIGTERM may stop a rank before it records its own 2
    assert ExitCode.CONFIG in records.values() and all(name.startswith("attempt-00000-") for name in records), records


def test_divergence_exits_3_without_restarts(tiny_dataset, tmp_path):
    output, log = tmp_path / "run", tmp_path / "launcher.log"
    process = launch(
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            "30",
            "--optim.lr",
            "1e12",
            "--schedule.warmup_epochs",
            "0",
            "--eval.verify.every_steps",
            "0",
            "--data.backend",
            "torch",
        ),
        tmp_path,
    )
    assert process.wait(timeout=300) == ExitCode.DIVERGED, log.read_text()[-4000:]
    assert json.loads((output / "summary.json").read_text())["status"] == "diverged"
    assert len(re.findall(r"start at step", (output / "train.log").read_text())) == 1, "torchrun restarted the workers"
    assert ExitCode.DIVERGED in exit_records(tmp_path).values(), exit_records(tmp_path)


def test_sigterm_to_the_launcher_saves_and_exits_143(tiny_dataset, tmp_path):
    output, log = tmp_path / "run", tmp_path / "launcher.log"
    process = launch(
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            "100000",
            "--eval.verify.every_steps",
            "0",
            "--checkpoint.every_steps",
            "0",
            "--data.backend",
            "torch",
        ),
        tmp_path,
    )
    deadline = time.monotonic() + 240
    while not ((output / "train.log").exists() and " step 4/" in (output / "train.log").read_text()):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=240) == ExitCode.PREEMPTED, log.read_text()[-4000:]
    final = json.loads((output / "summary.json").read_text())
    assert final["status"] == "preempted" and (output / "checkpoints" / f"step-{final['step']:08d}").is_dir(), final
    # Both workers saved and ended as pre-empted, and said so in this launcher's own exit directory.
    assert exit_records(tmp_path) == {"attempt-00000-rank-000000": 143, "attempt-00000-rank-000001": 143}


def test_plain_torchrun_does_not_retry_a_config_error_either(tiny_dataset, tmp_path):
    """The README's own `torchrun --max-restarts 3 -m partialfc.train ...`: the workers stop their agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "3",
        "-m",
        "partialfc.train",
        *train_args(tiny_dataset, tmp_path / "run", "--data.num_classes", "7"),
    ]
    result = run_job(command, {**env, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}, timeout=240)
    errors = re.findall(r"config error: data.num_classes=7 but dataset", result.stdout + result.stderr)
    assert result.returncode != 0 and len(errors) == 2, f"{len(errors)} config errors: torchrun restarted the workers"


# A stand-in for torchrun under the launcher: it says it is ready, waits for the signal the launcher
# passes on, notes whether the launcher marked the pod's SIGTERM, and exits 1 as torchrun does on a signal.
FAKE_TORCHRUN = """
import os, signal, sys
from pathlib import Path
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
Path(sys.argv[1]).write_text("ready")
received = signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
marked = (Path(os.environ["PARTIALFC_EXIT_DIR"]) / "pod-sigterm").exists()
Path(sys.argv[2]).write_text(f"{received.name} {marked}")
sys.exit(1)
"""

SUPERVISE = """
import sys
from pathlib import Path
from launcher.supervise import run_torchrun
command = [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]]
sys.exit(run_torchrun(command, {}, Path(sys.argv[4]), Path(sys.argv[5])))
"""


@pytest.mark.parametrize(
    "signum, expected", [(signal.SIGTERM, ExitCode.PREEMPTED), (signal.SIGHUP, 1), (signal.SIGINT, 1)]
)
def test_only_the_pods_sigterm_makes_the_launcher_exit_143(tmp_path, signum, expected):
    """kubelet stops a container with SIGTERM; a SIGHUP (a closed terminal) or SIGINT (Ctrl-C) is passed
    on to torchrun too, but is not a pre-emption: the policies must count the failure it causes."""
    ready, seen, exit_dir = tmp_path / "ready", tmp_path / "seen", tmp_path / "exit"
    launcher = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, FAKE_TORCHRUN, str(ready), str(seen), str(exit_dir), str(tmp_path / "run")],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "the fake torchrun did not start"
            time.sleep(0.01)
        launcher.send_signal(signum)
        assert launcher.wait(timeout=60) == expected
    finally:
        launcher.kill()
    assert seen.read_text() == f"{signum.name} {signum == signal.SIGTERM}"
