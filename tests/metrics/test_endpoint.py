"""The per-node metrics endpoint: names, exposition, HTTP methods, ports, multiprocess merging, restarts."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_harness import free_port, run_distributed
from metric_names import DEVICE_MEMORY, EXPORTED
from prometheus_client.parser import text_string_to_metric_families

from partialfc.metrics import MULTIPROC_ENV, MetricsConfig, MetricsEndpointError, TrainingMetrics

BATCH = 8


def exercise(metrics: TrainingMetrics, steps: int, loss: float = 2.5) -> None:
    """Call every observe_* method like a trainer would."""
    for step in range(steps):
        metrics.observe_step(
            samples=BATCH, step_seconds=0.06, data_wait_seconds=0.002, epoch=step // 2, sampled_centres=100
        )
        metrics.observe_phases({"forward": 0.02, "backward": 0.03, "optimizer": 0.01})
    metrics.observe_log(loss=loss, lr=0.1, grad_norm=3.0, loss_scale=65536.0, skipped_steps_total=1)
    metrics.observe_memory(torch.device("cpu"))
    metrics.observe_checkpoint(seconds=1.5, success=True)
    metrics.observe_evaluation("verify", "lfw", {"accuracy": 0.99, "TAR@FAR=0.001": 0.9}, 2.5)


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    """(content type, body) of a GET."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def request(url: str, method: str) -> http.client.HTTPResponse:
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(method, "/" + url.split("/", 3)[3], body=b"x" if method in ("POST", "PUT") else None)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def samples_by_name(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of an exposition."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_names_follow_prometheus_conventions(make_metrics: Callable[..., TrainingMetrics]) -> None:
    metrics = make_metrics(free_port())
    exercise(metrics, steps=3)
    families = list(text_string_to_metric_families(scrape(metrics.url)[1]))
    names = {family.name + ("_total" if family.type == "counter" else "") for family in families}
    assert names == EXPORTED
    for family in families:
        assert family.name.startswith("partialfc_"), family.name
        for sample in family.samples:
            assert sample.name.endswith("_total") == (family.type == "counter"), sample.name
            base = sample.name.removesuffix("_total")
            base = base.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            for unit in ("seconds", "bytes"):
                assert unit not in base or base.endswith("_" + unit), f"{sample.name}: unit must end the name"
            assert not any(part in base.split("_") for part in ("ms", "milliseconds", "kb", "mb", "percent"))


def test_cuda_memory_gauges(make_metrics: Callable[..., TrainingMetrics], monkeypatch: pytest.MonkeyPatch) -> None:
    # CPU-only CI: stand in for the CUDA allocator's counters to check the wiring of observe_memory.
    for name, value in (("memory_allocated", 1 << 30), ("memory_reserved", 2 << 30), ("max_memory_allocated", 3 << 30)):
        monkeypatch.setattr(torch.cuda, name, lambda device, value=value: value)
    metrics = make_metrics(free_port())
    metrics.observe_memory(torch.device("cuda", 0))
    samples = samples_by_name(scrape(metrics.url)[1])
    assert {name: list(samples[name].values()) for name in DEVICE_MEMORY} == {
        "partialfc_device_memory_allocated_bytes": [1 << 30],
        "partialfc_device_memory_reserved_bytes": [2 << 30],
        "partialfc_device_memory_peak_bytes": [3 << 30],
    }
    assert next(iter(samples["partialfc_resident_memory_bytes"].values())) > 0


def test_promtool_check_metrics_accepts_scrape(make_metrics: Callable[..., TrainingMetrics], promtool: str) -> None:
    metrics = make_metrics(free_port())
    exercise(metrics, steps=3)
    text = scrape(metrics.url)[1]
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_get_and_head_served_other_methods_refused(make_metrics: Callable[..., TrainingMetrics]) -> None:
    metrics = make_metrics(free_port())
    exercise(metrics, steps=2)
    content_type, body = scrape(metrics.url)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert samples_by_name(body)["partialfc_steps_total"] == {(("local_rank", "0"), ("node", "0"), ("rank", "0")): 2}
    content_type, body = scrape(metrics.url, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    head = request(metrics.url, "HEAD")
    assert head.status == 200 and int(head.headers["Content-Length"]) > 0
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = request(metrics.url, method)
        assert (response.status, response.headers["Allow"]) == (405, "GET, HEAD"), method
    assert request(metrics.url.replace("/metrics", "/other"), "GET").status == 404


def test_skipped_steps_counter_adds_only_the_growth_of_the_running_total(
    make_metrics: Callable[..., TrainingMetrics],
) -> None:
    """Planted bug: the exported skipped-steps counter adding the running total at each log line (1 + 3 + 4 ...)."""
    metrics = make_metrics(free_port())
    for total in (1, 3, 3, 4):  # the optimizer's count since the process started, read at four log lines
        metrics.observe_log(loss=2.0, lr=0.1, grad_norm=1.0, loss_scale=1024.0, skipped_steps_total=total)
    assert list(samples_by_name(scrape(metrics.url)[1])["partialfc_skipped_steps_total"].values()) == [4]


def test_port_in_use_names_address_and_port(make_metrics: Callable[..., TrainingMetrics]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsEndpointError, match=rf"127\.0\.0\.1:{port}: Address already in use"):
            make_metrics(port)
    assert MULTIPROC_ENV not in os.environ


def test_port_zero_serves_and_writes_nothing(make_metrics: Callable[..., TrainingMetrics], tmp_path: Path) -> None:
    threads = threading.active_count()
    metrics = make_metrics(0)
    exercise(metrics, steps=2)
    assert metrics.url is None
    assert list(tmp_path.iterdir()) == []
    assert threading.active_count() == threads
    assert MULTIPROC_ENV not in os.environ
    metrics.close()


def test_close_restores_process_and_stops_serving(make_metrics: Callable[..., TrainingMetrics]) -> None:
    metrics = make_metrics(free_port())
    url = metrics.url
    assert os.environ[MULTIPROC_ENV]
    metrics.close()
    metrics.close()
    exercise(metrics, steps=1)
    assert MULTIPROC_ENV not in os.environ
    with pytest.raises(OSError):
        scrape(url)


def test_final_scrape_keeps_endpoint_until_scraped(make_metrics: Callable[..., TrainingMetrics]) -> None:
    metrics = make_metrics(free_port(), final_scrape_timeout=30.0)
    exercise(metrics, steps=1)
    closer = threading.Thread(target=metrics.close)
    started = time.monotonic()
    closer.start()
    closer.join(timeout=0.5)
    assert closer.is_alive(), "close() returned before the final scrape"
    assert "partialfc_steps_total" in scrape(metrics.url)[1]
    closer.join(timeout=10)
    assert not closer.is_alive() and time.monotonic() - started < 10


def test_observe_step_costs_under_one_percent_of_a_step(make_metrics: Callable[..., TrainingMetrics]) -> None:
    metrics = make_metrics(free_port())
    calls = 2000
    started = time.perf_counter()
    exercise(metrics, steps=calls)
    per_step = (time.perf_counter() - started) / calls
    assert per_step < 0.01 * 0.050, f"observe_step takes {per_step * 1e6:.0f} us"


def two_ranks_one_endpoint(rank: int, world_size: int, output_dir: str, port: int) -> str:
    """Both ranks write; local rank 0's endpoint must serve both (run in spawned processes)."""
    metrics = TrainingMetrics(
        MetricsConfig(port=port, address="127.0.0.1"),
        output_dir=output_dir,
        rank=rank,
        local_rank=rank,
        node=0,
        world_size=world_size,
        info={"version": "test", "world_size": str(world_size)},
    )
    exercise(metrics, steps=2 + rank, loss=1.0 + rank)
    dist.barrier()
    text = scrape(metrics.url)[1] if rank == 0 else ""
    dist.barrier()
    metrics.close()
    return text


def test_one_endpoint_serves_every_local_rank(tmp_path: Path) -> None:
    text = run_distributed(two_ranks_one_endpoint, 2, str(tmp_path), free_port())[0]
    samples = samples_by_name(text)

    def per_rank(name: str) -> dict[str, float]:
        return {dict(labels)["rank"]: value for labels, value in samples[name].items()}

    assert per_rank("partialfc_samples_total") == {"0": 2 * BATCH, "1": 3 * BATCH}
    assert per_rank("partialfc_step_duration_seconds_count") == {"0": 2, "1": 3}
    assert per_rank("partialfc_loss") == {"0": 1.0, "1": 2.0}
    assert {dict(labels)["local_rank"] for labels in samples["partialfc_loss"]} == {"0", "1"}
    assert list(samples["partialfc_build_info"].values()) == [1.0]
    assert all("pid" not in dict(labels) for series in samples.values() for labels in series)
    assert (tmp_path / "prometheus-0").is_dir()


def one_attempt(
    rank: int, world_size: int, output_dir: str, port: int, restart_count: int, steps: int, log: bool
) -> str:
    """One worker attempt of a 1-rank node as torchrun would start it; returns its final scrape."""
    os.environ["TORCHELASTIC_RESTART_COUNT"] = str(restart_count)
    metrics = TrainingMetrics(
        MetricsConfig(port=port, address="127.0.0.1"),
        output_dir=output_dir,
        rank=0,
        local_rank=0,
        node=0,
        world_size=world_size,
        info={"version": "test"},
    )
    for _ in range(steps):
        metrics.observe_step(samples=BATCH, step_seconds=0.06, data_wait_seconds=0.0, epoch=0, sampled_centres=1)
    if log:
        metrics.observe_log(loss=4.0, lr=0.1, grad_norm=None, loss_scale=None, skipped_steps_total=0)
    text = scrape(metrics.url)[1]
    metrics.close()
    return text


def test_elastic_restart_keeps_counters_and_drops_dead_gauges(tmp_path: Path) -> None:
    def attempt(restart_count: int, steps: int, log: bool) -> dict[str, dict[tuple, float]]:
        text = run_distributed(one_attempt, 1, str(tmp_path), free_port(), restart_count, steps, log)[0]
        return samples_by_name(text)

    first = attempt(restart_count=0, steps=3, log=True)
    assert list(first["partialfc_samples_total"].values()) == [3 * BATCH]
    assert "partialfc_loss" in first
    restarted = attempt(restart_count=1, steps=2, log=False)
    assert list(restarted["partialfc_samples_total"].values()) == [5 * BATCH]
    assert "partialfc_loss" not in restarted, "a gauge of the dead previous worker survived the restart"
    new_job = attempt(restart_count=0, steps=1, log=False)
    assert list(new_job["partialfc_samples_total"].values()) == [BATCH]
