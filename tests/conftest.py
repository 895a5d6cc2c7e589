"""Fixtures shared by every test directory."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import chaos
import lost_node_zero
import pytest
from crash_loop import HOST_NAMES, CrashLoop, run_crash_loop
from netns_cluster import COLD_GAP_S, Job, can_make_hosts, jobset_env, make_hosts, training
from training_run import kill_running_jobs

from partialfc.data.synth import generate_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """120 training identities x 8 images in 2 shards; 40 held-out identities in 200 verification pairs."""
    path = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(path, 120, 8, seed=3, shards=2, holdout_identities=40, pairs=200)
    return path


@pytest.fixture(autouse=True)
def no_job_outlives_its_test() -> Iterator[None]:
    """Kill what a test started with training_run.start_job and left running (it failed half-way)."""
    yield
    kill_running_jobs()


COLD_START_TEST = "tests/multinode/test_cold_start.py"
CRASH_LOOP_TEST = "tests/multinode/test_endings.py"
CHAOS_TEST = "tests/multinode/test_chaos.py"
LOST_NODE_ZERO_TEST = "tests/multinode/test_rendezvous_store.py"
BACKGROUND_TESTS = (COLD_START_TEST, CRASH_LOOP_TEST, CHAOS_TEST, LOST_NODE_ZERO_TEST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of jobs started at the session's first test (``cold_start_node``, ``crash_loop``,
    ``chaos_run``, ``lost_node_zero_runs``) run last: those jobs then overlap the whole suite instead of
    being awaited halfway through it."""
    items.sort(key=lambda item: item.nodeid.startswith(BACKGROUND_TESTS))


def _collected(request, test_file: str) -> bool:
    return any(item.nodeid.startswith(test_file) for item in request.session.items) and can_make_hosts()


@pytest.fixture(scope="session", autouse=True)
def crash_loop(request) -> Iterator[Future[CrashLoop] | None]:
    """tests/crash_loop.py's two-node job, run in a thread from the session's first test when its test is
    collected and the machine can run it (else None); the test waits for its outcome."""
    if not _collected(request, CRASH_LOOP_TEST) or shutil.which("iptables") is None:
        yield None
        return
    output = request.getfixturevalue("tmp_path_factory").mktemp("crash-loop") / "run"
    dataset = request.getfixturevalue("tiny_dataset")
    with ThreadPoolExecutor(1) as pool, make_hosts(HOST_NAMES) as hosts:  # on exit: the nodes first, then the thread
        yield pool.submit(run_crash_loop, hosts, dataset, output)


@pytest.fixture(scope="session", autouse=True)
def chaos_run(request) -> Iterator[Future[chaos.Chaos] | None]:
    """tests/chaos.py's fault-free and chaos runs, in a thread from the session's first test when the chaos
    test is collected (else None)."""
    if not _collected(request, CHAOS_TEST):
        yield None
        return
    base = request.getfixturevalue("tmp_path_factory").mktemp("chaos")
    dataset = request.getfixturevalue("tiny_dataset")
    with ThreadPoolExecutor(1) as pool, make_hosts(chaos.HOST_NAMES) as hosts:  # on exit: the nodes, then the thread
        yield pool.submit(chaos.run_chaos, hosts, dataset, base / "run", base / "reference")


@pytest.fixture(scope="session", autouse=True)
def lost_node_zero_runs(request) -> Iterator[dict[str, Future[lost_node_zero.Outcome]] | None]:
    """tests/lost_node_zero.py's jobs (the elastic PyTorchJob, then the Indexed Job), run one after the
    other in a thread from the session's first test when their test is collected and the machine can
    run them (else None); the tests wait for their outcomes."""
    if not _collected(request, LOST_NODE_ZERO_TEST):
        yield None
        return
    base = request.getfixturevalue("tmp_path_factory").mktemp("lost-node-zero")
    dataset = request.getfixturevalue("tiny_dataset")
    with ThreadPoolExecutor(1) as pool, make_hosts(lost_node_zero.HOST_NAMES) as hosts:
        yield {
            "elastic": pool.submit(lost_node_zero.run_elastic, hosts, dataset, base / "elastic"),
            "indexed": pool.submit(lost_node_zero.run_indexed, hosts, dataset, base / "indexed"),
        }


@pytest.fixture(scope="session", autouse=True)
def cold_start_node(request) -> Iterator[Job | None]:
    """Node 1 of a two-node JobSet job, started at the session's first test when the cold-start test
    is collected (else None); its rendezvous host, node 0, starts COLD_GAP_S later (a timer), and the
    test checks the outcome. The gap must exceed what torch's own store client tolerates (minutes),
    so it overlaps the suite; dist.timeout_s 1800 (the manifests' value) makes node 1 wait for the
    rendezvous (read_timeout = join_timeout) longer than any suite takes to get there."""
    if not _collected(request, COLD_START_TEST):
        yield None
        return
    output = request.getfixturevalue("tmp_path_factory").mktemp("cold") / "run"
    output.mkdir(parents=True)
    with make_hosts([("cs-node-0-0.cs", "cs-node-0-0"), ("cs-node-0-1.cs", "cs-node-0-1")]) as hosts:
        args = [*training(request.getfixturevalue("tiny_dataset"), output), "--dist.timeout_s", "1800"]
        job = Job(hosts, "cs", jobset_env, args, output)
        job.start_node(1)

        def start_rendezvous_host() -> None:
            job.gap_s, job.node1_waiting = job.seconds, job.processes[1].poll() is None
            job.start_node(0)

        timer = threading.Timer(COLD_GAP_S, start_rendezvous_host)
        timer.start()
        try:
            yield job
        finally:
            timer.cancel()
            job.kill_all()
