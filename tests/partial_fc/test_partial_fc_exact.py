"""r = 1.0 Partial FC on W gloo ranks equals dense single-process float64 training."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_distributed
from reference import HEADS, batch, make_head, reference_loss, relative_error

from partialfc import LazySGD, PartialFC

NUM_CLASSES, DIM, LOCAL_BATCH, STEPS = 23, 16, 5, 2  # 23 is not divisible by 2, 3 or 4
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
# Centres of norm ~2 keep the first SGD step small relative to the centres. With the default 0.01
# the first step moves them ~250x their norm, and the second step's comparison would measure
# fp32 conditioning, not correctness.
INIT_STD = 0.5


def train_shards(rank: int, world_size: int) -> dict:
    """Per head: initial shard, and per step the loss, embedding grad, centre grad, updated shard."""
    results = {}
    for spec in HEADS:
        pfc = PartialFC(DIM, NUM_CLASSES, 1.0, make_head(spec), optimizer=LazySGD(**SGD), seed=7, init_std=INIT_STD)
        record = {"class_start": pfc.class_start, "init": pfc.weight.detach().clone(), "steps": []}
        for step in range(STEPS):
            embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
            local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            local_embeddings = embeddings[local].float().requires_grad_()
            loss = pfc(local_embeddings, labels[local])
            loss.backward()
            centre_grad = pfc._pending[0].grad.clone()
            pfc.step()
            record["steps"].append(
                {
                    "loss": loss.detach(),
                    # The module returns W·∂L/∂x (the DDP convention); the true gradient is /W.
                    "embedding_grad": local_embeddings.grad / world_size,
                    "centre_grad": centre_grad,
                    "weight": pfc.weight.detach().clone(),
                }
            )
        results[spec[0]] = record
    return results


def reference_run(spec, init_weight: torch.Tensor, world_size: int) -> list[dict]:
    weight = init_weight.double().clone().requires_grad_()
    optimizer = torch.optim.SGD([weight], **SGD)
    steps = []
    for step in range(STEPS):
        embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
        embeddings.requires_grad_()
        optimizer.zero_grad()
        loss = reference_loss(spec, embeddings, weight, labels)
        loss.backward()
        steps.append({"loss": loss.detach(), "embedding_grad": embeddings.grad, "centre_grad": weight.grad.clone()})
        optimizer.step()
        steps[-1]["weight"] = weight.detach().clone()
    return steps


@pytest.fixture(scope="module")
def shards_by_world_size() -> dict[int, list[dict]]:
    return {1: [train_shards(0, 1)], **{w: run_distributed(train_shards, w) for w in (2, 3, 4)}}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("head", [spec[0] for spec in HEADS])
def test_matches_dense_float64_reference(shards_by_world_size, world_size, head):
    spec = next(s for s in HEADS if s[0] == head)
    ranks = shards_by_world_size[world_size]
    init = torch.cat([r[head]["init"] for r in ranks])
    assert init.shape == (NUM_CLASSES, DIM)
    expected = reference_run(spec, init, world_size)
    for rank, result in enumerate(ranks):
        record = result[head]
        rows = slice(record["class_start"], record["class_start"] + record["init"].shape[0])
        samples = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for step, (ours, ref) in enumerate(zip(record["steps"], expected)):
            where = f"{head} W={world_size} rank={rank} step={step}"
            assert relative_error(ours["loss"], ref["loss"]) < 1e-5, where
            assert relative_error(ours["embedding_grad"], ref["embedding_grad"][samples]) < 1e-5, where
            assert relative_error(ours["centre_grad"], ref["centre_grad"][rows]) < 1e-5, where
            assert relative_error(ours["weight"], ref["weight"][rows]) < 1e-5, where


def test_initialisation_does_not_depend_on_world_size(shards_by_world_size):
    full = {w: torch.cat([r["arcface"]["init"] for r in ranks]) for w, ranks in shards_by_world_size.items()}
    for world_size in (2, 3, 4):
        assert torch.equal(full[world_size], full[1]), f"W={world_size}"
    assert not torch.equal(full[1][0], full[1][1])  # rows differ from each other


def test_loss_identical_on_every_rank(shards_by_world_size):
    for world_size, ranks in shards_by_world_size.items():
        losses = [r["combined"]["steps"][0]["loss"] for r in ranks]
        assert all(torch.equal(loss, losses[0]) for loss in losses), world_size
