"""The buffers behind :class:`~partialfc.PartialFC`'s step, and the in-place kernels that fill them.

None of this changes the algorithm of :mod:`partialfc.core.partial_fc`; it is how the step avoids
allocations, host syncs and cache misses:

- :class:`MicroBatch` — what one training forward pass leaves for the update (sampled rows, their
  fp32 values, the gradient buffer), :func:`merge_micro_batches` for gradient accumulation and
  :func:`winning_rows` for sub-centres (only winners are updated);
- :class:`Workspace` — large per-step buffers kept across steps (page faults cost more than the
  kernels on CPU);
- :class:`DeferredLabelCheck` — label validation without a host sync in the forward pass;
- :func:`matmul_into`, :func:`project_out_radial`, :func:`update_rows_in_chunks` — kernels that
  write into kept buffers, in cache- or memory-bounded chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from partialfc.core.centre_optim import CentreOptimizer

_UPDATE_CHUNK_BYTES = 16 << 20  # fp32 rows per optimizer call: bounds (and lets malloc reuse) its buffers
_ROWDOT_SCRATCH_BYTES = 4 << 20  # CPU scratch for row dots, about a core's share of cache


class LabelRangeError(ValueError):
    """Labels outside ``[0, num_classes)``: the usual cause is a wrong ``num_classes`` in the config."""


@dataclass(eq=False)
class MicroBatch:
    """What one training forward pass leaves for :meth:`PartialFC.step`."""

    rows: torch.Tensor | None  # sampled local rows (None: all)
    values: torch.Tensor  # their fp32 values [S, D] (for dense fp32, the weight itself)
    grad: torch.Tensor  # [S, D] buffer the backward pass writes ∂L/∂w into
    logits: torch.Tensor  # [N, S] buffer for logits → exp → ∂L/∂z
    negative_factor: torch.Tensor | None = None  # [N, S] ∂z/∂(s·cos θ) where a margin rewrites non-targets
    filtered: torch.Tensor | None = None  # [N, S] bool: cosines inter-class filtering set to 0 (no gradient)
    class_logits: torch.Tensor | None = None  # sub-centres: [N, S/K] per-class logits (max over K)
    winners: torch.Tensor | None = None  # sub-centres: [N, S/K] column of each class's winning sub-centre
    has_grad: bool = False


class Workspace:
    """Large per-step buffers, kept across steps and grown on demand.

    On CPU a fresh 100 MB tensor costs more in page faults than the kernel that fills it
    (measured here: ``index_select`` of 100 MB 150 ms, into a kept buffer 28 ms); on GPU the
    caching allocator would keep the memory anyway.
    """

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != dtype or flat.device != device:
            self._flat.pop(name, None)  # free the old buffer before allocating its replacement
            flat = self._flat[name] = torch.empty(numel, dtype=dtype, device=device)
        return flat[:numel].view(shape)

    def micro_batch(
        self,
        weight: torch.Tensor,
        rows: torch.Tensor | None,
        num_samples: int,
        index: int,
        negative_factor: bool,
        filtered: bool = False,
        sub_centers: int = 1,
    ) -> MicroBatch:
        """fp32 values of the sampled centres and the buffers their gradient and logits go to.

        ``index`` numbers the micro-batches of one step: buffers of pending ones are never reused.
        ``negative_factor`` adds an ``[N, S]`` buffer for margins that rewrite non-target logits,
        ``filtered`` an ``[N, S]`` mask for inter-class filtering.
        With ``sub_centers = K > 1`` the logits buffer holds the N×(S·K) sub-centre logits, and the
        per-class logits and winners get N×S buffers of their own.
        """
        num_rows = weight.shape[0] if rows is None else rows.numel()
        shape, device = (num_rows, weight.shape[1]), weight.device
        if rows is None and weight.dtype == torch.float32:
            values = weight.detach()  # dense fp32: the optimizer updates it in place, no copy
        else:
            values = self.get(f"values{index}", shape, torch.float32, device)
            if rows is None:
                values.copy_(weight)
            elif weight.dtype == torch.float32:
                torch.index_select(weight, 0, rows, out=values)
            else:
                values.copy_(weight.index_select(0, rows))
        class_shape = (num_samples, num_rows // sub_centers)
        return MicroBatch(
            rows=rows,
            values=values,
            grad=self.get(f"grad{index}", shape, torch.float32, device),
            logits=self.get(f"logits{index}", (num_samples, num_rows), torch.float32, device),
            negative_factor=self.get(f"factor{index}", class_shape, torch.float32, device) if negative_factor else None,
            filtered=self.get(f"filtered{index}", class_shape, torch.bool, device) if filtered else None,
            class_logits=self.get(f"class_logits{index}", class_shape, torch.float32, device)
            if sub_centers > 1
            else None,
            winners=self.get(f"winners{index}", class_shape, torch.int64, device) if sub_centers > 1 else None,
        )


def merge_micro_batches(weight: torch.Tensor, pending: Sequence[MicroBatch]) -> MicroBatch:
    """One record for several micro-batches of a step: union of rows, summed gradients."""
    device = weight.device
    sampled_rows = [micro.rows for micro in pending if micro.rows is not None]
    if len(sampled_rows) < len(pending):  # a dense micro-batch: the merged one is dense too
        rows, values = None, weight.detach().to(torch.float32)
        grad = torch.zeros(weight.shape, dtype=torch.float32, device=device)
        for micro in pending:
            if micro.rows is None:
                grad.add_(micro.grad)
            else:
                grad.index_add_(0, micro.rows, micro.grad)
    else:
        rows, inverse = torch.unique(torch.cat(sampled_rows), sorted=True, return_inverse=True)
        values = weight.index_select(0, rows).to(torch.float32)
        grad = torch.zeros(rows.numel(), weight.shape[1], dtype=torch.float32, device=device)
        grad.index_add_(0, inverse, torch.cat([micro.grad for micro in pending]))
    return MicroBatch(rows=rows, values=values, grad=grad, logits=pending[0].logits, has_grad=True)


def winning_rows(micro: MicroBatch) -> MicroBatch:
    """The micro-batch restricted to the sub-centres that won for at least one sample (a host sync).

    The others have no gradient and must not move: no weight decay, no momentum push.
    """
    if micro.winners is None:
        raise ValueError("winning_rows needs a micro-batch of a sub-centre layer (winners recorded)")
    num_rows = micro.grad.shape[0]
    won = torch.zeros(num_rows, dtype=torch.bool, device=micro.grad.device).index_fill_(0, micro.winners.view(-1), True)
    keep = won.nonzero().squeeze(1)
    rows = keep if micro.rows is None else micro.rows.index_select(0, keep)
    values, grad = micro.values.index_select(0, keep), micro.grad.index_select(0, keep)
    return MicroBatch(rows=rows, values=values, grad=grad, logits=micro.logits, has_grad=True)


class DeferredLabelCheck:
    """Finds labels outside ``[0, num_classes)`` without a host sync in the forward pass.

    ``record`` queues a device-side summary and an async copy to the host; ``raise_if_bad``
    reads it later (on GPU, at the optimizer step, when the copy has long completed). Labels are
    checked after the all-gather, so every rank raises the same error instead of one rank raising
    while the others wait in a collective.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._summary: torch.Tensor | None = None
        self._ready: torch.cuda.Event | None = None

    def record(self, labels: torch.Tensor) -> None:
        # A summary still pending (an earlier micro-batch of this step) is checked first, never
        # overwritten; its copy has long completed by now, so this does not stall.
        self.raise_if_bad()
        bad = (labels < 0) | (labels >= self.num_classes)
        count = torch.count_nonzero(bad)
        first = torch.where(bad, labels, labels.new_full((), torch.iinfo(torch.int64).max)).min()
        last = torch.where(bad, labels, labels.new_full((), torch.iinfo(torch.int64).min)).max()
        summary = torch.stack([count, first, last, labels.min(), labels.max()])
        if labels.is_cuda:
            host = torch.empty(5, dtype=torch.int64, pin_memory=True)
            host.copy_(summary, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
            self._summary = host
        else:
            self._summary = summary

    def raise_if_bad(self) -> None:
        if self._summary is None:
            return
        if self._ready is not None:
            self._ready.synchronize()
        count, first, last, low, high = self._summary.tolist()
        self._summary, self._ready = None, None
        if count:
            raise LabelRangeError(
                f"PartialFC: {count} label(s) of the global batch are outside [0, {self.num_classes}): "
                f"bad values range from {first} to {last} (labels span [{low}, {high}]); "
                "check num_classes against the dataset"
            )


def matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b`` in fp32 ``out``; GEMMs in another dtype go through a temporary."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


def project_out_radial(grad: torch.Tensor, w: torch.Tensor, inv_norm: torch.Tensor) -> None:
    """Backward through ŵ = w/‖w‖ in place: g ← g − (g·w)·w/‖w‖² per row.

    The row dots go through a cache-sized scratch on CPU (2.6× faster than ``bmm`` there); on
    GPU in one pass.
    """
    num_rows, dim = grad.shape
    chunk_rows = num_rows if grad.is_cuda else max(1, _ROWDOT_SCRATCH_BYTES // (4 * dim))
    radial = torch.empty(num_rows, dtype=grad.dtype, device=grad.device)
    scratch = torch.empty(min(chunk_rows, num_rows), dim, dtype=grad.dtype, device=grad.device)
    for start in range(0, num_rows, chunk_rows):
        rows = slice(start, min(start + chunk_rows, num_rows))
        product = scratch[: rows.stop - start]
        torch.mul(grad[rows], w[rows], out=product)
        torch.sum(product, dim=1, out=radial[rows])
    grad.addcmul_(radial.mul_(inv_norm.square()).unsqueeze(1), w, value=-1.0)


def update_rows_in_chunks(
    optimizer: CentreOptimizer,
    weight: torch.Tensor,
    state: dict[str, torch.Tensor],
    micro: MicroBatch,
    generator: torch.Generator | None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """``optimizer.update`` on the micro-batch's rows, a bounded number of rows per call."""
    chunk_rows = max(1, _UPDATE_CHUNK_BYTES // (4 * weight.shape[1]))
    for start in range(0, micro.values.shape[0], chunk_rows):
        chunk = slice(start, start + chunk_rows)
        rows = chunk if micro.rows is None else micro.rows[chunk]
        optimizer.update(weight, state, rows, micro.values[chunk], micro.grad[chunk], generator, found_inf)
