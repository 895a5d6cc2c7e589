"""Communication per step, label validation across ranks, and the DDP gradient convention."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_harness import run_distributed
from reference import relative_error
from torch import nn

from partialfc import CombinedMargin, LabelRangeError, PartialFC
from partialfc.config import LossConfig

DIM, LOCAL_BATCH, NUM_CLASSES = 8, 4, 50
ALL_GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
REDUCE_SCATTER = "reduce_scatter_single" if hasattr(dist, "reduce_scatter_single") else "reduce_scatter_tensor"
TRACED = [
    "all_gather_into_tensor",
    "all_gather_single",
    "all_gather",
    "all_reduce",
    "reduce_scatter_tensor",
    "reduce_scatter_single",
    "reduce_scatter",
    "broadcast",
    "all_to_all_single",
    "barrier",
    "send",
    "recv",
]


def trace_one_step(rank: int, world_size: int, sample_rate: float, family: str = "combined") -> list[tuple]:
    pfc = PartialFC(DIM, NUM_CLASSES, sample_rate, LossConfig(family=family).build_margin())
    calls: list[tuple] = []
    originals = {name: getattr(dist, name) for name in TRACED}

    def recorder(name):
        def record(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            calls.append(
                (
                    name,
                    tuple(tensors[0].shape) if tensors else None,
                    str(kwargs.get("op", "")),
                    tensors[-1].dtype if tensors else None,
                )
            )
            return originals[name](*args, **kwargs)

        return record

    for name in TRACED:
        setattr(dist, name, recorder(name))
    try:
        embeddings = torch.randn(LOCAL_BATCH, DIM, requires_grad=True)
        labels = torch.randint(0, NUM_CLASSES, (LOCAL_BATCH,))
        pfc(embeddings, labels).backward()
        pfc.step()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return calls


def expected_calls(n: int) -> list[tuple]:
    return [
        (ALL_GATHER, (n,), "", torch.int64),  # labels
        (ALL_GATHER, (n, DIM), "", torch.float32),  # embeddings
        ("all_reduce", (n,), str(dist.ReduceOp.MAX), torch.float32),  # row max
        ("all_reduce", (n,), str(dist.ReduceOp.SUM), torch.float32),  # sum of exp
        ("all_reduce", (n,), str(dist.ReduceOp.SUM), torch.float32),  # target logit
        (REDUCE_SCATTER, (LOCAL_BATCH, DIM), str(dist.ReduceOp.SUM), torch.float32),
    ]


TRACED_CASES = [
    (1.0, "combined"),
    (0.2, "combined"),
    (0.2, "adaface"),
    (0.2, "magface"),
    (0.2, "elasticface"),
    (0.2, "curricularface"),
]


def trace_cases(rank: int, world_size: int) -> dict:
    return {case: trace_one_step(rank, world_size, *case) for case in TRACED_CASES}


@pytest.fixture(scope="module")
def traced_two_ranks() -> list[dict]:
    return run_distributed(trace_cases, 2)


@pytest.mark.parametrize("sample_rate", [1.0, 0.2])
def test_exact_collectives_of_one_step(traced_two_ranks, sample_rate):
    for rank_calls in traced_two_ranks:
        calls = rank_calls[(sample_rate, "combined")]
        assert sorted(calls, key=str) == sorted(expected_calls(LOCAL_BATCH * 2), key=str)


@pytest.mark.parametrize("margin", ["adaface", "magface", "elasticface", "curricularface"])
def test_margin_families_add_only_curricularfaces_target_cosines(traced_two_ranks, margin):
    """Norms, random margins and running statistics come from the gathered batch: no collective.
    CurricularFace needs every sample's target cosine on every rank: one N-float SUM."""
    n = LOCAL_BATCH * 2
    extra = [("all_reduce", (n,), str(dist.ReduceOp.SUM), torch.float32)] if margin == "curricularface" else []
    for rank_calls in traced_two_ranks:
        assert sorted(rank_calls[(0.2, margin)], key=str) == sorted(expected_calls(n) + extra, key=str)


def bad_label_on_rank1(rank: int, world_size: int) -> str:
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin())
    labels = torch.tensor([0, 1, 2, NUM_CLASSES + 7 if rank == 1 else 3])
    try:
        pfc(torch.randn(LOCAL_BATCH, DIM), labels)
    except LabelRangeError as error:
        return str(error)
    return "no error"


def test_out_of_range_label_raises_on_every_rank():
    messages = run_distributed(bad_label_on_rank1, 2)
    for message in messages:
        assert f"outside [0, {NUM_CLASSES})" in message and str(NUM_CLASSES + 7) in message, message


def test_negative_label_raises_single_process():
    pfc = PartialFC(DIM, NUM_CLASSES, 0.5, CombinedMargin())
    with pytest.raises(LabelRangeError, match="-1"):
        pfc(torch.randn(2, DIM), torch.tensor([-1, 3]))


def ddp_backbone_grad(rank: int, world_size: int, global_inputs, global_labels) -> torch.Tensor:
    torch.manual_seed(0)
    backbone = nn.parallel.DistributedDataParallel(nn.Linear(6, DIM))
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin(), seed=5)
    local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    pfc(backbone(global_inputs[local]), global_labels[local]).backward()
    return backbone.module.weight.grad


def test_ddp_backbone_gradient_equals_single_process_global_batch():
    world_size = 3
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(LOCAL_BATCH * world_size, 6, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (LOCAL_BATCH * world_size,), generator=generator)
    torch.manual_seed(0)
    backbone = nn.Linear(6, DIM)
    PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin(), seed=5)(backbone(inputs), labels).backward()
    for grad in run_distributed(ddp_backbone_grad, world_size, inputs, labels):
        assert relative_error(grad, backbone.weight.grad) < 1e-5


def test_deferred_check_keeps_an_earlier_micro_batch():
    """The GPU path records every micro-batch and checks at step(): a later good micro-batch must
    not hide an earlier bad one."""
    from partialfc.core.buffers import DeferredLabelCheck

    check = DeferredLabelCheck(NUM_CLASSES)
    check.record(torch.tensor([1, NUM_CLASSES + 3]))
    with pytest.raises(LabelRangeError, match=str(NUM_CLASSES + 3)):
        check.record(torch.tensor([1, 2]))
    check.record(torch.tensor([1, 2]))
    check.raise_if_bad()  # good labels: nothing pending to report
