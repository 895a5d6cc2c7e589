"""PartialFC's shard contract (what is per-class, what is replicated, how a state is cut and joined
for another world size) and its buffer plan, measured against what a step really allocates."""

from __future__ import annotations

import gc

import pytest
import torch
from dist_harness import run_distributed

from partialfc import AdaFace, CombinedMargin, CurricularFace, LazyAdamW, LazySGD, PartialFC
from partialfc.common.distributed import DistInfo
from partialfc.training.checkpoint import Checkpointer, CheckpointError, Component

DIM, NUM_CLASSES, LOCAL_BATCH = 8, 30, 4


def with_declared_buffers(pfc: PartialFC) -> PartialFC:
    """A per-class buffer holding each row's global class id, and a replicated one (equal on every rank)."""
    rows = torch.arange(pfc.class_start, pfc.class_start + pfc.num_local).float()
    pfc.register_state("class_ids", rows.repeat_interleave(pfc.sub_centers), per_class=True)
    pfc.register_state("running_norm", torch.zeros(2), per_class=False)
    return pfc


def new_module(sub_centers: int = 1) -> PartialFC:
    return with_declared_buffers(
        PartialFC(DIM, NUM_CLASSES, 0.5, AdaFace(), optimizer=LazySGD(), seed=5, sub_centers=sub_centers)
    )


def train_and_save(rank: int, world_size: int, root) -> None:
    info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
    pfc = new_module(sub_centers=2)
    for step in range(3):
        generator = torch.Generator().manual_seed(step)
        embeddings = torch.randn(LOCAL_BATCH * world_size, DIM, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (LOCAL_BATCH * world_size,), generator=generator)
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        pfc(embeddings[local].requires_grad_(), labels[local]).backward()
        pfc.step()
        pfc.running_norm += torch.tensor([1.0, 0.5])
    Checkpointer(root, info, 1, {"centres": Component(pfc, "sharded")}).save(step=3)


def load_at(rank: int, world_size: int, checkpoint) -> dict:
    info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
    pfc = new_module(sub_centers=2)
    Checkpointer(
        checkpoint.parent,
        info,
        1,
        {"centres": Component(pfc, "sharded")},
        step_counters={"step_count": lambda: pfc.step_count},
    ).load(checkpoint)
    return {key: value.clone() for key, value in pfc.state_dict().items() if key != "_extra_state"} | {
        "margin": pfc.state_dict()["_extra_state"]["margin"],
        "class_start": pfc.class_start,
    }


def test_per_class_and_replicated_state_survive_a_world_size_change(tmp_path):
    run_distributed(train_and_save, 2, tmp_path)
    checkpoint = tmp_path / "step-00000003"
    saved = [torch.load(checkpoint / f"centres-{r:05d}-of-00002.pt", weights_only=True)["state"] for r in range(2)]
    margin = saved[0]["_extra_state"]["margin"]
    assert margin and all(torch.equal(margin[k], saved[1]["_extra_state"]["margin"][k]) for k in margin)
    assert not torch.equal(margin["batch_mean"], AdaFace().state_dict()["batch_mean"])  # the statistics moved
    for world_size in (1, 3):
        ranks = run_distributed(load_at, world_size, checkpoint)
        for key in ("weight", "optim_momentum", "class_ids"):
            assert torch.equal(torch.cat([r[key] for r in ranks]), torch.cat([s[key] for s in saved])), (
                world_size,
                key,
            )
        assert torch.equal(
            torch.cat([r["class_ids"] for r in ranks]), torch.arange(NUM_CLASSES).float().repeat_interleave(2)
        )
        for r in ranks:
            assert torch.equal(r["running_norm"], torch.tensor([3.0, 1.5]))
            assert all(torch.equal(r["margin"][k], margin[k]) for k in margin)


