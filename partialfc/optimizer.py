"""One optimizer for the whole model: the backbone's torch optimizer and the lazy centre optimizer.

The two halves of the model live in different places (the backbone in autograd, the class
centres in :class:`~partialfc.PartialFC`'s own buffers, different per rank), but a step must treat
them as one parameter vector: one learning rate, one *global* gradient norm (backbone, identical
on every rank after DDP, plus every rank's centre shard, summed over ranks), one clip coefficient,
one fp16 overflow decision taken identically by all ranks. :class:`TrainingOptimizer` owns that
step; the trainer only says when it wants the norm reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from partialfc.amp import LossScaler
from partialfc.centre_optim import CentreOptimizer, LazyAdamW, LazySGD
from partialfc.config import OptimConfig
from partialfc.partial_fc import PartialFC

__all__ = ["TrainingOptimizer", "StepOutcome", "centre_optimizer"]


def _hyperparameters(config: OptimConfig) -> dict[str, object]:
    """Keyword arguments shared by the backbone and the centre optimizer of ``config.name``."""
    family = {"momentum": config.momentum} if config.name == "sgd" else {"betas": tuple(config.betas)}
    return {"lr": config.lr, "weight_decay": config.weight_decay, **family}


_FAMILIES: dict[str, tuple[type[torch.optim.Optimizer], type]] = {
    "sgd": (torch.optim.SGD, LazySGD),
    "adamw": (torch.optim.AdamW, LazyAdamW),
}


def centre_optimizer(config: OptimConfig) -> CentreOptimizer:
    """The lazy row-sparse optimizer for the centre shard, same family and settings as the backbone's."""
    return _FAMILIES[config.name][1](**_hyperparameters(config))


@dataclass
class StepOutcome:
    grad_norm: torch.Tensor | None
    """Global gradient norm before clipping (a device scalar; None when nobody needed it)."""
    skipped: bool
    """True when the step was dropped (fp16 overflow, or a non-finite norm under ``skip_nonfinite``)."""


class TrainingOptimizer:
    """Backbone optimizer + ``pfc``'s centre optimizer, driven as one (see the module docstring).

    The centre optimizer must be the one ``pfc`` was built with (:func:`centre_optimizer`).
    """

    def __init__(self, config: OptimConfig, backbone: nn.Module, pfc: PartialFC, *, fp16: bool = False) -> None:
        self.config = config
        self.pfc = pfc
        self.params = list(backbone.parameters())
        fused = self.params[0].is_cuda if self.params else False
        self.backbone_optimizer = _FAMILIES[config.name][0](self.params, **_hyperparameters(config), fused=fused)
        self.scaler = LossScaler(enabled=fp16)
        self.skipped_steps = 0
        """Steps dropped since this process started (a metric, not restored on resume)."""

    @property
    def loss_multiplier(self) -> float:
        """Factor applied to the loss before backward (the fp16 loss scale; 1 otherwise)."""
        return self.scaler.factor

    def set_lr(self, lr: float) -> None:
        for group in self.backbone_optimizer.param_groups:
            group["lr"] = lr
        self.pfc.optimizer.lr = lr

    def step(self, *, need_norm: bool = False, skip_nonfinite: bool = False) -> StepOutcome:
        """Unscale, take the global norm, clip, then update both halves or drop the step everywhere.

        The norm is computed when clipping, fp16, ``need_norm`` or ``skip_nonfinite`` asks for it.
        A host sync happens only when the skip decision needs it (fp16 or ``skip_nonfinite``).
        """
        clip, fp16 = self.config.clip_grad_norm, self.scaler.enabled
        norm = None
        skip = False
        if clip or fp16 or need_norm or skip_nonfinite:
            if fp16:
                self._scale_grads(1.0 / self.scaler.factor)
            norm = self.global_grad_norm()
            if fp16 or skip_nonfinite:
                skip = not bool(torch.isfinite(norm))
            if clip and not skip:
                self._scale_grads((clip / (norm + 1e-6)).clamp(max=1.0))  # torch's clip_grad_norm_ coefficient
        if skip:
            self.pfc.skip_step()
            self.skipped_steps += 1
        else:
            self.backbone_optimizer.step()
            self.pfc.step()
        self.backbone_optimizer.zero_grad(set_to_none=True)
        self.scaler.update(skip)
        return StepOutcome(norm, skip)

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
