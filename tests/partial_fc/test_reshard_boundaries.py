"""Re-sharding where a saved shard and a new one meet exactly: each class's rows land once, on the
rank that owns the class, and a saved shard that only touches a new one is not read for it."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
from dist_harness import run_distributed

from partialfc import CombinedMargin, PartialFC, shard_range
from partialfc.common.distributed import DistInfo
from partialfc.training.checkpoint import Checkpointer, Component, _overlapping_ranks

DIM = 8
# 3 ranks hold classes [0, 2) [2, 3) [3, 4), 2 ranks [0, 2) [2, 4): both ends of each new shard are saved
# shard boundaries, so every new shard touches a saved shard it shares no class with.
NUM_CLASSES = 4


def centres(seed: int, process_group=None, class_ids: bool = True) -> PartialFC:
    """Centres with a per-class buffer of each row's class id (-1 before a load when ``class_ids`` is False)."""
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CombinedMargin(), seed=seed, process_group=process_group)
    ids = torch.arange(pfc.class_start, pfc.class_start + pfc.num_local, dtype=torch.float32)
    pfc.register_state("class_ids", ids if class_ids else torch.full_like(ids, -1.0), per_class=True)
    return pfc


def save_on_three_load_on_two(rank: int, world_size: int, root) -> dict | None:
    """Save on the 3 ranks, then ranks 0 and 1 load the checkpoint as a job of two (a group of their own)."""
    cpu = torch.device("cpu")
    saved = centres(seed=1)
    saver = Checkpointer(
        root, DistInfo(rank, world_size, rank, world_size, 0, cpu), 1, {"c": Component(saved, "sharded")}
    )
    checkpoint = saver.save(step=3)
    pair = dist.new_group([0, 1])  # every rank takes part in creating a group
    if rank == 2:
        return None
    loaded = centres(seed=2, process_group=pair, class_ids=False)
    Checkpointer(root, DistInfo(rank, 2, rank, 2, 0, cpu), 1, {"c": Component(loaded, "sharded")}).load(checkpoint)
    return {"class_ids": loaded.class_ids.clone(), "weight": loaded.weight.clone()}


def test_a_reshard_from_3_to_2_ranks_at_shared_shard_boundaries_places_every_row_once(tmp_path):
    ranks = run_distributed(save_on_three_load_on_two, 3, tmp_path)[:2]
    assert torch.equal(torch.cat([r["class_ids"] for r in ranks]), torch.arange(NUM_CLASSES, dtype=torch.float32))
    assert torch.equal(torch.cat([r["weight"] for r in ranks]), centres(seed=1).weight)


def test_a_new_shard_reads_exactly_the_saved_shards_it_shares_a_class_with():
    for num_classes in range(1, 13):
        for saved_world in range(1, min(num_classes, 5) + 1):
            saved = [
                set(range(start, start + count))
                for start, count in (shard_range(num_classes, r, saved_world) for r in range(saved_world))
            ]
            for world_size in range(1, min(num_classes, 5) + 1):
                for rank in range(world_size):
                    start, count = shard_range(num_classes, rank, world_size)
                    shard = SimpleNamespace(num_classes=num_classes, class_start=start, num_local=count)
                    expected = [r for r, classes in enumerate(saved) if classes & set(range(start, start + count))]
                    assert _overlapping_ranks(shard, saved_world) == expected, (
                        num_classes,
                        saved_world,
                        world_size,
                        rank,
                    )
