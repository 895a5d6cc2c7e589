"""Lazy (row-sparse) optimizers for the class-centre shard.

A Partial-FC step touches only the sampled rows of the centre shard, so only those rows may be
read or written: the gradient exists for them alone (``[num_sampled, D]``, never
``[num_local, D]``), and momentum, weight decay and Adam moments of every other row stay
bit-identical. A dense optimizer would instead decay and push every one of millions of rows each
step (the incumbent's behaviour) and needs a dense gradient buffer.

Each optimizer is a small stateless rule: :meth:`init_state` says which per-row tensors it needs
(the :class:`~partialfc.PartialFC` module registers them as buffers, so the module's
``state_dict`` holds them and they re-shard with the centres), and :meth:`update` applies one
step to a set of rows. Arithmetic runs in fp32 even when the shard is stored in bf16; bf16 stores
round stochastically so that updates smaller than half a bf16 ulp are not lost on average.

For a row updated at every step the rules equal ``torch.optim.SGD`` (momentum, L2 weight decay,
optional Nesterov) and ``torch.optim.AdamW``. AdamW keeps a per-row step count: a row's bias
correction uses the number of times *that row* was updated, the natural choice when rows are
updated at irregular intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch.optim.sgd import sgd

__all__ = ["CentreOptimizer", "LazyAdamW", "LazySGD", "store_rows"]


class CentreOptimizer(Protocol):
    """The contract :class:`~partialfc.PartialFC` drives a lazy centre optimizer through."""

    lr: float
    """Learning rate; the trainer's schedule overwrites it every step."""

    def init_state(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-row state tensors (``[num_local, ...]``, registered as buffers: saved and re-sharded)."""
        ...

    def update(
        self,
        weight: torch.Tensor,
        state: dict[str, torch.Tensor],
        rows: torch.Tensor | slice,
        row_values: torch.Tensor,
        grad: torch.Tensor,
        generator: torch.Generator | None = None,
        found_inf: torch.Tensor | None = None,
    ) -> None:
        """Update ``weight[rows]`` and its state in place; ``rows`` is an index tensor or a slice.

        ``row_values`` holds the current fp32 values of those rows and ``grad`` their gradient;
        both may be consumed (overwritten). ``generator`` drives stochastic rounding into bf16.
        ``found_inf`` (a device scalar, 1.0 = drop this step) skips the update on the device, so
        a non-finite step is dropped without the host waiting for the decision.
        """
        ...


@dataclass
class LazySGD:
    """SGD with momentum and L2 weight decay, applied to sampled rows only."""

    lr: float = 0.1
    """Learning rate; the trainer's schedule overwrites it every step."""
    momentum: float = 0.9
    """Momentum factor (0 disables the momentum buffer)."""
    weight_decay: float = 5e-4
    """L2 penalty added to the gradient of each updated row."""
    nesterov: bool = False
    """Use Nesterov momentum."""

    def init_state(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.momentum == 0.0:
            return {}
        return {"momentum": torch.zeros_like(weight)}

    def update(
        self,
        weight: torch.Tensor,
        state: dict[str, torch.Tensor],
        rows: torch.Tensor | slice,
        row_values: torch.Tensor,
        grad: torch.Tensor,
        generator: torch.Generator | None = None,
        found_inf: torch.Tensor | None = None,
    ) -> None:
        """See :meth:`CentreOptimizer.update`; consumes ``row_values`` and ``grad`` to avoid extra buffers."""
        buf = _load_rows(state["momentum"], rows) if self.momentum else None
        # torch's fused SGD kernel: one pass over weight, gradient and momentum instead of five;
        # with found_inf = 1 it leaves both untouched.
        sgd(
            [row_values],
            [grad],
            [buf],
            fused=True,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=self.nesterov,
            maximize=False,
            found_inf=found_inf,
        )
        if buf is not None:
            store_rows(state["momentum"], rows, buf, generator)
        store_rows(weight, rows, row_values, generator)


@dataclass
class LazyAdamW:
    """AdamW (decoupled weight decay) applied to sampled rows only, with per-row step counts."""

    lr: float = 1e-3
    """Learning rate; the trainer's schedule overwrites it every step."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Decay rates of the first and second moment estimates."""
    eps: float = 1e-8
    """Term added to the denominator for numerical stability."""
    weight_decay: float = 0.01
    """Decoupled weight decay: each updated row is multiplied by ``1 - lr * weight_decay``."""

    def init_state(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "exp_avg": torch.zeros_like(weight),
            "exp_avg_sq": torch.zeros_like(weight),
            # Counts fit float32 exactly up to 2**24 updates of one row.
            "row_step": torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device),
        }

    def update(
        self,
        weight: torch.Tensor,
        state: dict[str, torch.Tensor],
        rows: torch.Tensor | slice,
        row_values: torch.Tensor,
        grad: torch.Tensor,
        generator: torch.Generator | None = None,
        found_inf: torch.Tensor | None = None,
    ) -> None:
        """See :meth:`CentreOptimizer.update`."""
        if found_inf is not None:
            # A dropped step becomes a zero-weight one: no step count, no moment update, no movement.
            keep = 1.0 - found_inf
            grad = torch.where(found_inf.bool(), 0.0, grad)
            self._update(weight, state, rows, row_values, grad, generator, keep)
        else:
            self._update(weight, state, rows, row_values, grad, generator, None)

    def _update(
        self,
        weight: torch.Tensor,
        state: dict[str, torch.Tensor],
        rows: torch.Tensor | slice,
        row_values: torch.Tensor,
        grad: torch.Tensor,
        generator: torch.Generator | None,
        keep: torch.Tensor | None,
    ) -> None:
        beta1, beta2 = self.betas
        step = _load_rows(state["row_step"], rows).add_(1.0 if keep is None else keep)
        store_rows(state["row_step"], rows, step)
        if keep is None:
            exp_avg = _load_rows(state["exp_avg"], rows).lerp_(grad, 1.0 - beta1)
            exp_avg_sq = _load_rows(state["exp_avg_sq"], rows).mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        else:
            exp_avg = _load_rows(state["exp_avg"], rows).lerp_(grad, (1.0 - beta1) * keep)
            exp_avg_sq = _load_rows(state["exp_avg_sq"], rows).mul_(1.0 - (1.0 - beta2) * keep)
            exp_avg_sq.addcmul_(grad, grad, value=1.0 - beta2)  # grad is zero when the step is dropped
        store_rows(state["exp_avg"], rows, exp_avg, generator)
        store_rows(state["exp_avg_sq"], rows, exp_avg_sq, generator)

        bias_correction1 = 1.0 - torch.pow(beta1, step)
        bias_correction2_sqrt = (1.0 - torch.pow(beta2, step)).sqrt_()
        # As torch.optim.AdamW: w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), per-row bc.
        # The moments may alias the state (dense fp32 case), so they are only read from here on.
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt[:, None]).add_(self.eps)
        step_size = (self.lr / bias_correction1)[:, None]
        decay: float | torch.Tensor = 1.0 - self.lr * self.weight_decay
        if keep is not None:  # a never-updated row has bias correction 0: select, do not multiply
            step_size = torch.where(keep.bool(), step_size, 0.0)
            decay = torch.where(keep.bool(), decay, 1.0)
        row_values.mul_(decay)
        row_values.addcdiv_(exp_avg * step_size, denom, value=-1.0)
        store_rows(weight, rows, row_values, generator)


