"""Inter-class filtering as insightface recognition/arcface_torch does it (losses.py, CombinedMarginLoss,
called by partial_fc_v2.py's PartialFC_V2.forward on the clamped, sampled cosines): every non-target
cosine strictly above the threshold becomes the constant 0, on every row, whichever rank holds the
row's target. Checked against the dense float64 reference of that rule (reference.interclass_filtered)
on W = 1–4 gloo ranks, dense, sampled and positives-only, for every family that defines it; then the
config's domain and the family that refuses it."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_distributed
from reference import CASES, batch, cosines, record_sample_inputs, relative_error, spread_norms

from partialfc import CombinedMargin, PartialFC, Softmax
from partialfc.common.options import ConfigError
from partialfc.config import load_config
from partialfc.core.margins import MARGIN_FAMILIES
from partialfc.train import main, memory_plan

NUM_CLASSES, DIM, LOCAL_BATCH = 61, 8, 3  # 61: uneven shards at W = 2, 3, 4; ~15 classes per rank at W = 4
THRESHOLD = 0.3  # in 8 dimensions about a fifth of the random cosines lie above it
BATCH_SEED = 5  # its batches have a target cosine above the threshold at every W (asserted below)
FAMILIES = [name for name in CASES if name != "softmax"]  # softmax has no cosines: refused
RATES = (1.0, 0.5, 0.0)  # dense, sampled, positives alone
# (W, labels below, sub-centres): every W on the whole class range; W = 2 with every label in rank 0's
# [0, 31), which leaves rank 1 without a positive (at r = 0, without a sampled class); sub-centres,
# whose class cosine (the max over K) is what is filtered.
BATCHES = {f"W={w}": (w, NUM_CLASSES, 1) for w in (1, 2, 3, 4)} | {
    "W=2, no positive on rank 1": (2, 31, 1),
    "W=1, 2 sub-centres": (1, NUM_CLASSES, 2),
    "W=2, 2 sub-centres": (2, NUM_CLASSES, 2),
}
# fp32 bounds the gradients, with or without filtering: logits up to s = 64 (half an ulp: 1.9e-6) and
# p − 1 at a confident target cancel. Measured over 20 batches at W = 1: loss 6e-7, gradients 4e-6
# with filtering, 3.4e-6 without; the gradient tolerance is test_partial_fc_exact's.
LOSS_TOLERANCE, GRADIENT_TOLERANCE = 1e-6, 1e-5


def global_batch(name: str, world_size: int, labels_below: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings as float64 holding fp32 values (the reference sees exactly the module's input), labels."""
    embeddings, labels = batch(BATCH_SEED, LOCAL_BATCH * world_size, DIM, NUM_CLASSES)
    embeddings = spread_norms(embeddings, BATCH_SEED) if CASES[name].spread_norms else embeddings
    return embeddings.float().double(), labels % labels_below


def filtered_steps(rank: int, world_size: int, labels_below: int, sub_centers: int) -> dict:
    """Per (family, rate): this rank's loss, ∂L/∂x of its samples, centre gradient, sampled rows, shard."""
    results = {}
    for name in FAMILIES:
        for rate in RATES:
            pfc = PartialFC(
                DIM,
                NUM_CLASSES,
                rate,
                CASES[name].make_margin(),
                seed=7,
                init_std=0.5,
                sub_centers=sub_centers,
                interclass_filtering_threshold=THRESHOLD,
            )
            drawn = record_sample_inputs(pfc)
            embeddings, labels = global_batch(name, world_size, labels_below)
            local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            local_embeddings = embeddings[local].float().requires_grad_()
            loss = pfc(local_embeddings, labels[local])
            loss.backward()
            results[name, rate] = {
                "loss": loss.detach(),
                "embedding_grad": local_embeddings.grad / world_size,  # the module hands back W·∂L/∂x
                "centre_grad": pfc._pending[0].grad.clone(),
                "rows": pfc.class_start * sub_centers + pfc.last_sampled_rows,  # global rows of the weight
                "weight": pfc.weight.detach().clone(),
                "sample_inputs": drawn[0],
            }
    return results


