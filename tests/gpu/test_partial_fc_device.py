"""Partial FC on a device against the dense float64 reference, and its deferred label check.

Each check runs on the CPU in every suite and on CUDA under ``pytest -m gpu``. Stated tolerances
(norm-wise relative error, see ``reference.relative_error``), two SGD steps with lr = 1:

- fp32: 1e-5 on loss, embedding gradient and centre update (the CPU measures ≤ 2e-6);
- bf16 GEMM (autocast around the layer): 3e-2 — bf16 keeps 8 significant bits of both GEMM
  operands (2^-9 ≈ 2e-3 per rounding) and the logit scale s = 64 amplifies the cosine errors; the
  CPU measures ≤ 1.5e-2;
- bf16 centres + momentum: first step loss and embedding gradient 1e-5 (bf16 centres convert to
  fp32 exactly) and every updated centre within one bf16 spacing of the float64 value (what
  stochastic rounding guarantees); second step 1e-2 (the centres are now rounded; CPU ≤ 4e-3).
  The update itself carries the rounding noise, ~ one spacing against an update of ~10 spacings:
  0.25 (CPU ≤ 0.15), which still fails a lost update (error 1).

Sampling (r < 1) is checked against the reference restricted to the sampled rows, which the
layer reports in ``last_sampled_rows``; unsampled rows must not move at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from partial_fc.reference import HEADS, batch, make_head, reference_loss, relative_error

from partialfc import LabelRangeError, LazySGD, PartialFC

NUM_CLASSES, DIM, BATCH, STEPS = 517, 64, 48, 2
# Centres of norm ~4 (init_std 0.5) and lr 1: each step moves a centre by ~5-10% of its norm, far
# above fp32 and bf16 resolution, so a wrong or lost update cannot hide in rounding.
SGD = dict(lr=1.0, momentum=0.9, weight_decay=5e-4)
INIT_STD = 0.5
HEAD_NAMES = [spec[0] for spec in HEADS]


@dataclass(frozen=True)
class Mode:
    gemm_dtype: torch.dtype | None  # autocast dtype around the layer (None: fp32)
    param_dtype: torch.dtype  # storage of centres and momentum
    first_step: float  # loss and embedding gradient, step 0
    later_steps: float  # loss and embedding gradient, later steps
    update: float  # the centre update, every step
    within_bf16_spacing: bool = False  # step 0: every centre within one bf16 spacing of the reference


MODES = {
    "fp32": Mode(None, torch.float32, 1e-5, 1e-5, 1e-5),
    "bf16_gemm": Mode(torch.bfloat16, torch.float32, 3e-2, 3e-2, 3e-2),
    "bf16_centres": Mode(None, torch.bfloat16, 1e-5, 1e-2, 0.25, within_bf16_spacing=True),
}


def bf16_spacing(values: torch.Tensor) -> torch.Tensor:
    """Distance between consecutive bfloat16 numbers at each value's magnitude (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(values.abs().clamp_min(1e-30))) - 7)


def train_on_device(device: str, spec: tuple, mode: str, sample_rate: float) -> dict:
    """Initial centres, and per step the loss, embedding gradient, sampled rows and centres after it."""
    gemm_dtype = MODES[mode].gemm_dtype
    pfc = PartialFC(
        DIM,
        NUM_CLASSES,
        sample_rate,
        make_head(spec),
        optimizer=LazySGD(**SGD),
        seed=7,
        init_std=INIT_STD,
        param_dtype=MODES[mode].param_dtype,
        device=device,
    )
    record = {"init": pfc.weight.detach().double().cpu(), "steps": []}
    for step in range(STEPS):
        embeddings, labels = batch(step, BATCH, DIM, NUM_CLASSES)
        x = embeddings.float().to(device).requires_grad_()
        autocast = torch.autocast(
            torch.device(device).type, dtype=gemm_dtype or torch.float32, enabled=gemm_dtype is not None
        )
        with autocast:
            loss = pfc(x, labels.to(device))
        loss.backward()
        rows = pfc.last_sampled_rows.cpu()
        pfc.step()
        record["steps"].append(
            {
                "loss": loss.detach().cpu(),
                "embedding_grad": x.grad.cpu(),
                "rows": rows,
                "weight": pfc.weight.detach().double().cpu(),
            }
        )
    return record


