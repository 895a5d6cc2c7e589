"""Fixtures shared by every test directory, and the order and grouping of a parallel run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
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


# The longest first: the multi-node jobs, minutes each (the cold start mostly waits), then the
# directories whose tests start training processes; the rest after them, in collection order.
START_ORDER = (
    "tests/multinode/test_cold_start.py",
    "tests/multinode/test_chaos.py",
    "tests/multinode/test_rendezvous_store.py",
    "tests/multinode/test_two_nodes.py",
    "tests/multinode/test_endings.py",
    "tests/train/",
    "tests/partial_fc/",
    "tests/data/",
)
SHARED_SCOPES = {"package", "module", "class"}


def pytest_configure() -> None:
    """A worker of a parallel run is one of several processes sharing the cores: one compute thread each,
    as torchrun gives its workers, for itself and what it starts (idle OpenMP threads spin, and on an
    oversubscribed machine that spinning is CPU the other workers lose)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def _start_rank(item: pytest.Item) -> int:
    return next((i for i, prefix in enumerate(START_ORDER) if item.nodeid.startswith(prefix)), len(START_ORDER))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """START_ORDER's tests first, in its order, the rest after: in a parallel run (`make test`: pytest-xdist,
    ``--dist loadgroup --no-loadscope-reorder``, which hands out work in this order) the longest start
    first and the short ones fill the gaps. The tests of a module that share a fixture of module (class,
    package) scope form one group, run by one worker, so the fixture is built once; any other test is
    dealt on its own."""
    items.sort(key=_start_rank)
    for item in items:
        definitions = item._fixtureinfo.name2fixturedefs.values()  # type: ignore[attr-defined]
        if any(fixturedefs[-1].scope in SHARED_SCOPES for fixturedefs in definitions):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