@pytest.fixture(scope="module")
def ranks_by_batch() -> dict[str, list[dict]]:
    return {
        key: [filtered_steps(0, 1, below, k)]
        if world_size == 1
        else run_distributed(filtered_steps, world_size, below, k)
        for key, (world_size, below, k) in BATCHES.items()
    }


def reference_step(name: str, key: str, ranks: list[dict], rate: float) -> tuple[torch.Tensor, ...]:
    """Their rule, dense in float64, over the classes the ranks sampled: loss, ∂L/∂X, ∂L/∂w (sampled order)."""
    world_size, below, sub_centers = BATCHES[key]
    records = [result[name, rate] for result in ranks]
    rows = torch.cat([record["rows"] for record in records])
    classes = rows[::sub_centers] // sub_centers
    weight = torch.cat([record["weight"] for record in records]).double()[rows].requires_grad_()
    embeddings, labels = global_batch(name, world_size, below)
    embeddings.requires_grad_()
    state = {k: v.clone() for k, v in CASES[name].initial_state.items()}
    drawn = records[0]["sample_inputs"]
    loss = CASES[name].loss(
        embeddings, weight, torch.searchsorted(classes, labels), state, drawn, sub_centers, THRESHOLD
    )
    loss.backward()
    return loss.detach(), embeddings.grad, weight.grad


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("key", list(BATCHES))
def test_filtering_equals_their_rule_in_float64(ranks_by_batch, key, name, rate):
    """Planted bugs this fails on: the target filtered too, only rows with their target on the rank
    filtered, a filtered cosine passing its gradient, the threshold compared with s·cos θ."""
    ranks = ranks_by_batch[key]
    loss, embedding_grad, centre_grad = reference_step(name, key, ranks, rate)
    first = 0
    for rank, result in enumerate(ranks):
        ours = result[name, rate]
        count = ours["rows"].numel()
        where = f"{name} r={rate} {key} rank={rank}"
        samples = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        assert relative_error(ours["loss"], loss) <= LOSS_TOLERANCE, where
        assert relative_error(ours["embedding_grad"], embedding_grad[samples]) <= GRADIENT_TOLERANCE, where
        assert relative_error(ours["centre_grad"], centre_grad[first : first + count]) <= GRADIENT_TOLERANCE, where
        first += count
    assert first == centre_grad.shape[0]