def test_cut_and_join_give_back_the_state():
    pfc = new_module(sub_centers=2)
    pfc.running_norm.fill_(2.0)
    state = pfc.sharded_state_dict()
    parts = [pfc.cut_state(state, 0, 7), pfc.cut_state(state, 7, 19), pfc.cut_state(state, 19, NUM_CLASSES)]
    assert parts[1]["weight"].shape == (12 * 2, DIM)
    joined = pfc.join_states(parts)
    assert joined.keys() == state.keys() and joined["_extra_state"] == state["_extra_state"]
    assert all(torch.equal(joined[k], state[k]) for k in state if k != "_extra_state")
    PartialFC.load_state_dict(new_module(sub_centers=2), joined)

    parts[2]["running_norm"] = torch.ones(2)
    with pytest.raises(ValueError, match="replicated state 'running_norm' differs between saved shards"):
        pfc.join_states(parts)
    with pytest.raises(ValueError, match="not consecutive"):
        pfc.join_states([parts[0], parts[2]])


def test_an_undeclared_buffer_fails_the_save_instead_of_vanishing_at_a_reshard(tmp_path):
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin())
    pfc.register_buffer("stray", torch.zeros(3))
    info = DistInfo(0, 1, 0, 1, 0, torch.device("cpu"))
    with pytest.raises(
        CheckpointError, match=r"cannot save 'centres'.*\['stray'\] is neither per-class nor replicated"
    ):
        Checkpointer(tmp_path, info, 1, {"centres": Component(pfc, "sharded")}).save(step=1)
    with pytest.raises(ValueError, match="per-class 'rows' needs 30 rows"):
        pfc.register_state("rows", torch.zeros(4), per_class=True)


def live_storages() -> dict[int, int]:
    """Bytes of every tensor storage alive in this process, by address (a measurement, not a formula)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        # Exact types (type(): no deprecation proxies): a subclass such as a FakeTensor left by another test
        # has no storage to read.
        if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            try:
                storages[storage.data_ptr()] = storage.nbytes()
            except RuntimeError:  # no real storage (traced tensors): never PartialFC's
                continue
    return storages


@pytest.mark.parametrize(
    "margin, optimizer, sample_rate, sub_centers, param_dtype, micro_batches, filtering",
    [
        (CombinedMargin(), LazySGD(), 0.5, 1, torch.float32, 1, 0.0),
        (CombinedMargin(), LazySGD(), 1.0, 1, torch.float32, 1, 0.0),  # dense fp32: the weight is the sampled centres
        (CurricularFace(), LazyAdamW(), 0.4, 3, torch.bfloat16, 2, 0.0),  # factor, winners, class logits, 2 workspaces
        (AdaFace(), LazySGD(momentum=0.0), 1.0, 2, torch.float32, 1, 0.0),
        (CombinedMargin(), LazySGD(), 0.5, 1, torch.float32, 1, 0.3),  # the inter-class filtering mask
        (CurricularFace(), LazySGD(), 0.0, 2, torch.float32, 1, 0.3),  # positives alone: as many as samples
    ],
)
def test_buffer_plan_equals_the_measured_allocation(
    margin, optimizer, sample_rate, sub_centers, param_dtype, micro_batches, filtering
):
    # The plan's largest case: r > 0 samples more classes than the 6 positives; r = 0 samples the 6.
    num_classes, batch = 200, 6
    generator = torch.Generator().manual_seed(0)
    inputs = [
        (
            torch.randn(batch, DIM, generator=generator, requires_grad=True),
            torch.randint(0, num_classes, (batch,), generator=generator),
        )
        for _ in range(micro_batches)
    ]
    assert all(labels.unique().numel() == batch for _, labels in inputs)
    before = live_storages()
    pfc = PartialFC(
        DIM,
        num_classes,
        sample_rate,
        margin,
        optimizer=optimizer,
        param_dtype=param_dtype,
        sub_centers=sub_centers,
        interclass_filtering_threshold=filtering,
    )
    for _ in range(2):
        for embeddings, labels in inputs:
            pfc(embeddings, labels).backward()
        pfc.step()
    for embeddings, _ in inputs:
        embeddings.grad = None
    measured = sum(size for ptr, size in live_storages().items() if ptr not in before)
    plan = PartialFC.buffer_plan(
        DIM,
        num_classes,
        batch,
        sample_rate,
        margin,
        optimizer,
        param_dtype=param_dtype,
        sub_centers=sub_centers,
        micro_batches=micro_batches,
        interclass_filtering=filtering > 0,
    )
    assert sum(size for _, size in plan) == measured, plan
