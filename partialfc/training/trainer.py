"""The training job: data-parallel backbone + model-parallel Partial FC, step by step.

``Trainer.fit`` is the algorithm: resume, then repeat ``train_step`` (the scheduled learning rate and
sample rate into one :class:`~partialfc.training.train_step.TrainStep`: per micro-batch embed under autocast,
Partial-FC loss, backward; one global gradient norm, clip, step or skip; its report folded into the
log window), observe (a run record: log line, metrics), evaluate and checkpoint at their intervals
(every ``checkpoint.every_steps`` steps or ``checkpoint.every_minutes`` minutes, whichever comes first),
export at the end. Everything that must survive a restart is a component with
``state_dict``/``load_state_dict`` that the :class:`~partialfc.training.checkpoint.Checkpointer` saves by name.

Options the field uses: an EMA of the backbone weights (``train.ema_decay``), updated after every
applied step and used for evaluation and export in place of the raw weights; a sample-rate
schedule (``loss.sample_rate_schedule``), applied at step boundaries; ``model.compile``;
fine-tuning from a pretrained backbone (``model.init_from``) when no checkpoint is resumed.

Batch norm uses each rank's own batch statistics (128 images per GPU is plenty; SyncBN would add
a collective per BN layer); running statistics follow rank 0 (DDP broadcasts buffers), which is
what the exported model carries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

import partialfc
from partialfc.common.distributed import DistInfo, barrier
from partialfc.common.exit_codes import ExitCode, clear_failure, first_failure
from partialfc.config import Config, ConfigError, to_dict
from partialfc.data import RecordDataset
from partialfc.data.loaders import PlannedLoader
from partialfc.metrics import resident_bytes
from partialfc.models import input_config_of
from partialfc.models.model_file import ModelFileError, init_from, save_model
from partialfc.models.precision import autocast_dtype
from partialfc.training.checkpoint import Checkpointer, Component, Stateful, read_manifest
from partialfc.training.ema import WeightAverage
from partialfc.training.evaluation import Evaluation
from partialfc.training.log_window import LogWindow
from partialfc.training.optimizer import NonFiniteReport, TrainingOptimizer
from partialfc.training.preemption import SigtermFlag
from partialfc.training.prepare import prepare_dataset
from partialfc.training.records import CheckpointRecord, EvaluationRecord, Record, Sink, StartRecord, StepRecord
from partialfc.training.resume import check_changes, meaning_changes
from partialfc.training.run_log import RunLog
from partialfc.training.run_plan import RunPlan
from partialfc.training.sinks import MetricsSink, TensorBoardSink
from partialfc.training.train_state import LoaderEpoch, RNGState, TrainProgress
from partialfc.training.train_step import StepConfig, StepReport, TrainStep
from partialfc.training.watchdog import StallWatchdog


class Trainer:
    """The training loop (:meth:`fit`), composed from the components the config's sections build."""

    def __init__(self, config: Config, info: DistInfo, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (seconds) times ``checkpoint.every_minutes``."""
        self.config, self.info, self.device = config, info, info.device
        self.run_dir = Path(config.output)
        self.log = RunLog(self.run_dir, enabled=info.is_main)
        self._seed()
        self.backbone, self.ema, self.model = self._backbone()
        self.dataset, self.loader = self._data()
        self.num_classes = self.dataset.num_classes
        self.steps_per_epoch = self._steps_per_epoch()
        self.pfc = config.loss.build(
            config.model.embedding_size,
            self.num_classes,
            config.optim.build_centre_optimizer(),
            seed=config.train.seed,
            device=self.device,
        )
        self.optimizer = TrainingOptimizer(config.optim, self.backbone, self.pfc, fp16=config.train.amp == "fp16")
        self.progress = TrainProgress()
        self.plan = RunPlan.for_start(config, self.steps_per_epoch, self.global_batch, self.progress)
        self.progress.set_plan(self.plan.steps, self.plan.batch)  # a resumed run's own plan replaces it
        self.checkpointer = self._checkpointer()
        self.watchdog = StallWatchdog(
            self.run_dir / "heartbeats",
            info.rank,
            info.world_size,
            config.stall_timeout() if info.world_size > 1 else 0.0,
            self._on_stall,
        )
        self.training_step = TrainStep(
            self.model,
            self.pfc,
            self.optimizer,
            StepConfig(
                grad_accum=config.train.grad_accum,
                amp_dtype=autocast_dtype(config.train.amp),
                bf16_gemm=config.loss.bf16_gemm,
                channels_last=config.model.channels_last_on(self.device),
            ),
            ema=self.ema,
            on_phase=lambda phase: self.watchdog.beat(self.progress.step, phase),
        )
        self.evaluation = Evaluation.from_config(config, self.device, self.training_step.config.amp_dtype)
        self.sigterm = SigtermFlag(enabled=config.checkpoint.on_sigterm, stuck=self.watchdog.stuck)
        self.save_timer = SaveTimer(config.checkpoint.every_minutes, clock)
        self.metrics = config.metrics.build(
            self.run_dir,
            info,
            {
                "version": partialfc.__version__,
                "backbone": config.model.backbone,
                "num_classes": str(self.num_classes),
                "world_size": str(info.world_size),
            },
        )
        tensorboard = [TensorBoardSink(self.run_dir)] if info.is_main and config.train.tensorboard else []
        self.sinks: list[Sink] = [self.log, *tensorboard, MetricsSink(self.metrics, self.device)]

    # ------------------------------------------------------------------ composition
    def _seed(self) -> None:
        torch.manual_seed(self.config.train.seed)  # identical backbone initialisation on every rank
        if self.config.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses deterministic mode without it
            torch.use_deterministic_algorithms(True)

    def _backbone(self) -> tuple[nn.Module, WeightAverage | None, nn.Module]:
        """The backbone, its weight average (a copy made before compiling) and what the step runs (DDP)."""
        config = self.config
        backbone = config.model.build(self.device)
        ema = WeightAverage(backbone, config.train.ema_decay) if config.train.ema_decay else None
        if config.model.compile:
            backbone.compile()  # in place: parameter names, DDP and the checkpoint keys stay as they are
        model = backbone
        if dist.is_initialized():
            cuda = self.device.type == "cuda"
            model = nn.parallel.DistributedDataParallel(backbone, device_ids=[self.info.local_rank] if cuda else None)
        return backbone, ema, model

    def _data(self) -> tuple[RecordDataset, PlannedLoader]:
        config, info = self.config, self.info
        dataset = prepare_dataset(config.data, config.train.seed, info.is_main)
        loader = config.data.build_loader(
            dataset,
            input_config_of(self.backbone),
            rank=info.rank,
            world_size=info.world_size,
            seed=config.train.seed,
            device_id=info.local_rank if self.device.type == "cuda" else None,
        )
        return dataset, loader

    def _steps_per_epoch(self) -> int:
        steps = len(self.loader) // self.config.train.grad_accum
        if steps == 0:
            raise ConfigError(
                f"data.batch_size={self.config.data.batch_size} x world size {self.info.world_size} x grad_accum "
                f"{self.config.train.grad_accum} exceeds the dataset ({self.dataset.num_images} images)"
            )
        return steps

    def _checkpointer(self) -> Checkpointer:
        """The checkpoint's components: shared (rank 0 writes), per rank, and the centres (sharded by class)."""
        shared: dict[str, Stateful] = {
            "model": self.backbone,
            "optimizer": self.optimizer,
            "progress": self.progress,
            "epoch": LoaderEpoch(self.loader),
            **({"ema": self.ema} if self.ema else {}),
        }
        return Checkpointer(
            self.run_dir / "checkpoints",
            self.info,
            self.config.checkpoint.keep,
            {
                **{name: Component(state, "shared") for name, state in shared.items()},
                "rng": Component(RNGState(), "per_rank"),
                "loader": Component(self.loader, "per_rank"),
                "centres": Component(self.pfc, "sharded"),
            },
            config=to_dict(self.config),
            log=self.log.info,
            step_counters={
                "progress.step": lambda: self.progress.step,
                "PartialFC step_count": lambda: self.pfc.step_count,
            },
        )

    # ------------------------------------------------------------------ the algorithm
    def fit(self) -> ExitCode:
        """Train; returns FINISHED, PREEMPTED (SIGTERM: saved and stopped) or DIVERGED: the process's exit code.

        Any error leaves status "failed" and the error line in summary.json, then propagates.
        """
        try:
            return self._run()
        except Exception as error:
            line = f"{type(error).__name__}: {error}".splitlines()[0]
            first_rank, first_line = first_failure(self.run_dir / "heartbeats", self.info.rank, line)
            if first_rank != self.info.rank:  # a peer failed first; this rank only lost its connection
                line = f"rank {first_rank} failed: {first_line}"
                self.log.update_summary(status="failed", error=line)
                raise PeerFailure(f"{line} (this rank {self.info.rank}: {type(error).__name__})") from error
            self.log.update_summary(
                status="failed", error=line if self.info.world_size == 1 else f"rank {self.info.rank} failed: {line}"
            )
            raise
        except BaseException:
            self.log.update_summary(status="failed", error="interrupted")
            raise
        finally:
            self.sigterm.close()
            self.watchdog.stop()
            for sink in reversed(self.sinks):
                sink.close()

    def _run(self) -> ExitCode:
        resumed = self._resume()
        if resumed and self.progress.finished:
            self.log.info(
                f"the run in {self.run_dir} finished at step {self.progress.step} "
                f"({self.progress.samples} samples, its plan): nothing to train (for a new run, give another output "
                "directory)"
            )
            self.log.update_summary(status=ExitCode.FINISHED.status)
            return ExitCode.FINISHED
        plan, progress = self.plan, self.progress
        if plan.batch != self.global_batch:
            self.log.info(
                f"global batch {plan.batch} -> {self.global_batch} (world size {self.info.world_size}): the "
                f"run's plan stays {plan.steps} steps of {plan.batch} samples; {progress.samples} "
                f"trained, {plan.total_steps - progress.step} steps of {self.global_batch} remain; the LR and "
                "sample-rate schedules follow the samples"
            )
        if not resumed and self.config.model.init_from:
            self._init_backbone(Path(self.config.model.init_from))
        if self.info.is_main:  # an earlier start's failure record must not be blamed for this one's
            clear_failure(self.run_dir / "heartbeats")
        barrier()
        if self.info.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        self._emit(
            StartRecord(
                version=partialfc.__version__,
                backbone=self.config.model.backbone,
                num_classes=self.num_classes,
                world_size=self.info.world_size,
                device=self.device.type,
                images=self.dataset.num_images,
                global_batch=self.global_batch,
                total_steps=self.plan.total_steps,
                steps_per_epoch=self.steps_per_epoch,
                loader=self.loader.backend,
                start_step=self.progress.step,
                restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            )
        )
        with contextlib.closing(self._batches()) as batches:  # closing stops the loader's workers
            return self._train(batches)

    def _train(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> ExitCode:
        window = LogWindow()
        self.watchdog.start()
        self.save_timer.restart()  # a resumed run counts its minutes from here
        while self.progress.step < self.plan.total_steps:
            window.add(self.train_step(batches))
            step = self.progress.step
            log_step = self._is_log_step(step)
            if log_step:
                nonfinite = self.optimizer.nonfinite.report()
                self._log(window, nonfinite)
                window = LogWindow()
                if (
                    self.config.train.nonfinite == "stop"
                    and nonfinite.longest_run >= self.config.train.nonfinite_patience
                ):
                    return self._stop_diverged(nonfinite)
            if self.evaluation.due(step, self.plan.total_steps):
                self._evaluate()
            if _due(step, self.config.checkpoint.every_steps, self.plan.total_steps):
                self._save()
            elif log_step:
                preempted, time_up = any_rank(self.device, self.sigterm.received, self.save_timer.due())
                if preempted or time_up:
                    self._save()
                if preempted:
                    self.log.info(f"SIGTERM: stopped at step {step} after saving; --checkpoint.resume auto continues")
                    self.log.update_summary(status=ExitCode.PREEMPTED.status)
                    barrier()
                    return ExitCode.PREEMPTED
        self._export()
        self.log.update_summary(status=ExitCode.FINISHED.status)
        barrier()  # every rank's final metric values are written before the last scrape
        return ExitCode.FINISHED

    def train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> StepReport:
        """One optimizer step at the scheduled learning rate and sample rate; per-step metrics and the bar."""
        position = self.progress.position
        report = self.training_step(
            batches,
            lr=self.plan.learning_rate(position),
            sample_rate=self.plan.sample_rate(position),
            number=self.progress.step + 1,
        )
        self.progress.step += 1
        self.progress.samples += self.global_batch
        self.metrics.observe_step(  # per rank: local samples, compute time without the data wait
            samples=self.config.data.batch_size * report.micro_batches,
            step_seconds=report.seconds - report.data_wait,
            data_wait_seconds=report.data_wait,
            epoch=self.loader.epoch,
            sampled_centres=report.sampled_centres,
        )
        self.log.progress(self.progress.step, self.plan.total_steps, f"lr {report.lr:.4g}")
        return report

    # ------------------------------------------------------------------ step helpers
    @property
    def inference_backbone(self) -> nn.Module:
        """What evaluation and model.pt use: the EMA weights when train.ema_decay is set."""
        return self.ema.module if self.ema else self.backbone

    @property
    def global_batch(self) -> int:
        return self.config.data.batch_size * self.info.world_size * self.config.train.grad_accum

    def _emit(self, record: Record) -> None:
        for sink in self.sinks:
            sink.write(record)

    def _is_log_step(self, step: int) -> bool:
        return step % self.config.train.log_every == 0 or step == self.plan.total_steps

    def _batches(self) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        while True:
            yield from self.loader

    def _on_stall(self, message: str, stalled_ranks: int) -> None:
        """Watchdog thread: the main thread is stuck in a collective; report (the watchdog then exits)."""
        print(f"partialfc: {message}", file=sys.stderr, flush=True)
        self.metrics.observe_stall(stalled_ranks)
        self.log.info(message)
        self.log.update_summary(status="failed", error=message)
        try:  # raised so that the recorded traceback, which torchrun prints as the root cause, holds the message
            raise StallError(message)
        except StallError as error:
            ErrorHandler().record_exception(error)

    # ------------------------------------------------------------------ reporting
    def _log(self, window: LogWindow, nonfinite: NonFiniteReport) -> None:
        elapsed = window.elapsed()
        loss = window.mean_loss()  # the host syncs here, once per log line
        samples_per_s = window.steps * self.global_batch / elapsed
        remaining = (self.plan.total_steps - self.progress.step) * elapsed / max(window.steps, 1)
        grad_norm = float(window.grad_norm) if window.grad_norm is not None else None
        memory = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else resident_bytes()
        scaler = self.optimizer.scaler
        self._emit(
            StepRecord(
                step=self.progress.step,
                total_steps=self.plan.total_steps,
                epoch=self.loader.epoch,
                loss=loss,
                lr=window.lr,
                grad_norm=grad_norm,
                samples_per_s=samples_per_s,
                data_wait=window.data_wait / elapsed,
                memory_bytes=memory,
                eta_s=remaining,
                phase_seconds=self.training_step.phases.collect(),
                loss_scale=scaler.scale if scaler.enabled else None,
                skipped_steps=self.optimizer.skipped_steps if scaler.enabled else None,
                nonfinite_steps=nonfinite.steps or None,
                first_nonfinite_step=nonfinite.first_step if nonfinite.steps else None,
            )
        )

    def _evaluate(self) -> None:
        """The protocols due at this step; each result is a record, and the deciding one may make model_best.pt."""
        step = self.progress.step
        self.watchdog.beat(step, "evaluation")
        for result in self.evaluation.run(self.inference_backbone, step, self.plan.total_steps, self.watchdog.working):
            record = EvaluationRecord(
                result.protocol, result.target, step, result.summary, result.headline, result.seconds
            )
            improved = self.progress.record_best(record.key, record.score)
            self._emit(dataclasses.replace(record, best=self.progress.best[record.key]))
            if improved and self.evaluation.decides_best(result) and self.info.is_main:
                self._write_model(self.run_dir / "model_best.pt")

    def _stop_diverged(self, nonfinite: NonFiniteReport) -> ExitCode:
        """End the run: every step since the first non-finite one was dropped, checkpoints stay as they are."""
        newest = self.log.summary.get("checkpoint", "none")
        message = (
            f"diverged: {nonfinite.longest_run} consecutive non-finite steps (loss or gradient norm), the "
            f"first at step {nonfinite.first_step}; each was dropped, so the weights are those before it. "
            f"Newest checkpoint: {newest}. Lower optim.lr, enable optim.clip_grad_norm, or resume from an "
            f"earlier checkpoint with --checkpoint.resume PATH"
        )
        self.log.info(message)
        self.log.update_summary(status=ExitCode.DIVERGED.status, error=message, diverged_at_step=nonfinite.first_step)
        barrier()
        return ExitCode.DIVERGED

    # ------------------------------------------------------------------ checkpoints and export
    def _save(self) -> None:
        if not self.optimizer.nonfinite.report(reset=False).latest_finite:
            self.log.info(
                f"checkpoint at step {self.progress.step} not written: the latest step was non-finite "
                "(a run of dropped steps; the previous checkpoints are kept)"
            )
            return
        self.watchdog.beat(self.progress.step, "checkpoint")
        start = time.perf_counter()
        try:
            path = self.checkpointer.save(self.progress.step)
        except BaseException:
            self._emit(CheckpointRecord(self.progress.step, None, time.perf_counter() - start))
            raise
        seconds = time.perf_counter() - start
        self.save_timer.restart()
        self._emit(CheckpointRecord(self.progress.step, str(path), seconds))

    def _resume(self) -> bool:
        """Load the checkpoint ``checkpoint.resume`` names, if any; True when one was loaded."""
        choice = self.config.checkpoint.resume
        if choice == "none":
            return False
        path = self.checkpointer.newest_loadable() if choice == "auto" else Path(choice)
        if path is None:
            return False
        changes = check_changes(
            meaning_changes(read_manifest(path).get("config", {}), to_dict(self.config)),
            self.config.checkpoint.allow_changes,
            str(path),
        )
        loaded = self.checkpointer.load(path)
        self.checkpointer.check_room(path)
        # A checkpoint written before plans were recorded, or an allowed new length (train.max_steps counts
        # steps of this job's global batch): the plan is this job's config, counted from the step reached.
        progress = self.progress
        if not progress.plan_batch or any(change.field.startswith("train.") for change in changes):
            progress.samples = progress.step * self.global_batch
            progress.set_plan(0, 0)
        self.plan = RunPlan.for_start(self.config, self.steps_per_epoch, self.global_batch, progress)
        progress.set_plan(self.plan.steps, self.plan.batch)
        if changes:
            for change in changes:
                self.log.info(f"checkpoint.allow_changes: {change} from step {self.progress.step} on")
            recorded = self.log.summary.get("config_changes", [])
            self.log.update_summary(
                config_changes=recorded
                + [
                    {"field": c.field, "checkpoint": c.checkpoint, "job": c.job, "step": self.progress.step}
                    for c in changes
                ]
            )
        if loaded.resharded:
            self.log.info(
                f"world size changed ({loaded.manifest['world_size']} -> {self.info.world_size}): centres re-sharded; "
                f"the data loader restarts epoch {self.loader.epoch}"
            )
        self.log.info(f"resumed from {path} at step {self.progress.step}")
        if self.config.model.init_from:
            self.log.info(f"model.init_from {self.config.model.init_from} ignored: the checkpoint's weights win")
        return True

    def _init_backbone(self, path: Path) -> None:
        """Fine-tuning: backbone weights from a partialfc model.pt or a bare state_dict (insightface
        backbone.pth, same key names), strictly matched; the centres stay freshly initialised."""
        try:
            init_from(path, self.backbone, self.config.model.backbone, self.config.model.embedding_size)
        except ModelFileError as error:
            raise ConfigError(f"model.init_from {error}") from None
        if self.ema:
            self.ema.reset(self.backbone)
        self.log.info(f"backbone initialised from {path} (model.init_from); class centres start fresh")

    def _export(self) -> None:
        """model.pt after the last step (evaluation and checkpoint ran at that step already)."""
        if self.info.is_main:
            self._write_model(self.run_dir / "model.pt")
            self.log.info(f"exported {self.run_dir / 'model.pt'}")
        self.log.update_summary(
            step=self.progress.step, model=str(self.run_dir / "model.pt"), best_evaluation=self.progress.best
        )

    def _write_model(self, path: Path) -> None:
        """Backbone weights for inference (:func:`partialfc.models.model_file.save_model`)."""
        save_model(
            path, self.config.model.backbone, self.config.model.embedding_size, self.inference_backbone.state_dict()
        )


class PeerFailure(RuntimeError):
    """Another rank failed first (its error is in the message); this rank's collective broke as a result."""


class StallError(RuntimeError):
    """A rank made no progress for train.stall_timeout_s; the message names the rank(s) behind."""


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


class SaveTimer:
    """Whether ``checkpoint.every_minutes`` passed since the last checkpoint save or this start.

    A hard eviction (kubelet node pressure, node loss) sends no SIGTERM, so no pre-emption save: the
    work since the last checkpoint is lost. ``checkpoint.every_steps`` bounds it in steps, whose
    length depends on the model; this bounds it in time. It is asked only at log steps, where the
    host syncs anyway and the ranks already all-reduce the SIGTERM flag: its flag rides on that
    all-reduce (MAX, :func:`any_rank`), so no step gets a new sync, every rank saves the same step
    even where rank clocks disagree (a rank whose clock says "due" makes all save), and the bound is
    ``every_minutes`` plus one log interval (plus the save itself).
    """

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = minutes * 60.0, clock
        self.start = clock()

    def restart(self) -> None:
        """The minutes count from now: after each save, and when training (re)starts."""
        self.start = self.clock()

    def due(self) -> bool:
        return self.seconds > 0 and self.clock() - self.start >= self.seconds


def any_rank(device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Collective: each flag is True when it is True on any rank; one MAX all-reduce carries them all."""
    if not dist.is_initialized():
        return flags
    agreed = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return tuple(bool(value) for value in agreed.tolist())