def test_the_batches_exercise_every_part_of_the_rule(ranks_by_batch):
    """Without these the test above could not tell the rule from its planted bugs."""
    for key, (world_size, below, sub_centers) in BATCHES.items():
        shards = [result["arcface", 1.0]["weight"] for result in ranks_by_batch[key]]
        embeddings, labels = global_batch("arcface", world_size, below)
        cos = cosines(embeddings, torch.cat(shards).double(), sub_centers)
        target = torch.nn.functional.one_hot(labels, NUM_CLASSES).bool()
        assert (cos[target] > THRESHOLD).any(), f"{key}: a target above the threshold (it must stay)"
        assert (cos[~target] > THRESHOLD).sum() > 10, f"{key}: negatives to filter"
        owner = torch.cat([torch.full((shard.shape[0] // sub_centers,), r) for r, shard in enumerate(shards)])
        elsewhere = owner[None, :] != owner[labels][:, None]  # column on another rank than the row's target
        assert world_size == 1 or ((cos > THRESHOLD) & elsewhere).any(), f"{key}: a row without its target here"
        for shard, result in zip(shards, ranks_by_batch[key]):
            assert 0 < result["arcface", 0.5]["rows"].numel() < shard.shape[0], f"{key}: r = 0.5 samples"
    at_zero = [result["arcface", 0.0]["rows"].numel() for result in ranks_by_batch["W=2, no positive on rank 1"]]
    assert at_zero[0] > 0 and at_zero[1] == 0


def one_step_loss(weight_rows: torch.Tensor, threshold: float) -> torch.Tensor:
    pfc = PartialFC(4, 3, 1.0, CombinedMargin(), interclass_filtering_threshold=threshold)
    pfc.weight.data.copy_(weight_rows)
    return pfc(torch.ones(1, 4), torch.tensor([1])).detach()


def test_a_cosine_equal_to_the_threshold_is_kept():
    """Their comparison is strict (>). x̂ = (½, ½, ½, ½) and the centre e1 have cosine exactly ½,
    and so do s·x̂·e1 = 32 and s·½ in fp32."""
    centres = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])  # cos ½, 0.71, −½
    unfiltered = one_step_loss(centres, 0.0)
    assert torch.equal(one_step_loss(centres, 0.5), unfiltered)  # at the threshold: kept
    assert one_step_loss(centres, 0.4999) < unfiltered - 1.0  # just below: filtered (logit 32 → 0)


def test_every_family_but_softmax_defines_filtering():
    assert {name for name, section in MARGIN_FAMILIES.items() if section.no_interclass_filtering} == {"softmax"}


@pytest.mark.parametrize("family", [name for name in MARGIN_FAMILIES if name != "softmax"])
def test_config_accepts_the_threshold_for_a_family_with_cosines(family):
    config = load_config(None, {"loss.family": family, "loss.interclass_filtering_threshold": 0.4})
    assert (
        config.loss.build(
            DIM, NUM_CLASSES, config.optim.build_centre_optimizer(), seed=0
        ).interclass_filtering_threshold
        == 0.4
    )


def test_config_refuses_the_threshold_for_softmax_by_name():
    with pytest.raises(
        ConfigError, match=r"loss.interclass_filtering_threshold=0.4 is not defined for loss.family=softmax: .*cosines"
    ):
        load_config(None, {"loss.family": "softmax", "loss.interclass_filtering_threshold": 0.4})
    assert load_config(None, {"loss.family": "softmax"}).loss.interclass_filtering_threshold == 0.0  # off: fine


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5])
def test_the_threshold_is_below_one_and_not_negative(threshold):
    """A cosine never exceeds 1 (their cosines are clamped to [−1, 1]), so t ≥ 1 would filter nothing:
    a setting that silently does nothing is refused; below 0 is no rule of theirs (they filter only for t > 0)."""
    with pytest.raises(ConfigError, match=r"loss.interclass_filtering_threshold=.* must be in \[0, 1\)"):
        load_config(None, {"loss.interclass_filtering_threshold": threshold})
    with pytest.raises(ValueError, match=r"interclass_filtering_threshold must be in \[0, 1\)"):
        PartialFC(DIM, NUM_CLASSES, interclass_filtering_threshold=threshold)
    assert (
        load_config(None, {"loss.interclass_filtering_threshold": 0.999}).loss.interclass_filtering_threshold == 0.999
    )


def test_the_layer_refuses_filtering_without_cosines():
    with pytest.raises(ValueError, match=r"inter-class filtering thresholds cosines; Softmax\(\) has none"):
        PartialFC(DIM, NUM_CLASSES, 1.0, Softmax(), interclass_filtering_threshold=0.3)


def test_dry_run_shows_the_threshold_and_plans_its_mask(capsys):
    args = ["--dry-run", "--world-size", "2", "--data.num_classes", "1000", "--data.batch_size", "8"]
    assert main([*args, "--loss.interclass_filtering_threshold", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "interclass_filtering_threshold: 0.4" in out and "inter-class filtered cosines (bool)" in out
    assert main(args) == 0
    assert "inter-class filtered cosines" not in capsys.readouterr().out
    config = load_config(None, {"data.batch_size": 8, "loss.interclass_filtering_threshold": 0.4})
    assert dict(memory_plan(config, 1000, 2))["inter-class filtered cosines (bool)"] == 16 * 500  # N × S bytes
