"""Tests marked ``gpu`` need CUDA: where it is absent they are skipped, and ``-ra`` prints why.

Run them with ``pytest -m gpu`` (``benchmarks/gpu_suite.sh`` does, on a GPU machine). The same
checks run on the CPU in the normal suite through the ``device`` parameter's ``cpu`` value, so
their plumbing is exercised before a GPU session.
"""

from __future__ import annotations

import pytest
import torch


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip(
            f"gpu: CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); run `pytest -m gpu` on a GPU machine"
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``device`` runs twice: on the CPU in every suite, and on CUDA under ``-m gpu``."""
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
