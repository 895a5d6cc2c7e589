"""What the Prometheus metrics cost the training loop: each ``observe_*`` call and one scrape, per call.

    python benchmarks/metrics_cost.py [--calls 20000] [--repeats 5]

One process, the endpoint serving on a free local port (multiprocess mode, as a training rank runs it),
and the same calls with metrics disabled (``metrics.port 0``). Prints the median over ``--repeats`` of
``--calls`` calls per method, and the wall time of a scrape (served by local rank 0's thread).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from partialfc.metrics import MetricsConfig, TrainingMetrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def per_call(call: Callable[[], object], calls: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` runs of ``calls`` calls."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter() - start) / calls)
    return statistics.median(runs)


def calls_of(metrics: TrainingMetrics) -> dict[str, Callable[[], object]]:
    """Each observe_* method as the trainer calls it."""
    return {
        "observe_step": lambda: metrics.observe_step(
            samples=128, step_seconds=0.05, data_wait_seconds=0.001, epoch=0, sampled_centres=1000
        ),
        "observe_phases": lambda: metrics.observe_phases({"forward": 0.02, "backward": 0.03, "optimizer": 0.01}),
        "observe_log": lambda: metrics.observe_log(
            loss=2.5, lr=0.1, grad_norm=3.0, loss_scale=None, skipped_steps_total=0
        ),
        "observe_memory (CPU)": lambda: metrics.observe_memory(torch.device("cpu")),
        "observe_evaluation": lambda: metrics.observe_evaluation("verify", "lfw", {"accuracy": 0.99}, 2.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per run (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per method; the median is printed (default 5)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, port in (("endpoint on", free_port()), ("disabled (port 0)", 0)):
            metrics = TrainingMetrics(
                MetricsConfig(port=port, address="127.0.0.1", multiproc_dir=str(Path(scratch) / label)),
                output_dir=scratch,
                rank=0,
                local_rank=0,
                node=0,
                world_size=1,
                info={"backbone": "r50"},
            )
            for name, call in calls_of(metrics).items():
                rows.append((name, label, per_call(call, args.calls, args.repeats)))
            if metrics.url is not None:
                url = metrics.url

                def scrape(url: str = url) -> bytes:
                    with urllib.request.urlopen(url, timeout=10) as response:
                        return response.read()

                rows.append(("one scrape (HTTP GET, whole exposition)", label, per_call(scrape, 50, args.repeats)))
            metrics.close()
    print("| call | metrics | per call |\n| --- | --- | --- |")
    for name, label, seconds in rows:
        print(f"| {name} | {label} | {seconds * 1e6:,.1f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
