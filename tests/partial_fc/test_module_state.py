"""PartialFC state: checkpoints, gradient accumulation, bf16 storage and GEMM, misuse errors."""

from __future__ import annotations

import pytest
import torch
from reference import relative_error

from partialfc import CombinedMargin, LazyAdamW, LazySGD, PartialFC

DIM, NUM_CLASSES = 8, 40


def step(pfc: PartialFC, seed: int, batch: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, DIM, generator=generator, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    loss = pfc(embeddings, labels)
    loss.backward()
    pfc.step()
    return loss.detach()


@pytest.mark.parametrize("optimizer", [LazySGD(), LazyAdamW()])
def test_state_dict_resumes_identically(optimizer):
    pfc = PartialFC(DIM, NUM_CLASSES, 0.3, CombinedMargin(), optimizer=optimizer, seed=2)
    for seed in range(3):
        step(pfc, seed)
    state = pfc.state_dict()
    assert {"weight", "_extra_state"} < set(state) and any(k.startswith("optim_") for k in state)
    resumed = PartialFC(DIM, NUM_CLASSES, 0.3, CombinedMargin(), optimizer=optimizer, seed=2)
    resumed.load_state_dict(state)
    assert resumed.step_count == 3
    assert torch.equal(step(pfc, 10), step(resumed, 10))  # same sampled rows, same update
    assert torch.equal(pfc.weight, resumed.weight)


def test_loading_another_shard_is_refused_with_ranges():
    state = PartialFC(DIM, NUM_CLASSES).state_dict()
    with pytest.raises(ValueError, match=r"classes \[0, 40\) of 40.*\[0, 41\) of 41"):
        PartialFC(DIM, NUM_CLASSES + 1).load_state_dict(state)


def test_gradient_accumulation_equals_one_large_batch():
    whole = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin(), seed=4)
    halves = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin(), seed=4)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(8, DIM, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (8,), generator=generator)
    whole(embeddings, labels).backward()
    whole.step()
    for part in (slice(0, 4), slice(4, 8)):
        (halves(embeddings[part], labels[part]) / 2).backward()
    halves.step()
    assert relative_error(halves.weight, whole.weight) < 1e-6


def test_accumulation_with_sampling_updates_the_union_of_sampled_rows():
    pfc = PartialFC(DIM, 1000, 0.01, CombinedMargin(), seed=4)
    before = pfc.weight.clone()
    sampled = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        pfc(torch.randn(4, DIM, generator=generator), torch.randint(0, 1000, (4,), generator=generator)).backward()
        sampled.append(pfc.last_sampled_rows)
    assert not torch.equal(sampled[0], sampled[1])
    pfc.step()
    changed = (pfc.weight != before).any(dim=1).nonzero().squeeze(1)
    assert torch.equal(changed, torch.cat(sampled).unique())


def test_bf16_centres_and_state_train():
    pfc = PartialFC(DIM, NUM_CLASSES, 0.5, CombinedMargin(), param_dtype=torch.bfloat16)
    assert pfc.weight.dtype == torch.bfloat16 and pfc.optim_momentum.dtype == torch.bfloat16
    before = pfc.weight.clone()
    losses = [step(pfc, 0) for _ in range(5)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert not torch.equal(before, pfc.weight)


def test_bf16_gemm_under_autocast_is_close_to_fp32():
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin(), init_std=1.0)
    embeddings = torch.randn(6, DIM, requires_grad=True)
    labels = torch.arange(6)
    loss32 = pfc(embeddings, labels)
    loss32.backward()
    grad32, centre32 = embeddings.grad.clone(), pfc._pending[0].grad.clone()
    embeddings.grad = None
    pfc._pending.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = pfc(embeddings, labels)
    loss16.backward()
    assert loss16.dtype == torch.float32
    assert relative_error(loss16, loss32) < 2e-2
    assert relative_error(embeddings.grad, grad32) < 5e-2
    assert relative_error(pfc._pending[0].grad, centre32) < 5e-2


def test_step_without_backward_is_an_error():
    pfc = PartialFC(DIM, NUM_CLASSES)
    with pytest.raises(RuntimeError, match="without a forward"):
        pfc.step()
    pfc(torch.randn(2, DIM), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="missing backward"):
        pfc.step()


def test_no_grad_forward_leaves_no_pending_update():
    pfc = PartialFC(DIM, NUM_CLASSES)
    with torch.no_grad():
        loss = pfc(torch.randn(2, DIM), torch.tensor([0, 1]))
    assert torch.isfinite(loss) and not pfc._pending


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sample_rate=-0.1), r"sample_rate must be in \[0, 1\]"),
        (dict(sample_rate=1.5), r"sample_rate must be in \[0, 1\]"),
        (dict(param_dtype=torch.float16), "param_dtype"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PartialFC(DIM, NUM_CLASSES, **kwargs)


def test_input_shape_validation():
    pfc = PartialFC(DIM, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        pfc(torch.randn(2, DIM + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        pfc(torch.randn(2, DIM), torch.tensor([0, 1, 2]))


def test_skip_step_moves_on_to_the_next_sampling_stream():
    """A skipped step (fp16 overflow) must not make the next step resample the same rows."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(4, DIM, generator=generator)
    labels = torch.randint(0, 1000, (4,), generator=generator)
    skipped = PartialFC(DIM, 1000, 0.01, CombinedMargin(), seed=4)
    stepped = PartialFC(DIM, 1000, 0.01, CombinedMargin(), seed=4)
    for pfc in (skipped, stepped):
        pfc(embeddings, labels).backward()
    first_rows = skipped.last_sampled_rows.clone()
    before = skipped.weight.clone()
    skipped.skip_step()
    stepped.step()
    assert torch.equal(skipped.weight, before)
    for pfc in (skipped, stepped):
        pfc(embeddings, labels).backward()
    assert not torch.equal(skipped.last_sampled_rows, first_rows)
    assert torch.equal(skipped.last_sampled_rows, stepped.last_sampled_rows)


def test_accumulated_micro_batches_sharing_rows_add_their_gradients():
    """Micro-batches with the same labels share their positive rows: their gradients must add."""
    plain_sgd = LazySGD(lr=1.0, momentum=0.0, weight_decay=0.0)
    pfc = PartialFC(DIM, 1000, 0.01, CombinedMargin(), optimizer=plain_sgd, seed=4)
    before = pfc.weight.clone()
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 1000, (4,), generator=generator)
    expected_delta = torch.zeros_like(before)
    sampled = []
    for _ in range(2):
        pfc(torch.randn(4, DIM, generator=generator), labels).backward()
        rows = pfc.last_sampled_rows.clone()
        expected_delta.index_add_(0, rows, -pfc._pending[-1].grad)
        sampled.append(rows)
    shared = sampled[0][torch.isin(sampled[0], sampled[1])]
    assert torch.isin(labels, shared).all() and not torch.equal(sampled[0], sampled[1])
    pfc.step()
    torch.testing.assert_close(pfc.weight - before, expected_delta, rtol=1e-5, atol=1e-7)
