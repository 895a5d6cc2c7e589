"""Fixtures for the data tests: tiny JPEGs, the MXNet oracle interpreter, a tiny synthetic dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data.rec_fixtures import write_dataset

from partialfc.data.dataset import RecordDataset
from partialfc.data.image import encode_jpeg

REPO = Path(__file__).resolve().parents[2]


def tiny_jpeg(seed: int, size: int = 16) -> bytes:
    """A small random JPEG, different for each seed."""
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), quality=80)


@pytest.fixture
def make_jpeg() -> Callable[..., bytes]:
    return tiny_jpeg


@pytest.fixture(scope="session")
def mxnet_python() -> str:
    """The MXNet oracle interpreter: $PARTIALFC_MXNET_PYTHON, else the repo's .venv-mxnet, else skip."""
    python = os.environ.get("PARTIALFC_MXNET_PYTHON")
    if not python:
        candidate = REPO / ".venv-mxnet" / "bin" / "python"
        if not candidate.exists():
            reason = "MXNet oracle unavailable: PARTIALFC_MXNET_PYTHON unset and no .venv-mxnet (run `make oracle`)"
            print(reason, file=sys.stderr)
            pytest.skip(reason)
        python = str(candidate)
    return python


@pytest.fixture(scope="session")
def run_mxnet(mxnet_python: str) -> Callable[..., str]:
    """Run a script under the MXNet oracle with arguments; returns its stdout, fails on error."""

    def run(script: str, *args: str | Path) -> str:
        proc = subprocess.run(
            [mxnet_python, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"mxnet oracle failed:\n{proc.stderr}"
        return proc.stdout

    return run


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-identity x 4-image synthetic dataset with 6 verification pairs (session-wide, read-only)."""
    from partialfc.data.synth import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    return generate_synthetic_dataset(out, 12, 4, seed=3, holdout_identities=3, pairs=6, workers=1)


@pytest.fixture(scope="session")
def one_file(tmp_path_factory: pytest.TempPathFactory) -> RecordDataset:
    """One InsightFace-layout .rec whose images encode their own index (loader tests)."""
    path, _ = write_dataset(tmp_path_factory.mktemp("one"), num_ids=60, seed=1)
    return RecordDataset(path)


@pytest.fixture(scope="session")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> RecordDataset:
    """The same kind of dataset split into two shards with global class ids."""
    path, _ = write_dataset(tmp_path_factory.mktemp("two"), num_ids=50, seed=2, shards=2)
    return RecordDataset(path)
