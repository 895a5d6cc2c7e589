"""Sub-centre ArcFace, with every margin family: exactness on W gloo ranks against a dense float64
reference (class cosine = max over its K sub-centres, then the family's formula; gradient to the
winner; lazy update of winners only), for loss, gradients, centres, momentum and margin state,
whole-class sampling, untouched losers, and re-sharding that keeps a class's sub-centres together."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from dist_harness import run_distributed
from reference import CASES, batch, cosines, record_sample_inputs, relative_error, spread_norms

from partialfc import CombinedMargin, LazySGD, PartialFC
from partialfc.common.distributed import DistInfo
from partialfc.training.checkpoint import Checkpointer, Component

NUM_CLASSES, SUB_CENTERS, DIM, LOCAL_BATCH, STEPS = 23, 3, 16, 5, 2  # 23 splits unevenly over 2, 3, 4
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
INIT_STD = 0.5  # centres of norm ~2: the first step stays small against them (see test_partial_fc_exact)


def global_batch(name: str, step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
    return (spread_norms(embeddings, step) if CASES[name].spread_norms else embeddings), labels


def train_shards(rank: int, world_size: int) -> dict:
    """Per margin family: initial shard, and per step loss, gradients, updated rows, shard and momentum."""
    results = {}
    for name, case in CASES.items():
        pfc = PartialFC(
            DIM,
            NUM_CLASSES,
            1.0,
            case.make_margin(),
            optimizer=LazySGD(**SGD),
            seed=7,
            init_std=INIT_STD,
            sub_centers=SUB_CENTERS,
        )
        record = {
            "class_start": pfc.class_start,
            "num_local": pfc.num_local,
            "init": pfc.weight.detach().clone(),
            "normalize": pfc.margin.normalize,
            "steps": [],
        }
        drawn = record_sample_inputs(pfc)
        for step in range(STEPS):
            embeddings, labels = global_batch(name, step, world_size)
            local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            local_embeddings = embeddings[local].float().requires_grad_()
            loss = pfc(local_embeddings, labels[local])
            loss.backward()
            pending = pfc._pending_gradient()
            centre_grad = torch.zeros_like(pfc.weight).index_copy_(0, pending.rows, pending.grad)
            pfc.step()
            record["steps"].append(
                {
                    "loss": loss.detach(),
                    "embedding_grad": local_embeddings.grad / world_size,  # the module returns W·∂L/∂x (DDP convention)
                    "centre_grad": centre_grad,
                    "updated_rows": pending.rows.clone(),
                    "weight": pfc.weight.detach().clone(),
                    "momentum": pfc.optim_momentum.clone(),
                    "margin_state": pfc.state_dict()["_extra_state"]["margin"],
                    "sample_inputs": drawn[-1],
                }
            )
        results[name] = record
    return results


def reference_run(name: str, init_weight: torch.Tensor, world_size: int, normalize: bool, drawn: list) -> list[dict]:
    """Dense float64 Sub-center family ``name`` (class score = max over its K rows), with SGD applied to
    the sub-centres that won for at least one sample of the step only."""
    case = CASES[name]
    weight = init_weight.double().clone().requires_grad_()
    momentum = torch.zeros_like(weight)
    state = copy.deepcopy(case.initial_state)
    steps = []
    for step in range(STEPS):
        embeddings, labels = global_batch(name, step, world_size)
        embeddings.requires_grad_()
        weight.grad = None
        loss = case.loss(embeddings, weight, labels, state, drawn[step], SUB_CENTERS)
        loss.backward()
        with torch.no_grad():
            scores = cosines(embeddings, weight) if normalize else embeddings @ weight.t()
            winner = scores.view(-1, NUM_CLASSES, SUB_CENTERS).argmax(dim=2)
            won = torch.zeros(NUM_CLASSES * SUB_CENTERS, dtype=torch.bool)
            won[(winner + torch.arange(NUM_CLASSES)[None, :] * SUB_CENTERS).flatten()] = True
            momentum[won] = SGD["momentum"] * momentum[won] + weight.grad[won] + SGD["weight_decay"] * weight[won]
            weight[won] -= SGD["lr"] * momentum[won]
        steps.append(
            {
                "loss": loss.detach(),
                "embedding_grad": embeddings.grad,
                "centre_grad": weight.grad.clone(),
                "updated_rows": won.nonzero().squeeze(1),
                "weight": weight.detach().clone(),
                "momentum": momentum.clone(),
                "margin_state": dict(state),
            }
        )
    return steps


@pytest.fixture(scope="module")
def shards_by_world_size() -> dict[int, list[dict]]:
    return {1: [train_shards(0, 1)], **{w: run_distributed(train_shards, w) for w in (2, 3, 4)}}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("head", list(CASES))
def test_matches_dense_float64_reference(shards_by_world_size, world_size, head):
    ranks = shards_by_world_size[world_size]
    init = torch.cat([r[head]["init"] for r in ranks])
    assert init.shape == (NUM_CLASSES * SUB_CENTERS, DIM)
    assert torch.equal(init, torch.cat([r[head]["init"] for r in shards_by_world_size[1]]))  # independent of W
    first_rank = ranks[0][head]
    expected = reference_run(
        head, init, world_size, first_rank["normalize"], [step["sample_inputs"] for step in first_rank["steps"]]
    )
    for rank, result in enumerate(ranks):
        record = result[head]
        first = record["class_start"] * SUB_CENTERS
        rows = slice(first, first + record["num_local"] * SUB_CENTERS)
        samples = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for step, (ours, ref) in enumerate(zip(record["steps"], expected)):
            where = f"{head} W={world_size} rank={rank} step={step}"
            assert relative_error(ours["loss"], ref["loss"]) < 1e-5, where
            assert relative_error(ours["embedding_grad"], ref["embedding_grad"][samples]) < 1e-5, where
            assert relative_error(ours["centre_grad"], ref["centre_grad"][rows]) < 1e-5, where
            assert relative_error(ours["weight"], ref["weight"][rows]) < 1e-5, where
            assert relative_error(ours["momentum"], ref["momentum"][rows]) < 1e-5, where
            ref_rows = ref["updated_rows"]
            assert torch.equal(
                ours["updated_rows"], ref_rows[(ref_rows >= rows.start) & (ref_rows < rows.stop)] - first
            ), where
            assert set(ours["margin_state"]) == set(ref["margin_state"]), where
            for key, value in ref["margin_state"].items():
                assert relative_error(ours["margin_state"][key], value) < 1e-5, f"{where} {key}"


def test_some_sub_centres_lose_in_the_reference_batch(shards_by_world_size):
    """The exactness test covers rows that are not updated: some sub-centres never win a step."""
    updated = shards_by_world_size[1][0]["arcface"]["steps"][0]["updated_rows"]
    assert 0 < updated.numel() < NUM_CLASSES * SUB_CENTERS


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("sample_rate", [1.0, 0.6])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_losing_sub_centres_get_no_gradient_and_do_not_move(micro_batches, sample_rate, param_dtype):
    """Also with gradient accumulation (the merge path), sampling and bf16 storage."""
    num_classes, dim = 5, 8
    pfc = PartialFC(
        dim,
        num_classes,
        sample_rate,
        CombinedMargin(),
        optimizer=LazySGD(**SGD),
        init_std=INIT_STD,
        sub_centers=SUB_CENTERS,
        param_dtype=param_dtype,
    )
    generator = torch.Generator().manual_seed(3)
    axis = F.one_hot(torch.tensor(0), dim).float()
    loser_rows = torch.arange(num_classes) * SUB_CENTERS + SUB_CENTERS - 1  # last sub-centre of every class
    pfc.weight.data[loser_rows] = -axis.to(param_dtype)  # opposite to every embedding below: it never wins
    before = pfc.weight.detach().clone()
    for _ in range(2):
        for _ in range(micro_batches):
            embeddings = 10.0 * axis + torch.randn(12, dim, generator=generator)
            labels = torch.randint(0, num_classes, (12,), generator=generator)
            pfc(embeddings.requires_grad_(), labels).backward()
        pending = pfc._pending_gradient()
        assert not torch.isin(loser_rows, pending.rows).any()
        assert pending.grad.abs().sum() > 0
        pfc.step()
    assert torch.equal(pfc.weight[loser_rows], before[loser_rows])
    assert torch.equal(pfc.optim_momentum[loser_rows], torch.zeros(num_classes, dim, dtype=param_dtype))
    winners = torch.ones(num_classes * SUB_CENTERS, dtype=torch.bool).index_fill_(0, loser_rows, False)
    assert not torch.equal(pfc.weight[winners], before[winners])


def test_sampling_keeps_or_drops_whole_classes():
    num_classes, sample_rate = 40, 0.25
    pfc = PartialFC(8, num_classes, sample_rate, CombinedMargin(), sub_centers=SUB_CENTERS)
    generator = torch.Generator().manual_seed(5)
    for step in range(3):
        labels = torch.randint(0, num_classes, (6,), generator=generator)
        pfc(torch.randn(6, 8, generator=generator, requires_grad=True), labels).backward()
        blocks = pfc.last_sampled_rows.view(-1, SUB_CENTERS)
        classes = blocks[:, 0] // SUB_CENTERS
        assert torch.equal(blocks, classes[:, None] * SUB_CENTERS + torch.arange(SUB_CENTERS)), step
        assert classes.numel() == math.ceil(sample_rate * num_classes), step
        assert torch.isin(labels, classes).all(), step  # positives are always sampled
        pfc.step()


def train_and_save(rank: int, world_size: int, root) -> None:
    info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
    pfc = PartialFC(
        DIM,
        NUM_CLASSES,
        0.5,
        CombinedMargin(),
        optimizer=LazySGD(**SGD),
        seed=3,
        init_std=INIT_STD,
        sub_centers=SUB_CENTERS,
    )
    for step in range(2):
        embeddings, labels = batch(step, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        pfc(embeddings[local].float().requires_grad_(), labels[local]).backward()
        pfc.step()
    Checkpointer(root, info, 1, {"centres": Component(pfc, "sharded")}).save(step=2)


def load_shard(rank: int, world_size: int, checkpoint, sub_centers: int = SUB_CENTERS) -> dict:
    info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
    pfc = PartialFC(DIM, NUM_CLASSES, 0.5, CombinedMargin(), optimizer=LazySGD(**SGD), sub_centers=sub_centers)
    Checkpointer(checkpoint.parent, info, 1, {"centres": Component(pfc, "sharded")}).load(checkpoint)
    return {
        "class_start": pfc.class_start,
        "num_local": pfc.num_local,
        "weight": pfc.weight.clone(),
        "momentum": pfc.optim_momentum.clone(),
        "step_count": pfc.step_count,
    }


def test_reshard_keeps_sub_centres_of_a_class_together(tmp_path):
    run_distributed(train_and_save, 2, tmp_path)
    checkpoint = tmp_path / "step-00000002"
    saved = [torch.load(checkpoint / f"centres-{r:05d}-of-00002.pt", weights_only=True)["state"] for r in range(2)]
    saved_weight = torch.cat([s["weight"] for s in saved])
    saved_momentum = torch.cat([s["optim_momentum"] for s in saved])
    assert saved_momentum.abs().sum() > 0
    for world_size in (1, 3):
        for shard in run_distributed(load_shard, world_size, checkpoint):
            rows = slice(shard["class_start"] * SUB_CENTERS, (shard["class_start"] + shard["num_local"]) * SUB_CENTERS)
            assert torch.equal(shard["weight"], saved_weight[rows]), world_size
            assert torch.equal(shard["momentum"], saved_momentum[rows]), world_size
            assert shard["step_count"] == 2
    with pytest.raises(Exception, match=r"saved with loss.sub_centers=3, this job has 1"):
        run_distributed(load_shard, 1, checkpoint, 1)


def test_config_refuses_fewer_than_one_sub_centre():
    from partialfc.config import ConfigError, load_config

    assert load_config(None, {"loss.sub_centers": 3}).loss.sub_centers == 3
    with pytest.raises(ConfigError, match=r"loss.sub_centers=0 must be >= 1"):
        load_config(None, {"loss.sub_centers": 0})
