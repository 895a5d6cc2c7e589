"""r = 1.0 Partial FC on W gloo ranks equals dense single-process float64 training, for every
margin family against an independent reference of its official definition: loss, embedding
gradient, centre gradient, updated centres and running margin state, over two steps."""

from __future__ import annotations

import copy

import pytest
import torch
from dist_harness import run_distributed
from reference import CASES, batch, record_sample_inputs, relative_error, spread_norms

from partialfc import LazySGD, PartialFC

NUM_CLASSES, DIM, LOCAL_BATCH, STEPS = 23, 16, 5, 2  # 23 is not divisible by 2, 3 or 4
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
# Centres of norm ~2 keep the first SGD step small relative to the centres. With the default 0.01
# the first step moves them ~250x their norm, and the second step's comparison would measure
# fp32 conditioning, not correctness.
INIT_STD = 0.5


def global_batch(name: str, step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
    return (spread_norms(embeddings, step) if CASES[name].spread_norms else embeddings), labels


def train_shards(rank: int, world_size: int) -> dict:
    """Per margin: initial shard, and per step loss, gradients, updated shard, margin state and inputs."""
    results = {}
    for name, case in CASES.items():
        pfc = PartialFC(DIM, NUM_CLASSES, 1.0, case.make_margin(), optimizer=LazySGD(**SGD), seed=7, init_std=INIT_STD)
        record = {"class_start": pfc.class_start, "init": pfc.weight.detach().clone(), "steps": []}
        drawn = record_sample_inputs(pfc)
        for step in range(STEPS):
            embeddings, labels = global_batch(name, step, world_size)
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
                    "margin_state": pfc.state_dict()["_extra_state"]["margin"],
                    "sample_inputs": drawn[-1],
                }
            )
        results[name] = record
    return results


def reference_run(name: str, init_weight: torch.Tensor, world_size: int, drawn: list) -> list[dict]:
    case = CASES[name]
    weight = init_weight.double().clone().requires_grad_()
    optimizer = torch.optim.SGD([weight], **SGD)
    state = copy.deepcopy(case.initial_state)
    steps = []
    for step in range(STEPS):
        embeddings, labels = global_batch(name, step, world_size)
        embeddings.requires_grad_()
        optimizer.zero_grad()
        loss = case.loss(embeddings, weight, labels, state, drawn[step])
        loss.backward()
        steps.append(
            {
                "loss": loss.detach(),
                "embedding_grad": embeddings.grad,
                "centre_grad": weight.grad.clone(),
                "margin_state": dict(state),
            }
        )
        optimizer.step()
        steps[-1]["weight"] = weight.detach().clone()
    return steps


@pytest.fixture(scope="module")
def shards_by_world_size() -> dict[int, list[dict]]:
    return {1: [train_shards(0, 1)], **{w: run_distributed(train_shards, w) for w in (2, 3, 4)}}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("head", list(CASES))
def test_matches_dense_float64_reference(shards_by_world_size, world_size, head):
    ranks = shards_by_world_size[world_size]
    init = torch.cat([r[head]["init"] for r in ranks])
    assert init.shape == (NUM_CLASSES, DIM)
    expected = reference_run(head, init, world_size, [step["sample_inputs"] for step in ranks[0][head]["steps"]])
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
            assert set(ours["margin_state"]) == set(ref["margin_state"]), where
            for key, value in ref["margin_state"].items():
                assert relative_error(ours["margin_state"][key], value) < 1e-5, f"{where} {key}"


def test_initialisation_does_not_depend_on_world_size(shards_by_world_size):
    full = {w: torch.cat([r["arcface"]["init"] for r in ranks]) for w, ranks in shards_by_world_size.items()}
    for world_size in (2, 3, 4):
        assert torch.equal(full[world_size], full[1]), f"W={world_size}"
    assert not torch.equal(full[1][0], full[1][1])  # rows differ from each other


def test_loss_identical_on_every_rank(shards_by_world_size):
    for world_size, ranks in shards_by_world_size.items():
        losses = [r["combined"]["steps"][0]["loss"] for r in ranks]
        assert all(torch.equal(loss, losses[0]) for loss in losses), world_size


@pytest.mark.parametrize("head", ["elasticface_arc", "elasticface_cos"])
def test_elastic_margins_agree_across_ranks_and_change_per_step(shards_by_world_size, head):
    for world_size, ranks in shards_by_world_size.items():
        steps = [[r[head]["steps"][step]["sample_inputs"] for r in ranks] for step in range(STEPS)]
        assert all(torch.equal(drawn, steps[0][0]) for drawn in steps[0]), world_size
        assert all(torch.equal(drawn, steps[1][0]) for drawn in steps[1]), world_size
        assert not torch.equal(steps[0][0], steps[1][0])
        assert 0.01 < steps[0][0].std() < 0.2  # std = 0.05: the margins do vary per sample
