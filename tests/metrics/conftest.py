"""Fixtures for the metrics tests: the Prometheus binaries, live TrainingMetrics, a real Prometheus server."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prom_server import PrometheusServer

from partialfc.metrics import MetricsConfig, TrainingMetrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "monitoring"
INFO = {"version": "0.1.0", "backbone": "iresnet50", "num_classes": "1000", "world_size": "1"}


def _binary(name: str) -> str:
    """Path of a Prometheus binary, or skip (saying why) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        reason = f"`{name}` not found on PATH (Debian: apt-get install -y prometheus)"
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")


@pytest.fixture
def make_metrics(tmp_path: Path) -> Iterator[Callable[..., TrainingMetrics]]:
    """Single-process TrainingMetrics on 127.0.0.1, closed at teardown even when the test fails."""
    created: list[TrainingMetrics] = []

    def make(port: int, **config: object) -> TrainingMetrics:
        metrics = TrainingMetrics(
            MetricsConfig(port=port, address="127.0.0.1", **config),
            output_dir=str(tmp_path),
            rank=0,
            local_rank=0,
            node=0,
            world_size=1,
            info=INFO,
        )
        created.append(metrics)
        return metrics

    yield make
    for metrics in created:
        metrics.close()


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PrometheusServer]:
    """A Prometheus server on 127.0.0.1 scraping one target every second; stopped even on failure."""
    server = PrometheusServer(prometheus_binary, tmp_path / "prometheus")
    request.addfinalizer(server.stop)
    server.start()
    yield server
