"""Lazy centre optimizers against torch.optim, row sparsity, bf16 storage and rounding."""

from __future__ import annotations

import pytest
import torch

from partialfc import LazyAdamW, LazySGD
from partialfc.core.centre_optim import store_rows

ROWS, DIM = 12, 5


def grads(steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(ROWS, DIM, generator=generator) for _ in range(steps)]


@pytest.mark.parametrize(
    "lazy, dense",
    [
        (
            LazySGD(lr=0.1, momentum=0.9, weight_decay=5e-4),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        ),
        (
            LazySGD(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
        ),
        (LazySGD(lr=0.05, momentum=0.0, weight_decay=0.0), lambda p: torch.optim.SGD(p, lr=0.05)),
        (LazyAdamW(lr=0.01, weight_decay=0.05), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05)),
    ],
)
@pytest.mark.parametrize("indexed", [False, True])
def test_every_row_updated_equals_torch_optim(lazy, dense, indexed):
    init = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(1))
    weight, reference = init.clone(), init.clone().requires_grad_()
    state = lazy.init_state(weight)
    optimizer = dense([reference])
    rows = torch.arange(ROWS) if indexed else slice(0, ROWS)
    for grad in grads(4):
        values = weight.clone() if indexed else weight
        lazy.update(weight, state, rows, values, grad.clone())
        reference.grad = grad.clone()
        optimizer.step()
        torch.testing.assert_close(weight, reference.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lazy", [LazySGD(), LazyAdamW()])
def test_only_given_rows_and_their_state_change(lazy):
    weight = torch.randn(ROWS, DIM)
    state = lazy.init_state(weight)
    rows = torch.tensor([1, 4, 7])
    before = weight.clone(), {k: v.clone() for k, v in state.items()}
    lazy.update(weight, state, rows, weight[rows].clone(), torch.randn(3, DIM))
    untouched = torch.ones(ROWS, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(weight[untouched], before[0][untouched])
    assert not torch.equal(weight[rows], before[0][rows])
    for name, tensor in state.items():
        assert torch.equal(tensor[untouched], before[1][name][untouched]), name
        assert not torch.equal(tensor[rows], before[1][name][rows]), name


def test_adamw_bias_correction_counts_each_rows_own_updates():
    lazy = LazyAdamW(lr=0.1, weight_decay=0.0)
    weight = torch.zeros(3, DIM)
    state = lazy.init_state(weight)
    lazy.update(weight, state, torch.tensor([0]), weight[[0]].clone(), torch.ones(1, DIM))
    lazy.update(weight, state, torch.tensor([0, 1]), weight[[0, 1]].clone(), torch.ones(2, DIM))
    assert state["row_step"].tolist() == [2.0, 1.0, 0.0]
    # A row's first update moves it by lr·sign(grad) exactly, whenever it happens.
    torch.testing.assert_close(weight[1], torch.full((DIM,), -0.1))


def test_bf16_stochastic_rounding_is_unbiased():
    target = torch.full((20000, 1), 1.0 + 1e-3)  # bf16 spacing at 1.0 is 2**-7 ≈ 7.8e-3
    storage = torch.zeros(20000, 1, dtype=torch.bfloat16)
    store_rows(storage, slice(None), target.clone(), torch.Generator().manual_seed(0))
    assert set(storage.float().unique().tolist()) == {1.0, 1.0078125}
    assert storage.float().mean().item() == pytest.approx(1.001, abs=2e-4)
    nearest = target.to(torch.bfloat16).float().mean().item()
    assert nearest == 1.0  # round-to-nearest would lose the update entirely