def _load_rows(tensor: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
    """fp32 values of the selected rows, to be modified and handed to :func:`store_rows`.

    For a slice of fp32 storage this is a view (updated in place, no copy); otherwise a buffer.
    """
    selected = tensor[rows] if isinstance(rows, slice) else tensor.index_select(0, rows)
    return selected.to(torch.float32)


def store_rows(
    tensor: torch.Tensor,
    rows: torch.Tensor | slice,
    values: torch.Tensor,
    generator: torch.Generator | None = None,
) -> None:
    """Write fp32 ``values`` into ``tensor[rows]``, rounding stochastically into bf16 storage."""
    if tensor.dtype == torch.bfloat16 and generator is not None:
        values = _stochastic_round_bf16(values, generator)
    if isinstance(rows, slice):
        target = tensor[rows]
        if values.data_ptr() != target.data_ptr():  # fp32 views were updated in place already
            target.copy_(values)
    else:
        tensor.index_copy_(0, rows, values.to(tensor.dtype))


def _stochastic_round_bf16(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # bf16 is the top 16 bits of fp32: adding uniform noise to the low 16 bits before truncation
    # rounds up with probability equal to the discarded fraction (unbiased rounding).
    bits = values.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    rounded = (bits + noise) & -65536
    return rounded.view(torch.float32).to(torch.bfloat16)
