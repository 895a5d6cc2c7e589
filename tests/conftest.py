"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from partialfc.data.synth import generate_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """120 training identities x 8 images in 2 shards; 40 held-out identities in 200 verification pairs."""
    path = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(path, 120, 8, seed=3, shards=2, holdout_identities=40, pairs=200)
    return path
