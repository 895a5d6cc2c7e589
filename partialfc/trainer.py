"""The training job: data-parallel backbone + model-parallel Partial FC, step by step.

``Trainer.fit`` reads like the algorithm: load a batch, embed it (DDP backbone under autocast),
Partial-FC loss, backward, one global gradient norm over backbone + every centre shard (for
clipping and the fp16 overflow decision, agreed by all ranks), optimizer steps, then logging,
verification and checkpoints at their intervals.

Batch norm uses each rank's own batch statistics (128 images per GPU is plenty; SyncBN would add
a collective per BN layer); running statistics follow rank 0 (DDP broadcasts buffers), which is
what the exported model carries.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

import partialfc
from partialfc.amp import LossScaler
from partialfc.centre_optim import LazyAdamW, LazySGD
from partialfc.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from partialfc.config import Config, ConfigError, to_dict
from partialfc.data.loaders import LoaderParams, build_loader
from partialfc.data.prepare import prepare_dataset, resolve_val_targets
from partialfc.data.verification import VerificationSet
from partialfc.distributed import DistInfo, barrier
from partialfc.evaluation import VerificationResult, evaluate
from partialfc.lr_schedule import LRSchedule
from partialfc.margins import CombinedMargin, Softmax
from partialfc.metrics import TrainingMetrics
from partialfc.models import create_model
from partialfc.partial_fc import PartialFC
from partialfc.run_log import RunLog

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_head(config: Config) -> CombinedMargin | Softmax:
    loss = config.loss
    if loss.head == "softmax":
        return Softmax()
    try:
        return CombinedMargin(s=loss.s, m1=loss.m1, m2=loss.m2, m3=loss.m3)
    except ValueError as error:
        raise ConfigError(f"loss: {error}") from None


class Trainer:
    def __init__(self, config: Config, info: DistInfo) -> None:
        self.config, self.info, self.device = config, info, info.device
        self.run_dir = Path(config.output)
        self.log = RunLog(self.run_dir, enabled=info.is_main, tensorboard=config.train.tensorboard)
        torch.manual_seed(config.train.seed)  # identical backbone initialisation on every rank
        if config.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses deterministic mode without it
            torch.use_deterministic_algorithms(True)

        self.backbone = self._build_backbone()  # before the loader, which normalises as it says
        self.dataset = prepare_dataset(config.data, config.train.seed, info.is_main)
        self.num_classes = self.dataset.num_classes
        self.val_sets = [VerificationSet(path) for path in resolve_val_targets(config.data)]
        loader_params = LoaderParams(
            config.data.batch_size, self.backbone.input_config, rank=info.rank, world_size=info.world_size,
            seed=config.train.seed, flip=config.data.flip,
        )
        self.loader = build_loader(
            self.dataset, loader_params, backend=config.data.backend,
            device_id=info.local_rank if self.device.type == "cuda" else None, num_workers=config.data.num_workers,
        )
        self.steps_per_epoch = len(self.loader) // config.train.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={config.data.batch_size} x world size {info.world_size} x grad_accum "
                f"{config.train.grad_accum} exceeds the dataset ({self.dataset.num_images} images)"
            )
        self.total_steps = config.train.max_steps or math.ceil(config.train.epochs * self.steps_per_epoch)

        self.model = self.backbone
        if dist.is_initialized():
            self.model = nn.parallel.DistributedDataParallel(
                self.backbone, device_ids=[info.local_rank] if self.device.type == "cuda" else None
            )
        self.optimizer = self._build_optimizer()
        self.pfc = PartialFC(
            config.model.embedding_size, self.num_classes, config.loss.sample_rate, build_head(config),
            optimizer=self._centre_optimizer(), seed=config.train.seed, init_std=config.loss.init_std,
            param_dtype=PARAM_DTYPES[config.loss.param_dtype], device=self.device,
        )
        self.schedule = LRSchedule(
            config.optim.lr, round(config.schedule.warmup_epochs * self.steps_per_epoch), self.total_steps,
            config.schedule.decay, config.schedule.power,
        )
        self.amp_dtype = AMP_DTYPES[config.train.amp]
        self.scaler = LossScaler(enabled=config.train.amp == "fp16")
        self.step = 0
        self.skipped_steps = 0  # fp16 overflows since this process started
        self.best: dict[str, float] = {}
        self.sigterm = _SigtermFlag(enabled=config.checkpoint.on_sigterm)
        self.metrics = TrainingMetrics(
            config.metrics, output_dir=str(self.run_dir), rank=info.rank, local_rank=info.local_rank,
            node=info.node, world_size=info.world_size,
            info={"version": partialfc.__version__, "backbone": config.model.backbone,
                  "num_classes": str(self.num_classes), "world_size": str(info.world_size)},
        )

    # ------------------------------------------------------------------ construction
    def _build_backbone(self) -> nn.Module:
        model = create_model(self.config.model.backbone, embedding_size=self.config.model.embedding_size,
                             dropout=self.config.model.dropout).to(self.device)
        if self.device.type == "cuda" and self.config.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.config.optim
        params = self.backbone.parameters()
        fused = self.device.type == "cuda"
        if optim.name == "adamw":
            return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, fused=fused)
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, fused=fused)

    def _centre_optimizer(self) -> LazySGD | LazyAdamW:
        optim = self.config.optim
        if optim.name == "adamw":
            return LazyAdamW(lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
        return LazySGD(lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> str:
        """Train to the end ("finished"), or until a SIGTERM is agreed on: save, stop, "preempted"."""
        self._resume()
        if self.info.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        self.log.info(
            f"partialfc {partialfc.__version__}: {self.config.model.backbone}, {self.num_classes} classes on "
            f"{self.info.world_size} rank(s) ({self.device.type}), {self.dataset.num_images} images, "
            f"global batch {self.global_batch}, {self.total_steps} steps ({self.steps_per_epoch}/epoch), "
            f"loader {self.loader.backend}, start at step {self.step}"
        )
        self.log.update_summary(status="running", total_steps=self.total_steps, world_size=self.info.world_size)
        batches = self._batches()
        window = _Window(time.perf_counter())
        try:
            while self.step < self.total_steps:
                self._train_step(batches, window)
                log_step = self.step % self.config.train.log_every == 0 or self.step == self.total_steps
                if log_step:
                    self._log(window)
                    window = _Window(time.perf_counter())
                if _due(self.step, self.config.eval.every_steps, self.total_steps) and self.val_sets:
                    self._verify()
                if _due(self.step, self.config.checkpoint.every_steps, self.total_steps):
                    self._save()
                elif log_step and self.sigterm.agreed(self.device):
                    self._save()
                    self.log.info(f"SIGTERM: stopped at step {self.step} after saving; --checkpoint.resume auto continues")
                    self.log.update_summary(status="preempted")
                    barrier()
                    return "preempted"
            self._export()
            self.log.update_summary(status="finished")
            barrier()  # every rank's final metric values are written before the last scrape
        except BaseException:
            self.log.update_summary(status="failed")
            raise
        finally:
            self.metrics.close()
            self.log.close()
        return "finished"

    @property
    def global_batch(self) -> int:
        return self.config.data.batch_size * self.info.world_size * self.config.train.grad_accum

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.loader

    def _train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], window: _Window) -> None:
        step_start = time.perf_counter()
        wait_before = window.data_wait
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.pfc.optimizer.lr = lr
        accum = self.config.train.grad_accum
        for micro in range(accum):
            wait_start = time.perf_counter()
            images, labels = next(batches)
            window.data_wait += time.perf_counter() - wait_start
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and self.config.model.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            last_micro = micro == accum - 1
            with contextlib.nullcontext() if last_micro or self.model is self.backbone else self.model.no_sync():
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                    embeddings = self.model(images)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.loss.bf16_gemm):
                    loss = self.pfc(embeddings, labels)
                (loss * (self.scaler.factor / accum)).backward()
            window.loss_sum += loss.detach()
            window.micro_batches += 1

        grad_norm, found_inf = self._unscale_and_clip()
        if found_inf:
            self.pfc.skip_step()
            self.skipped_steps += 1
        else:
            self.optimizer.step()
            self.pfc.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update(found_inf)
        self.step += 1
        window.steps += 1
        window.grad_norm = grad_norm
        window.lr = lr
        step_wait = window.data_wait - wait_before
        self.metrics.observe_step(  # per rank: local samples, compute time without the data wait
            samples=self.config.data.batch_size * accum, step_seconds=time.perf_counter() - step_start - step_wait,
            data_wait_seconds=step_wait, epoch=self.loader.epoch, sampled_centres=self.pfc.num_sample,
        )
        self.log.progress(self.step, self.total_steps, f"lr {lr:.4g}")

    def _unscale_and_clip(self) -> tuple[torch.Tensor | None, bool]:
        """Global gradient norm (device scalar, or None when not needed) and the overflow decision.

        Backbone gradients are identical on every rank after DDP; centre gradients are per rank, so
        their squared norms are summed over ranks. Host syncs only for fp16 (skip decision).
        """
        clip, fp16 = self.config.optim.clip_grad_norm, self.scaler.enabled
        if not clip and not fp16 and self.step % self.config.train.log_every != self.config.train.log_every - 1:
            return None, False
        params = [p for p in self.backbone.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        if fp16:
            inv_scale = 1.0 / self.scaler.factor
            for grad in grads:
                grad.mul_(inv_scale)
            self.pfc.scale_grad_(inv_scale)
        backbone_sq_norm = torch.nn.utils.get_total_norm(grads).square() if grads else torch.zeros((), device=self.device)
        centre_sq_norm = self.pfc.grad_sq_norm()
        if dist.is_initialized():
            dist.all_reduce(centre_sq_norm)
        norm = (backbone_sq_norm + centre_sq_norm).sqrt()
        found_inf = bool(not torch.isfinite(norm)) if fp16 else False
        if clip and not found_inf:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            self.pfc.scale_grad_((clip / (norm + 1e-6)).clamp(max=1.0))  # clip_grads_with_norm_'s coefficient
        return norm, found_inf

    # ------------------------------------------------------------------ reporting
    def _log(self, window: _Window) -> None:
        elapsed = time.perf_counter() - window.start
        loss = float(window.loss_sum) / max(window.micro_batches, 1)  # one host sync per log line
        samples_per_s = window.steps * self.global_batch / max(elapsed, 1e-9)
        remaining = (self.total_steps - self.step) * elapsed / max(window.steps, 1)
        grad_norm = float(window.grad_norm) if window.grad_norm is not None else None
        memory = _memory_bytes(self.device)
        self.log.info(
            f"step {self.step}/{self.total_steps} epoch {self.loader.epoch} loss {loss:.4f} lr {window.lr:.5g} "
            f"grad_norm {'-' if grad_norm is None else f'{grad_norm:.3f}'} {samples_per_s:,.0f} samples/s "
            f"data_wait {100 * window.data_wait / max(elapsed, 1e-9):.0f}% mem {memory / 2**30:.2f}GiB "
            f"eta {_duration(remaining)}"
            + (f" loss_scale {self.scaler.scale:g} skipped {self.skipped_steps}" if self.scaler.enabled else "")
        )
        self.metrics.observe_log(loss=loss, lr=window.lr, grad_norm=grad_norm,
                                 loss_scale=self.scaler.scale if self.scaler.enabled else None,
                                 skipped_steps_total=self.skipped_steps)
        self.metrics.observe_memory(self.device)
        self.log.scalars(self.step, {"loss": loss, "lr": window.lr, "samples_per_s": samples_per_s})
        self.log.update_summary(step=self.step, epoch=self.loader.epoch, loss=loss, lr=window.lr,
                                samples_per_second=samples_per_s, grad_norm=grad_norm)

    def _verify(self) -> None:
        results: list[VerificationResult] = [
            evaluate(self.backbone, vset, self.config.model.embedding_size, self.device,
                     self.config.eval.batch_size, self.amp_dtype, self.config.eval.far)
            for vset in self.val_sets
        ]
        for result in results:
            self.log.info(
                f"verification {result.name} step {self.step}: accuracy {result.accuracy:.4f} "
                f"± {result.accuracy_std:.4f}, TAR@FAR={result.far:g} {result.tar_at_far:.4f}"
            )
            self.metrics.observe_verification(result.name, result.accuracy)
        improved = results[0].accuracy > self.best.get(results[0].name, -1.0)
        for result in results:
            self.best[result.name] = max(result.accuracy, self.best.get(result.name, -1.0))
        if improved and self.info.is_main:
            self._write_model(self.run_dir / "model_best.pt")
        self.log.update_summary(
            best_verification=self.best,
            last_verification={r.name: {"accuracy": r.accuracy, "tar_at_far": r.tar_at_far, "step": self.step} for r in results},
        )

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        start = time.perf_counter()
        trainer_state = None
        if self.info.is_main:
            trainer_state = {
                "backbone": self.backbone.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "best": self.best,
                "config": to_dict(self.config),
            }
        rank_state = {"rng": _rng_state(), "loader": self.loader.state_dict()}
        try:
            path = save_checkpoint(self.run_dir / "checkpoints", self.step, self.loader.epoch, self.info, self.pfc,
                                   trainer_state, rank_state, self.config.checkpoint.keep)
        except BaseException:
            self.metrics.observe_checkpoint(seconds=time.perf_counter() - start, success=False)
            raise
        seconds = time.perf_counter() - start
        self.metrics.observe_checkpoint(seconds=seconds, success=True)
        self.log.info(f"checkpoint {path} ({seconds:.1f}s)")
        self.log.update_summary(checkpoint=str(path))

    def _resume(self) -> None:
        choice = self.config.checkpoint.resume
        if choice == "none":
            return
        path = find_latest_checkpoint(self.run_dir / "checkpoints") if choice == "auto" else Path(choice)
        if path is None:
            return
        loaded = load_checkpoint(path, self.info, self.pfc)
        state = loaded.trainer_state
        self.backbone.load_state_dict(state["backbone"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = int(state["step"]), dict(state["best"])
        if loaded.rank_state is not None:
            _set_rng_state(loaded.rank_state["rng"])
            self.loader.load_state_dict(loaded.rank_state["loader"])
        else:
            self.loader.set_epoch(int(loaded.meta["epoch"]))
            self.log.info(
                f"world size changed ({loaded.meta['world_size']} -> {self.info.world_size}): centres re-sharded; "
                f"the data loader restarts epoch {loaded.meta['epoch']}"
            )
        self.log.info(f"resumed from {path} at step {self.step}")

    def _export(self) -> None:
        """model.pt after the last step (verification and checkpoint ran at that step already)."""
        if self.info.is_main:
            self._write_model(self.run_dir / "model.pt")
            self.log.info(f"exported {self.run_dir / 'model.pt'}")
        self.log.update_summary(step=self.step, model=str(self.run_dir / "model.pt"), best_verification=self.best)

    def _write_model(self, path: Path) -> None:
        """Backbone weights for inference; loads with ``torch.load(weights_only=True)``."""
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"backbone": self.config.model.backbone, "embedding_size": self.config.model.embedding_size,
                    "state_dict": self.backbone.state_dict()}, tmp)
        os.replace(tmp, path)


class _SigtermFlag:
    """Records SIGTERM; ranks agree on stopping at log steps, where the host syncs anyway.

    Signals reach ranks at different moments (and inside collectives), so each rank only notes it;
    a MAX all-reduce at the next log step makes every rank stop after the same step. A second
    SIGTERM gets the default action (terminate) if saving takes too long.
    """

    def __init__(self, enabled: bool) -> None:
        self.received = False
        if enabled and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def agreed(self, device: torch.device) -> bool:
        if not dist.is_initialized():
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class _Window:
    """Accumulators between two log lines (device tensors stay on device until the log line)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.loss_sum: torch.Tensor | float = 0.0
        self.micro_batches = self.steps = 0
        self.data_wait = 0.0
        self.grad_norm: torch.Tensor | None = None
        self.lr = 0.0


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
