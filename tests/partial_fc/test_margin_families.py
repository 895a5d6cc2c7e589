"""Margin families (AdaFace, CurricularFace, MagFace, ElasticFace) on W gloo ranks against dense
float64 single-process references of their official definitions: loss, embedding gradient, centre
gradient, running state, over two steps with uneven shards."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_distributed
from reference import adaface_loss, batch, curricularface_loss, elasticface_loss, magface_loss, relative_error, spread_norms

from partialfc import AdaFace, CurricularFace, ElasticFace, LazySGD, MagFace, PartialFC

NUM_CLASSES, DIM, LOCAL_BATCH, STEPS = 23, 16, 5, 2  # 23 is not divisible by 2, 3 or 4
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
INIT_STD = 0.5  # see test_partial_fc_exact


def make_margin(family: str):
    return {
        "adaface": lambda: AdaFace(s=64.0, m=0.4, h=0.333, t_alpha=0.01),
        "curricularface": lambda: CurricularFace(s=64.0, m=0.5),
        "magface": lambda: MagFace(s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0),
        "elasticface_arc": lambda: ElasticFace(s=64.0, m=0.5, std=0.05, kind="arc"),
        "elasticface_cos": lambda: ElasticFace(s=64.0, m=0.35, std=0.05, kind="cos"),
    }[family]()


def initial_state(family: str) -> dict:
    return {"adaface": {"batch_mean": torch.tensor(20.0, dtype=torch.float64),
                        "batch_std": torch.tensor(100.0, dtype=torch.float64)},
            "curricularface": {"t": torch.tensor(0.0, dtype=torch.float64)},
            "magface": {}, "elasticface_arc": {}, "elasticface_cos": {}}[family]


def reference_loss(family: str, embeddings, weight, labels, state: dict, drawn_margins) -> torch.Tensor:
    if family.startswith("elasticface"):
        kind = family.split("_")[1]
        return elasticface_loss(embeddings, weight, labels, drawn_margins, kind=kind)
    losses = {"adaface": adaface_loss, "curricularface": curricularface_loss, "magface": magface_loss}
    return losses[family](embeddings, weight, labels, state)


FAMILIES = ["adaface", "curricularface", "magface", "elasticface_arc", "elasticface_cos"]


def global_batch(step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
    return spread_norms(embeddings, step), labels


def train_shards(rank: int, world_size: int) -> dict:
    """Per family: initial shard, and per step loss, embedding/centre gradients, shard and margin state."""
    results = {}
    for family in FAMILIES:
        pfc = PartialFC(DIM, NUM_CLASSES, 1.0, make_margin(family), optimizer=LazySGD(**SGD), seed=7, init_std=INIT_STD)
        record = {"class_start": pfc.class_start, "init": pfc.weight.detach().clone(), "steps": []}
        drawn = record_sample_inputs(pfc)
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
                "sample_inputs": drawn[-1],
            })
        results[family] = record
    return results


def record_sample_inputs(pfc: PartialFC) -> list:
    """Make ``pfc``'s margin append its per-sample inputs of every forward pass to the returned list."""
    drawn, original = [], pfc.margin.sample_inputs

    def recording(embeddings, step):
        inputs = original(embeddings, step)
        drawn.append(None if inputs is None else inputs.detach().clone())
        return inputs

    pfc.margin.sample_inputs = recording
    return drawn


def reference_run(family: str, init_weight: torch.Tensor, world_size: int, drawn: list) -> list[dict]:
    weight = init_weight.double().clone().requires_grad_()
    optimizer = torch.optim.SGD([weight], **SGD)
    state = initial_state(family)
    steps = []
    for step in range(STEPS):
        embeddings, labels = global_batch(step, world_size)
        embeddings.requires_grad_()
        optimizer.zero_grad()
        loss = reference_loss(family, embeddings, weight, labels, state, drawn[step])
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
    expected = reference_run(family, init, world_size, [s["sample_inputs"] for s in ranks[0][family]["steps"]])
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


@pytest.mark.parametrize("kind", ["elasticface_arc", "elasticface_cos"])
def test_elastic_margins_agree_across_ranks_and_change_per_step(shards_by_world_size, kind):
    for world_size, ranks in shards_by_world_size.items():
        steps = [[r[kind]["steps"][step]["sample_inputs"] for r in ranks] for step in range(STEPS)]
        assert all(torch.equal(drawn, steps[0][0]) for drawn in steps[0]), world_size
        assert all(torch.equal(drawn, steps[1][0]) for drawn in steps[1]), world_size
        assert not torch.equal(steps[0][0], steps[1][0])
        assert 0.01 < steps[0][0].std() < 0.2  # std = 0.05: the margins do vary per sample


def test_elastic_margins_repeat_for_the_same_seed_and_differ_for_another():
    def first_margins(seed: int) -> torch.Tensor:
        pfc = PartialFC(DIM, NUM_CLASSES, 1.0, make_margin("elasticface_arc"), seed=seed)
        drawn = record_sample_inputs(pfc)
        pfc(torch.randn(4, DIM), torch.arange(4))
        return drawn[0]

    assert torch.equal(first_margins(1), first_margins(1))
    assert not torch.equal(first_margins(1), first_margins(2))


@pytest.mark.parametrize("head, family", [("margin", "CombinedMargin"), ("softmax", "Softmax"), ("adaface", "AdaFace"),
                                          ("curricularface", "CurricularFace"), ("magface", "MagFace"),
                                          ("elasticface", "ElasticFace")])
def test_every_head_builds_from_the_config(head, family):
    from partialfc.config import LossConfig

    assert type(LossConfig(head=head).build_margin()).__name__ == family


def test_config_error_names_the_fields_of_the_family():
    from partialfc.config import ConfigError, LossConfig

    margin = LossConfig(head="elasticface", elastic_m=0.3, elastic_std=0.02, elastic_kind="cos").build_margin()
    assert (margin.m, margin.std, margin.kind) == (0.3, 0.02, "cos")
    with pytest.raises(ConfigError, match=r"loss.head=magface \(.*loss.magface_l_a, loss.magface_u_a.*l_a=120"):
        LossConfig(head="magface", magface_l_a=120.0).build_margin()
