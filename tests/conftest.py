"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_cluster import Job, can_make_hosts, jobset_env, make_hosts, training

from partialfc.data.synth import generate_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """120 training identities x 8 images in 2 shards; 40 held-out identities in 200 verification pairs."""
    path = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(path, 120, 8, seed=3, shards=2, holdout_identities=40, pairs=200)
    return path


COLD_START_TEST = "tests/multinode/test_cold_start.py"


@pytest.fixture(scope="session", autouse=True)
def cold_start_node(request) -> Iterator[Job | None]:
    """Node 1 of a two-node JobSet job, started at the session's first test when the cold-start test
    is collected (else None); its rendezvous host, node 0, starts only in that test. The gap between
    them must exceed what torch's own store client tolerates (minutes), so it overlaps the suite."""
    if not any(item.nodeid.startswith(COLD_START_TEST) for item in request.session.items) or not can_make_hosts():
        yield None
        return
    output = request.getfixturevalue("tmp_path_factory").mktemp("cold") / "run"
    output.mkdir(parents=True)
    with make_hosts([("cs-node-0-0.cs", "cs-node-0-0"), ("cs-node-0-1.cs", "cs-node-0-1")]) as hosts:
        job = Job(hosts, "cs", jobset_env, training(request.getfixturevalue("tiny_dataset"), output), output)
        job.start_node(1)
        try:
            yield job
        finally:
            job.kill_all()
