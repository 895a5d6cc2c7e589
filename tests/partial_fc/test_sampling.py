"""Negative-centre sampling: positives kept, sizes, per-rank streams, lazy (bit-identical) updates."""

from __future__ import annotations

import math

import pytest
import torch
from dist_harness import run_distributed

from partialfc import CombinedMargin, LazyAdamW, LazySGD, PartialFC

NUM_CLASSES, DIM, LOCAL_BATCH = 1001, 8, 6


def sample_two_steps(rank: int, world_size: int, seed: int, sample_rate: float, optimizer_name: str) -> dict:
    optimizer = LazySGD(lr=0.1, momentum=0.9, weight_decay=5e-4) if optimizer_name == "sgd" else LazyAdamW(lr=0.01)
    pfc = PartialFC(DIM, NUM_CLASSES, sample_rate, CombinedMargin(), optimizer=optimizer, seed=seed)
    generator = torch.Generator().manual_seed(rank)
    out = {"class_start": pfc.class_start, "num_local": pfc.num_local, "steps": []}
    for _ in range(2):
        labels = torch.randint(0, NUM_CLASSES, (LOCAL_BATCH,), generator=generator)
        embeddings = torch.randn(LOCAL_BATCH, DIM, generator=generator, requires_grad=True)
        before = {k: v.clone() for k, v in pfc.state_dict().items() if isinstance(v, torch.Tensor)}
        pfc(embeddings, labels).backward()
        rows = pfc.last_sampled_rows.clone()
        pfc.step()
        after = {k: v.clone() for k, v in pfc.state_dict().items() if isinstance(v, torch.Tensor)}
        global_labels = torch.empty(LOCAL_BATCH * world_size, dtype=torch.int64)
        torch.distributed.all_gather_into_tensor(global_labels, labels)
        out["steps"].append({"rows": rows, "labels": global_labels, "before": before, "after": after})
    return out


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    return {
        "a": run_distributed(sample_two_steps, 2, 0, 0.1, "sgd"),
        "a_again": run_distributed(sample_two_steps, 2, 0, 0.1, "sgd"),
        "other_seed": run_distributed(sample_two_steps, 2, 1, 0.1, "sgd"),
        "adamw": run_distributed(sample_two_steps, 2, 0, 0.1, "adamw"),
    }


def test_positives_kept_and_sample_size(two_ranks):
    for rank_result in two_ranks["a"]:
        start, num_local = rank_result["class_start"], rank_result["num_local"]
        for step in rank_result["steps"]:
            rows = step["rows"]
            assert rows.numel() == math.ceil(0.1 * num_local)
            assert torch.equal(rows, rows.unique()), "sampled rows must be sorted and distinct"
            local = step["labels"] - start
            positives = local[(local >= 0) & (local < num_local)]
            assert positives.numel() > 0
            assert torch.isin(positives, rows).all()


def test_streams_differ_by_rank_and_step_and_repeat_by_seed(two_ranks):
    first, again, other = two_ranks["a"], two_ranks["a_again"], two_ranks["other_seed"]
    for rank in range(2):
        for step in range(2):
            assert torch.equal(first[rank]["steps"][step]["rows"], again[rank]["steps"][step]["rows"])
            assert not torch.equal(first[rank]["steps"][step]["rows"], other[rank]["steps"][step]["rows"])
        assert not torch.equal(first[rank]["steps"][0]["rows"], first[rank]["steps"][1]["rows"])
    # Same number of rows on both ranks (1001 = 501 + 500 gives 51 and 50): compare the negatives.
    assert not torch.equal(first[0]["steps"][0]["rows"][:50], first[1]["steps"][0]["rows"][:50])


@pytest.mark.parametrize("run", ["a", "adamw"])
def test_unsampled_rows_and_optimizer_state_bit_identical(two_ranks, run):
    for rank_result in two_ranks[run]:
        for step in rank_result["steps"]:
            untouched = torch.ones(rank_result["num_local"], dtype=torch.bool)
            untouched[step["rows"]] = False
            for key, before in step["before"].items():
                after = step["after"][key]
                assert torch.equal(after[untouched], before[untouched]), key
                assert not torch.equal(after[~untouched], before[~untouched]), f"{key} of sampled rows must change"


def test_large_batch_keeps_all_positives_beyond_sample_size():
    pfc = PartialFC(4, 100, 0.05, CombinedMargin(), seed=3)  # 5 sampled centres
    labels = torch.arange(0, 40, 2)  # 20 distinct positives
    pfc(torch.randn(20, 4, requires_grad=True), labels).backward()
    assert torch.equal(pfc.last_sampled_rows, labels)
    pfc.step()


