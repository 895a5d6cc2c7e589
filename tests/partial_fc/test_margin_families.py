"""Margin families (AdaFace, CurricularFace, MagFace, ElasticFace) on W gloo ranks against dense
float64 single-process references of their official definitions: loss, embedding gradient, centre
gradient, running state, over two steps with uneven shards."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_distributed
from reference import adaface_loss, batch, curricularface_loss, magface_loss, relative_error, spread_norms

from partialfc import AdaFace, CurricularFace, LazySGD, MagFace, PartialFC

NUM_CLASSES, DIM, LOCAL_BATCH, STEPS = 23, 16, 5, 2  # 23 is not divisible by 2, 3 or 4
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
INIT_STD = 0.5  # see test_partial_fc_exact


def make_margin(family: str):
    return {
        "adaface": lambda: AdaFace(s=64.0, m=0.4, h=0.333, t_alpha=0.01),
        "curricularface": lambda: CurricularFace(s=64.0, m=0.5),
        "magface": lambda: MagFace(s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0),
    }[family]()


def initial_state(family: str) -> dict:
    return {"adaface": {"batch_mean": torch.tensor(20.0, dtype=torch.float64),
                        "batch_std": torch.tensor(100.0, dtype=torch.float64)},
            "curricularface": {"t": torch.tensor(0.0, dtype=torch.float64)},
            "magface": {}}[family]


def reference_loss(family: str, embeddings, weight, labels, state: dict) -> torch.Tensor:
    losses = {"adaface": adaface_loss, "curricularface": curricularface_loss, "magface": magface_loss}
    return losses[family](embeddings, weight, labels, state)


FAMILIES = ["adaface", "curricularface", "magface"]


def global_batch(step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
    return spread_norms(embeddings, step), labels


def train_shards(rank: int, world_size: int) -> dict:
    """Per family: initial shard, and per step loss, embedding/centre gradients, shard and margin state."""
    results = {}
    for family in FAMILIES:
        pfc = PartialFC(DIM, NUM_CLASSES, 1.0, make_margin(family), optimizer=LazySGD(**SGD), seed=7, init_std=INIT_STD)
        record = {"class_start": pfc.class_start, "init": pfc.weight.detach().clone(), "steps": []}
        for step in range(STEPS):
            embeddings, labels = global_batch(step, world_size)
            local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            local_embeddings = embeddings[local].float().requires_grad_()
            loss = pfc(local_embeddings, labels[local])
            loss.backward()
            centre_grad = pfc._pending[0].grad.clone()
            pfc.step()
            record["steps"].append({
                "loss": loss.detach(),
                "embedding_grad": local_embeddings.grad / world_size,  # the module returns W·∂L/∂x
                "centre_grad": centre_grad,
                "weight": pfc.weight.detach().clone(),
                "margin_state": pfc.state_dict()["_extra_state"]["margin"],
            })
        results[family] = record
    return results


def reference_run(family: str, init_weight: torch.Tensor, world_size: int) -> list[dict]:
    weight = init_weight.double().clone().requires_grad_()
    optimizer = torch.optim.SGD([weight], **SGD)
    state = initial_state(family)
    steps = []
    for step in range(STEPS):
        embeddings, labels = global_batch(step, world_size)
        embeddings.requires_grad_()
        optimizer.zero_grad()
        loss = reference_loss(family, embeddings, weight, labels, state)
        loss.backward()
        steps.append({"loss": loss.detach(), "embedding_grad": embeddings.grad, "centre_grad": weight.grad.clone(),
                      "margin_state": {k: v.detach().clone() for k, v in state.items()}})
        optimizer.step()
        steps[-1]["weight"] = weight.detach().clone()
    return steps


@pytest.fixture(scope="module")
def shards_by_world_size() -> dict[int, list[dict]]:
    return {1: [train_shards(0, 1)], **{w: run_distributed(train_shards, w) for w in (2, 3, 4)}}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_dense_float64_reference(shards_by_world_size, world_size, family):
    ranks = shards_by_world_size[world_size]
    init = torch.cat([r[family]["init"] for r in ranks])
    expected = reference_run(family, init, world_size)
    for rank, result in enumerate(ranks):
        record = result[family]
        rows = slice(record["class_start"], record["class_start"] + record["init"].shape[0])
        samples = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for step, (ours, ref) in enumerate(zip(record["steps"], expected)):
            where = f"{family} W={world_size} rank={rank} step={step}"
            assert relative_error(ours["loss"], ref["loss"]) < 1e-5, where
            assert relative_error(ours["embedding_grad"], ref["embedding_grad"][samples]) < 1e-5, where
            assert relative_error(ours["centre_grad"], ref["centre_grad"][rows]) < 1e-5, where
            assert relative_error(ours["weight"], ref["weight"][rows]) < 1e-5, where
            assert set(ours["margin_state"]) == set(ref["margin_state"]), where
            for key, value in ref["margin_state"].items():
                assert relative_error(ours["margin_state"][key], value) < 1e-5, f"{where} {key}"


STATEFUL = ["adaface", "curricularface"]


def one_step(pfc: PartialFC, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    embeddings = spread_norms(torch.randn(6, DIM, generator=generator, dtype=torch.float64), seed).float()
    loss = pfc(embeddings.requires_grad_(), torch.randint(0, NUM_CLASSES, (6,), generator=generator))
    loss.backward()
    pfc.step()
    return loss.detach()


@pytest.mark.parametrize("family", STATEFUL)
def test_state_dict_carries_the_running_state(family):
    pfc = PartialFC(DIM, NUM_CLASSES, 0.5, make_margin(family), seed=3)
    fresh_state = make_margin(family).state_dict()
    for seed in range(2):
        one_step(pfc, seed)
    state = pfc.state_dict()
    saved = state["_extra_state"]["margin"]
    assert any(not torch.equal(saved[k], fresh_state[k]) for k in saved), "two steps must move the running state"
    resumed = PartialFC(DIM, NUM_CLASSES, 0.5, make_margin(family), seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(one_step(pfc, 10), one_step(resumed, 10))
    assert torch.equal(pfc.weight, resumed.weight)


@pytest.mark.parametrize("family", STATEFUL)
def test_forward_without_gradient_leaves_the_running_state(family):
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, make_margin(family))
    before = pfc.margin.state_dict()
    with torch.no_grad():
        pfc(spread_norms(torch.randn(4, DIM, dtype=torch.float64), 0).float(), torch.arange(4))
    after = pfc.margin.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
