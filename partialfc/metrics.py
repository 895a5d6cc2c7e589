"""Prometheus metrics of a training job: one HTTP endpoint per node serving every local rank.

Every rank writes its samples into memory-mapped files (prometheus-client multiprocess mode) in a
node-local directory; local rank 0 serves ``GET /metrics`` and merges the files at scrape time.
This keeps a per-step update a few process-local memory writes (no messages between ranks, no
collective) and lets the endpoint report a hung or slow rank's last values. Design notes, metric
list and multiprocess modes: docs/observability.md.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from partialfc.common.distributed import DistInfo
from partialfc.common.options import FREE, at_least, interval, option
from partialfc.common.phase_timer import PHASES

if typing.TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge

# prometheus_client is imported where metrics are made, not here: the config imports MetricsConfig,
# and loading a config (every CLI, the data tools) must not pull in the metrics stack.

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
# Steps are ~50 ms to a few seconds; fine buckets there keep per-rank step-time quantiles useful.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Gauges keep the value their (single) writer set last; the default mode "all" would add a pid label
# that changes on every restart. Gauge files are dropped at an elastic restart instead (see below).
GAUGE_MODE: typing.Final = "mostrecent"


@dataclass
class MetricsConfig:
    """Where and whether a node serves its Prometheus metrics."""

    port: int = option(
        9400, "HTTP port of the per-node metrics endpoint; 0 disables metrics", interval(0, 65535, high_open=False)
    )
    address: str = option("0.0.0.0", "address the endpoint binds to", FREE)
    multiproc_dir: str = option(
        "", "prometheus-client multiprocess directory; empty: <run output>/prometheus-<node>", FREE
    )
    final_scrape_timeout: float = option(
        0.0, "seconds close() waits for one more scrape so the last values reach Prometheus; 0: none", at_least(0)
    )

    def build(self, output_dir: Path, info: DistInfo, labels: dict[str, str]) -> TrainingMetrics:
        """This rank's metrics, ``labels`` on the info metric; with ``port`` 0, nothing is created or served."""
        return TrainingMetrics(
            self,
            output_dir=str(output_dir),
            rank=info.rank,
            local_rank=info.local_rank,
            node=info.node,
            world_size=info.world_size,
            info=labels,
        )


class MetricsEndpointError(RuntimeError):
    """The metrics endpoint could not bind its address and port."""