def reference_steps(spec: tuple, init: torch.Tensor, rows_per_step: list[torch.Tensor]) -> list[dict]:
    """Float64 training restricted to each step's sampled rows, with lazy SGD written out:
    ``buf = momentum·buf + g + wd·w; w -= lr·buf`` on those rows only (momentum starts at 0)."""
    weight, momentum = init.clone(), torch.zeros_like(init)
    steps = []
    for step, rows in enumerate(rows_per_step):
        embeddings, labels = batch(step, BATCH, DIM, NUM_CLASSES)
        columns = torch.searchsorted(rows, labels).clamp_(max=rows.numel() - 1)
        assert torch.equal(rows[columns], labels), f"step {step}: a positive class was not sampled"
        embeddings.requires_grad_()
        sampled = weight[rows].requires_grad_()
        loss = reference_loss(spec, embeddings, sampled, columns)
        grad_embeddings, grad_sampled = torch.autograd.grad(loss, (embeddings, sampled))
        momentum[rows] = SGD["momentum"] * momentum[rows] + grad_sampled + SGD["weight_decay"] * weight[rows]
        weight = weight.clone()
        weight[rows] -= SGD["lr"] * momentum[rows]
        steps.append({"loss": loss.detach(), "embedding_grad": grad_embeddings, "weight": weight.clone()})
    return steps


def check_against_reference(device: str, head: str, mode: str, sample_rate: float) -> None:
    spec = next(s for s in HEADS if s[0] == head)
    ours = train_on_device(device, spec, mode, sample_rate)
    expected = reference_steps(spec, ours["init"], [step["rows"] for step in ours["steps"]])
    tolerance = MODES[mode]
    before = ours["init"]
    for step, (got, want) in enumerate(zip(ours["steps"], expected)):
        where = f"{head} {mode} r={sample_rate} on {device}, step {step}"
        bound = tolerance.first_step if step == 0 else tolerance.later_steps
        assert relative_error(got["loss"], want["loss"]) < bound, where
        assert relative_error(got["embedding_grad"], want["embedding_grad"]) < bound, where
        # The update, not the centres: an update lost in the centres' magnitude would still pass.
        assert relative_error(got["weight"] - before, want["weight"] - before) < tolerance.update, where
        if step == 0 and tolerance.within_bf16_spacing:
            # Stochastic rounding picks a bf16 neighbour of the fp32 value: within one spacing of the
            # exact value, give or take fp32's own error (the 1e-3 slack) when a neighbour is crossed.
            distance = (got["weight"] - want["weight"]).abs()
            spacing = bf16_spacing(torch.maximum(got["weight"].abs(), want["weight"].abs()))
            assert bool((distance <= spacing * (1 + 1e-3)).all()), f"{where}: centres off by > 1 bf16 spacing"
        unsampled = torch.ones(NUM_CLASSES, dtype=torch.bool)
        unsampled[got["rows"]] = False
        assert torch.equal(got["weight"][unsampled], before[unsampled]), f"{where}: unsampled centres moved"
        before = got["weight"]


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_fp32_matches_float64_reference(device, head):
    check_against_reference(device, head, "fp32", 1.0)


@pytest.mark.parametrize("mode", ["bf16_gemm", "bf16_centres"])
@pytest.mark.parametrize("head", ["arcface", "combined"])
def test_bf16_within_tolerance(device, head, mode):
    check_against_reference(device, head, mode, 1.0)


@pytest.mark.parametrize("mode", list(MODES))
def test_sampled_rows_match_reference(device, mode):
    check_against_reference(device, "arcface", mode, 0.3)


def test_out_of_range_labels_raise(device):
    """On the CPU at the forward pass; on CUDA at ``step()``, so the forward pass needs no host sync."""
    pfc = PartialFC(8, 10, device=device)
    embeddings = torch.randn(4, 8, device=device, requires_grad=True)
    labels = torch.tensor([1, 10, -3, 2], device=device)
    message = r"2 label\(s\) of the global batch are outside \[0, 10\): bad values range from -3 to 10"
    if device == "cpu":
        with pytest.raises(LabelRangeError, match=message):
            pfc(embeddings, labels)
        return
    pfc(embeddings, labels).backward()
    with pytest.raises(LabelRangeError, match=message):
        pfc.step()


@pytest.mark.gpu
def test_cuda_forward_and_backward_make_no_host_sync():
    """The training step's promise on GPU: no host sync in forward and backward (sampling included,
    when the global batch fits in the sample; the label check waits until ``step()``)."""
    pfc = PartialFC(DIM, 10_000, 0.1, device="cuda")
    embeddings = torch.randn(BATCH, DIM, device="cuda", requires_grad=True)
    labels = torch.randint(0, 10_000, (BATCH,), device="cuda")
    pfc(embeddings, labels).backward()  # first step: buffers and generators are created
    pfc.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pfc(embeddings, labels).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    pfc.step()
