"""One optimizer for the whole model: the backbone's torch optimizer and the lazy centre optimizer.

The two halves of the model live in different places (the backbone in autograd, the class
centres in :class:`~partialfc.PartialFC`'s own buffers, different per rank), but a step must treat
them as one parameter vector: one learning rate, one *global* gradient norm (backbone, identical
on every rank after DDP, plus every rank's centre shard, summed over ranks), one clip coefficient,
one fp16 overflow decision taken identically by all ranks. :class:`TrainingOptimizer` owns that
step; the trainer only says when it wants the norm reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from partialfc.config import OptimConfig
from partialfc.core.partial_fc import PartialFC
from partialfc.training.amp import LossScaler

__all__ = ["StepOutcome", "TrainingOptimizer"]


# The backbone's optimizer of each family, called with OptimConfig.hyperparameters() and fused=True.
_BACKBONE_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
}


@dataclass
class StepOutcome:
    grad_norm: torch.Tensor
    """Global gradient norm before clipping (a device scalar)."""
    skipped: bool | None
    """Whether the step was dropped, when the host knows (fp16, where the scaler needs it); else None."""
    applied: torch.Tensor
    """Whether the update was applied (a device bool scalar, read without a host sync: the EMA's gate)."""


@dataclass
class NonFiniteReport:
    steps: int
    """Non-finite steps since the previous report (each one dropped)."""
    longest_run: int
    """Longest run of consecutive non-finite steps seen in that interval (runs may span reports)."""
    first_step: int | None
    """1-based number of the first non-finite step of the interval."""
    latest_finite: bool
    """Whether the most recent step was finite."""


class NonFiniteCounter:
    """Counts dropped non-finite steps on the device; read on the host only when asked (log lines, saves)."""

    def __init__(self, device: torch.device) -> None:
        self.run = torch.zeros((), dtype=torch.int64, device=device)
        self.longest = torch.zeros_like(self.run)
        self.count = torch.zeros_like(self.run)
        self.first = torch.full_like(self.run, -1)

    def record(self, bad: torch.Tensor, step: int) -> None:
        bad = bad.to(torch.int64)
        self.run.add_(1).mul_(bad)  # consecutive bad steps ending at this one
        torch.maximum(self.longest, self.run, out=self.longest)
        self.count.add_(bad)
        self.first.copy_(torch.where((self.first < 0) & (bad > 0), step, self.first))

    def report(self, reset: bool = True) -> NonFiniteReport:
        """The interval's figures (one host sync); ``reset`` starts a new interval."""
        count, longest, first, run = (
            int(v) for v in torch.stack([self.count, self.longest, self.first, self.run]).tolist()
        )
        if reset:
            self.count.zero_()
            self.first.fill_(-1)
            self.longest.copy_(self.run)
        return NonFiniteReport(count, longest, first if first >= 0 else None, run == 0)


class TrainingOptimizer:
    """Backbone optimizer + ``pfc``'s centre optimizer, driven as one (see the module docstring).

    The centre optimizer must be the one ``pfc`` was built with (``config.build_centre_optimizer()``).
    A step whose loss or global gradient norm is not finite is dropped on every rank, both halves
    untouched: in fp16 by the host (the loss scaler needs the decision anyway), otherwise on the
    device (``found_inf`` of torch's fused optimizers and of the centre optimizers), so that no
    host sync is added. :attr:`nonfinite` counts those steps for the trainer's divergence policy.
    """

    def __init__(self, config: OptimConfig, backbone: nn.Module, pfc: PartialFC, *, fp16: bool = False) -> None:
        self.config = config
        self.pfc = pfc
        self.params = list(backbone.parameters())
        # Fused kernels on CPU and GPU alike: they implement the on-device skip (found_inf).
        self.backbone_optimizer = _BACKBONE_OPTIMIZERS[config.name](self.params, **config.hyperparameters(), fused=True)
        self.scaler = LossScaler(enabled=fp16)
        self.nonfinite = NonFiniteCounter(pfc.weight.device)
        self.skipped_steps = 0
        """fp16 overflow steps dropped since this process started (a metric, not restored on resume)."""

    @property
    def loss_multiplier(self) -> float:
        """Factor applied to the loss before backward (the fp16 loss scale; 1 otherwise)."""
        return self.scaler.factor

    def set_lr(self, lr: float) -> None:
        """The scheduled ``lr`` for the backbone; ``lr`` x ``optim.centre_lr_scale`` for the centres."""
        for group in self.backbone_optimizer.param_groups:
            group["lr"] = lr
        self.pfc.optimizer.lr = lr * self.config.centre_lr_scale

    def step(self, loss: torch.Tensor | None = None, step_number: int = 0) -> StepOutcome:
        """Unscale, take the global norm, clip, then update both halves or drop the step everywhere.

        ``loss`` (the step's loss, a device scalar identical on every rank) joins the finiteness
        test; ``step_number`` names the step in :attr:`nonfinite`'s reports. The norm is global,
        so every rank reaches the same decision.
        """
        clip, fp16 = self.config.clip_grad_norm, self.scaler.enabled
        if fp16:
            self._scale_grads(1.0 / self.scaler.factor)
        norm = self.global_grad_norm()
        finite = torch.isfinite(norm) if loss is None else torch.isfinite(norm) & torch.isfinite(loss)
        if clip:
            self._scale_grads((clip / (norm + 1e-6)).clamp(max=1.0))  # torch's clip_grad_norm_ coefficient
        skipped: bool | None = None
        if fp16:  # the host decides: the scaler needs the decision anyway
            skipped = not bool(finite)
            loss_finite = loss is None or bool(torch.isfinite(loss))
            # An overflow of the scaled gradients is the scaler's business until the scale cannot drop further.
            bad = torch.tensor(not loss_finite or (skipped and self.scaler.scale <= 1.0), device=norm.device)
            if skipped:
                self.pfc.skip_step()
                self.skipped_steps += 1
            else:
                self._apply(None)
            self.scaler.update(skipped)
            applied = torch.tensor(not skipped, device=norm.device)
        else:  # the device decides: no host sync
            bad, applied = torch.logical_not(finite), finite
            self._apply(bad.to(torch.float32))
        self.nonfinite.record(bad, step_number)
        self.backbone_optimizer.zero_grad(set_to_none=True)
        return StepOutcome(norm, skipped, applied)

    def _apply(self, found_inf: torch.Tensor | None) -> None:
        # Read by torch's fused optimizers through getattr; torch's Optimizer does not declare it.
        self.backbone_optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        self.backbone_optimizer.step()
        self.pfc.step(found_inf=found_inf)

    def global_grad_norm(self) -> torch.Tensor:
        """L2 norm over the backbone gradients and every rank's centre gradient (device scalar)."""
        grads = self._backbone_grads()
        if grads:
            backbone_sq = torch.nn.utils.get_total_norm(grads).square()
        else:
            backbone_sq = torch.zeros((), device=self.pfc.weight.device)
        centre_sq = self.pfc.grad_sq_norm()
        if dist.is_initialized():
            dist.all_reduce(centre_sq)  # backbone gradients are already identical on every rank (DDP)
        return (backbone_sq.to(centre_sq.device) + centre_sq).sqrt()

    def _backbone_grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def _scale_grads(self, factor: torch.Tensor | float) -> None:
        grads = self._backbone_grads()
        if grads:
            torch._foreach_mul_(grads, factor)
        self.pfc.scale_grad_(factor)

    def state_dict(self) -> dict[str, object]:
        """Backbone optimizer + loss scaler; the centre optimizer's state lives in ``pfc``'s buffers."""
        return {"backbone": self.backbone_optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.backbone_optimizer.load_state_dict(state["backbone"])  # type: ignore[arg-type]
        self.scaler.load_state_dict(state["scaler"])  # type: ignore[arg-type]