class TrainingMetrics:
    """A rank's training metrics. Construct on every rank after ``init_process_group``; collective once.

    Local rank 0 prepares the node's multiprocess directory and starts the endpoint, then all ranks meet
    in a barrier before any of them writes. With ``config.port == 0`` nothing is created or served and
    every method returns at once. One instance per process at a time.
    """

    def __init__(
        self,
        config: MetricsConfig,
        *,
        output_dir: str,
        rank: int,
        local_rank: int,
        node: int,
        world_size: int,
        info: dict[str, str],
    ) -> None:
        self._active = config.port != 0
        self._endpoint: _Endpoint | None = None
        if not self._active:
            return
        invalid = [key for key in info if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key) or key.startswith("__")]
        if invalid:
            raise ValueError(f"info keys must be Prometheus label names: {invalid}")
        if world_size > 1 and not dist.is_initialized():
            raise RuntimeError("TrainingMetrics with world_size > 1 needs torch.distributed initialised first")
        self._final_scrape_timeout = config.final_scrape_timeout
        directory = Path(config.multiproc_dir or Path(output_dir) / f"prometheus-{node}")
        if local_rank == 0:
            _prepare_directory(directory, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
            self._endpoint = _Endpoint(config.address, config.port, directory)
        if world_size > 1:
            dist.barrier()
        # The value class is chosen when prometheus_client is imported; install the multiprocess one
        # explicitly so import order does not matter, and restore both on close().
        from prometheus_client import values

        self._previous_env = os.environ.get(MULTIPROC_ENV)
        self._previous_value_class = values.ValueClass
        os.environ[MULTIPROC_ENV] = str(directory)
        self._value_class = values.MultiProcessValue()
        values.ValueClass = self._value_class
        self._create(rank, local_rank, node, info)

    def _create(self, rank: int, local_rank: int, node: int, info: dict[str, str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        ids = {"rank": str(rank), "local_rank": str(local_rank), "node": str(node)}

        def counter(name: str, doc: str, **extra: str) -> Counter:
            return Counter(name, doc, [*ids, *extra], registry=None).labels(**ids, **extra)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, list(ids), registry=None, multiprocess_mode=GAUGE_MODE).labels(**ids)

        self._samples = counter("partialfc_samples_total", "Training samples processed by the rank.")
        self._steps = counter("partialfc_steps_total", "Optimizer steps run by the rank, skipped ones included.")
        self._step_duration = Histogram(
            "partialfc_step_duration_seconds",
            "Wall time of a training step on the rank, data-loader wait excluded.",
            list(ids),
            registry=None,
            buckets=STEP_BUCKETS,
        ).labels(**ids)
        self._data_wait = counter("partialfc_data_wait_seconds_total", "Time the rank waited for input batches.")
        self._phase = {
            p: counter("partialfc_step_phase_seconds_total", "Step time per phase.", phase=p) for p in PHASES
        }
        self._skipped = counter("partialfc_skipped_steps_total", "Steps skipped for inf/NaN gradients (AMP).")
        self._checkpoint_saves = {
            result: counter("partialfc_checkpoint_saves_total", "Checkpoint save attempts by result.", result=result)
            for result in ("success", "failure")
        }
        self._checkpoint_duration = Histogram(
            "partialfc_checkpoint_save_duration_seconds",
            "Wall time of the rank's checkpoint saves.",
            list(ids),
            registry=None,
            buckets=CHECKPOINT_BUCKETS,
        ).labels(**ids)
        self._loss = gauge("partialfc_loss", "Training loss at the last log interval.")
        self._lr = gauge("partialfc_learning_rate", "Learning rate at the last log interval.")
        self._grad_norm = gauge("partialfc_grad_norm", "Gradient norm at the last log interval.")
        self._loss_scale = gauge("partialfc_amp_loss_scale", "AMP gradient scaler's loss scale.")
        self._epoch = gauge("partialfc_epoch", "Epoch of the last step.")
        self._centres = gauge("partialfc_sampled_centres", "Class centres the rank sampled in its last step.")
        self._last_step = gauge(
            "partialfc_last_step_timestamp_seconds", "Unix time of the last finished step (start time before one)."
        )
        self._last_checkpoint = gauge(
            "partialfc_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint save (start time before one).",
        )
        self._resident = gauge("partialfc_resident_memory_bytes", "Resident set size of the rank's process.")
        self._stalled = gauge(
            "partialfc_stalled_ranks",
            "Ranks this rank found stalled (no progress for train.stall_timeout_s); set before the job fails.",
        )
        # Created on the first CUDA observe_memory: on CPU they would export a misleading 0.
        self._device_memory_families = {
            kind: Gauge(
                f"partialfc_device_memory_{kind}_bytes", doc, list(ids), registry=None, multiprocess_mode=GAUGE_MODE
            )
            for kind, doc in (
                ("allocated", "CUDA memory held by tensors."),
                ("reserved", "CUDA memory reserved by the caching allocator."),
                ("peak", "Peak CUDA memory held by tensors."),
            )
        }
        self._device_memory: dict[str, Gauge] = {}
        self._evaluation_score = Gauge(
            "partialfc_evaluation_score",
            "Each number of the latest evaluation of a protocol on a source (accuracy, TAR@FAR=..., rank-1, ...).",
            ["protocol", "target", "metric"],
            registry=None,
            multiprocess_mode=GAUGE_MODE,
        )
        self._evaluation_seconds = Gauge(
            "partialfc_evaluation_duration_seconds",
            "Wall time of the latest evaluation of a protocol on a source.",
            ["protocol", "target"],
            registry=None,
            multiprocess_mode=GAUGE_MODE,
        )
        self._ids = ids
        self._epoch_seen: int | None = None
        self._centres_seen: int | None = None
        self._skipped_seen = 0
        started = time.time()
        self._last_step.set(started)
        self._last_checkpoint.set(started)
        if self._endpoint is not None:
            build = Gauge(
                "partialfc_build_info",
                "Always 1; labels describe the run.",
                sorted(info),
                registry=None,
                multiprocess_mode="max",
            )
            (build.labels(**{key: str(value) for key, value in info.items()}) if info else build).set(1)

    @property
    def url(self) -> str | None:
        """The endpoint's scrape URL on local rank 0, else None (other ranks, or metrics disabled)."""
        return self._endpoint.url if self._endpoint is not None else None

    def observe_step(
        self, *, samples: int, step_seconds: float, data_wait_seconds: float, epoch: int, sampled_centres: int
    ) -> None:
        """Record one finished step (host-side numbers only). ``step_seconds`` excludes the data wait."""
        if not self._active:
            return
        self._samples.inc(samples)
        self._steps.inc()
        self._step_duration.observe(step_seconds)
        self._data_wait.inc(data_wait_seconds)
        if epoch != self._epoch_seen:
            self._epoch.set(epoch)
            self._epoch_seen = epoch
        if sampled_centres != self._centres_seen:
            self._centres.set(sampled_centres)
            self._centres_seen = sampled_centres
        self._last_step.set(time.time())

    def observe_phases(self, seconds: Mapping[str, float]) -> None:
        """Add the step time per phase (forward, backward, optimizer) of the steps since the last call."""
        if not self._active:
            return
        for phase, value in seconds.items():
            self._phase[phase].inc(value)

    def observe_log(
        self, *, loss: float, lr: float, grad_norm: float | None, loss_scale: float | None, skipped_steps_total: int
    ) -> None:
        """Record the values the trainer synced at a log interval.

        ``skipped_steps_total`` counts this process's skipped steps since it started (not restored from a
        checkpoint): the exported counter adds its growth, so it stays monotonic across restarts.
        """
        if not self._active:
            return
        self._loss.set(loss)
        self._lr.set(lr)
        if grad_norm is not None:
            self._grad_norm.set(grad_norm)
        if loss_scale is not None:
            self._loss_scale.set(loss_scale)
        if skipped_steps_total > self._skipped_seen:
            self._skipped.inc(skipped_steps_total - self._skipped_seen)
            self._skipped_seen = skipped_steps_total

    def observe_memory(self, device: torch.device) -> None:
        """Record the process RSS and, on CUDA, the device's allocated/reserved/peak memory."""
        if not self._active:
            return
        self._resident.set(resident_bytes())
        if device.type != "cuda":
            return
        if not self._device_memory:
            self._device_memory = {
                kind: gauge.labels(**self._ids) for kind, gauge in self._device_memory_families.items()
            }
        self._device_memory["allocated"].set(torch.cuda.memory_allocated(device))
        self._device_memory["reserved"].set(torch.cuda.memory_reserved(device))
        self._device_memory["peak"].set(torch.cuda.max_memory_allocated(device))

    def observe_stall(self, stalled_ranks: int) -> None:
        """Record that the stall watchdog found ``stalled_ranks`` ranks silent or behind."""
        if not self._active:
            return
        self._stalled.set(stalled_ranks)

    def observe_checkpoint(self, *, seconds: float, success: bool) -> None:
        """Record one checkpoint save attempt of this rank."""
        if not self._active:
            return
        self._checkpoint_duration.observe(seconds)
        self._checkpoint_saves["success" if success else "failure"].inc()
        if success:
            self._last_checkpoint.set(time.time())

    def observe_evaluation(self, protocol: str, target: str, summary: Mapping[str, float], seconds: float) -> None:
        """Record the numbers and the wall time of the latest evaluation of ``protocol`` on ``target``."""
        if not self._active:
            return
        for metric, value in summary.items():
            self._evaluation_score.labels(protocol=protocol, target=target, metric=metric).set(value)
        self._evaluation_seconds.labels(protocol=protocol, target=target).set(seconds)

    def close(self) -> None:
        """Stop serving (after one more scrape if configured) and release the files. Not collective.

        Call ``dist.barrier()`` first at the end of training so every rank's last values are written
        before the final scrape. Idempotent; later ``observe_*`` calls do nothing.
        """
        if not self._active:
            return
        self._active = False
        if self._endpoint is not None:
            self._endpoint.close(self._final_scrape_timeout)
        self._value_class.close_all_files()
        from prometheus_client import values

        values.ValueClass = self._previous_value_class
        if self._previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = self._previous_env


def _prepare_directory(directory: Path, restart_count: int) -> None:
    """Empty the directory at the job's first start; on an elastic restart keep counters and histograms.

    Keeping them makes totals monotonic across restarts of this node's workers; gauges are dropped
    because their writers (the previous workers, all stopped by the agent before a restart) are dead.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db" if restart_count == 0 else "gauge_*.db"):
        path.unlink(missing_ok=True)


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Endpoint:
    """Local rank 0's HTTP server: read-only ``/metrics`` merged from every local rank's files."""

    def __init__(self, address: str, port: int, directory: Path) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=str(directory))
        handler = type("MetricsHandler", (_MetricsHandler,), {"registry": registry, "endpoint": self})
        server_class = _IPv6Server if ":" in address else ThreadingHTTPServer
        try:
            self._server = server_class((address, port), handler)
        except OSError as err:
            raise MetricsEndpointError(
                f"cannot serve metrics on {address}:{port}: {err.strerror or err} "
                "(set --metrics.port to a free port, or 0 to disable metrics)"
            ) from err
        self._server.daemon_threads = True
        host = f"[{address}]" if ":" in address else address
        self.url = f"http://{host}:{self._server.server_address[1]}{METRICS_PATH}"
        self._scrapes = threading.Condition()
        self._next_ticket = 0
        self._last_finished = -1
        self._thread = threading.Thread(target=self._server.serve_forever, name="partialfc-metrics", daemon=True)
        self._thread.start()

    def scrape_started(self) -> int:
        """A ticket ordering this scrape after every scrape that started before it."""
        with self._scrapes:
            ticket = self._next_ticket
            self._next_ticket += 1
            return ticket

    def scrape_finished(self, ticket: int) -> None:
        """Mark the scrape with ``ticket`` as fully sent."""
        with self._scrapes:
            self._last_finished = max(self._last_finished, ticket)
            self._scrapes.notify_all()

    def close(self, final_scrape_timeout: float) -> None:
        """Wait up to ``final_scrape_timeout`` for a scrape that started after this call, then stop."""
        if final_scrape_timeout > 0:
            with self._scrapes:
                first = self._next_ticket
                self._scrapes.wait_for(lambda: self._last_finished >= first, timeout=final_scrape_timeout)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _MetricsHandler(BaseHTTPRequestHandler):
    """GET/HEAD ``/metrics`` only; every other method is refused with 405."""

    registry: CollectorRegistry
    endpoint: _Endpoint
    server_version = "partialfc-metrics"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, *, send_body: bool) -> None:
        if urlsplit(self.path).path != METRICS_PATH:
            self._reply(HTTPStatus.NOT_FOUND, f"metrics are served at {METRICS_PATH}\n")
            return
        ticket = self.endpoint.scrape_started()
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        output = encoder(self.registry)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(output)))
        self.end_headers()
        if send_body:
            self.wfile.write(output)
            self.endpoint.scrape_finished(ticket)

    def _refuse(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "read-only endpoint: use GET\n", allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _reply(self, status: HTTPStatus, text: str, allow: str | None = None) -> None:
        body = text.encode()
        self.close_connection = True
        self.send_response(status)
        if allow is not None:
            self.send_header("Allow", allow)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the training log."""