def test_full_rate_uses_every_row_without_index():
    pfc = PartialFC(4, 10, 1.0, CombinedMargin())
    pfc(torch.randn(3, 4, requires_grad=True), torch.tensor([1, 2, 3])).backward()
    assert torch.equal(pfc.last_sampled_rows, torch.arange(10))
    assert pfc._pending[0].rows is None  # the dense path skips the gather and index updates
    pfc.step()


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_a_scheduled_sample_rate_samples_as_many_rows_as_the_constructor(rate):
    """Planted bug: set_sample_rate rounding the sample size down (int) where the constructor rounds up (ceil)."""
    expected = math.ceil(rate * NUM_CLASSES)  # 100.1 -> 101, 500.5 -> 501: never a whole number here
    scheduled = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin())
    scheduled.set_sample_rate(rate)
    built = PartialFC(DIM, NUM_CLASSES, rate, CombinedMargin())
    for pfc in (scheduled, built):
        pfc(torch.randn(2, DIM, requires_grad=True), torch.tensor([3, 700])).backward()
        assert pfc.num_sample == expected and pfc.last_sampled_rows.numel() == expected


def positives_alone(rank: int, world_size: int) -> list[dict]:
    """Two steps at sample_rate 0: a batch with positives on every rank, then one with none on the last."""
    pfc = PartialFC(DIM, NUM_CLASSES, 0.0, CombinedMargin(), seed=2)
    steps = []
    for batch_labels in (torch.tensor([[7, 7, 990], [500, 3, 600]]), torch.tensor([[5, 9, 5], [1, 2, 3]])):
        labels = batch_labels[:world_size].view(-1)
        local = labels.view(world_size, -1)[rank]
        embeddings = torch.randn(local.numel(), DIM, generator=torch.Generator().manual_seed(rank), requires_grad=True)
        before = pfc.weight.detach().clone()
        loss = pfc(embeddings, local)
        loss.backward()
        rows = pfc.last_sampled_rows.clone()
        pfc.step()
        steps.append(
            {
                "rows": rows,
                "labels": labels,
                "loss": loss.detach(),
                "class_start": pfc.class_start,
                "num_local": pfc.num_local,
                "moved": (pfc.weight != before).any(dim=1).nonzero().squeeze(1),
            }
        )
    return steps


@pytest.mark.parametrize("world_size", [1, 2])
def test_rate_zero_samples_exactly_the_positives(world_size):
    """insightface recognition/arcface_torch partial_fc_v2.py sample(): fewer sampled than positives
    leaves the positives alone. A rank with none samples nothing, moves nothing, and still takes part."""
    ranks = [positives_alone(0, 1)] if world_size == 1 else run_distributed(positives_alone, world_size)
    for rank, steps in enumerate(ranks):
        for number, step in enumerate(steps):
            local = step["labels"] - step["class_start"]
            positives = local[(local >= 0) & (local < step["num_local"])].unique(sorted=True)
            assert torch.equal(step["rows"], positives), f"rank {rank} step {number}"
            assert torch.equal(step["moved"], positives), f"rank {rank} step {number}: only sampled rows move"
            assert torch.isfinite(step["loss"]) and torch.equal(step["loss"], ranks[0][number]["loss"])
    if world_size == 2:
        assert ranks[1][0]["rows"].numel() == 2 and ranks[1][1]["rows"].numel() == 0  # the second batch: none


def test_rate_zero_is_a_sample_rate_of_the_config_and_of_its_schedule():
    """0 is the same rule wherever a rate is given: a schedule may enter or leave positives-only sampling."""
    from partialfc.common.options import ConfigError
    from partialfc.config import load_config

    config = load_config(None, {"loss.sample_rate": 0.0, "loss.sample_rate_schedule": ["0.5:1.0", "0.9:0"]})
    assert [config.loss.sample_rates.rate(step, 10) for step in (0, 5, 9)] == [0.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match=r"loss.sample_rate=-0.1 must be in \[0, 1\]"):
        load_config(None, {"loss.sample_rate": -0.1})
    with pytest.raises(ConfigError, match=r"entry '0.5:-0.1' needs FRACTION in \[0, 1\) and RATE in \[0, 1\]"):
        load_config(None, {"loss.sample_rate_schedule": ["0.5:-0.1"]})
    scheduled = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin())
    scheduled.set_sample_rate(0.0)
    scheduled(torch.randn(2, DIM, requires_grad=True), torch.tensor([700, 3])).backward()
    assert torch.equal(scheduled.last_sampled_rows, torch.tensor([3, 700]))
