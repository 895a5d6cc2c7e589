"""Checkpointer rotation: after every save exactly the newest ``checkpoint.keep`` complete checkpoints remain."""

from __future__ import annotations

import pytest
import torch

from partialfc import CombinedMargin, PartialFC
from partialfc.common.distributed import DistInfo
from partialfc.training.checkpoint import Checkpointer, Component, find_latest_checkpoint
from partialfc.training.train_state import TrainProgress


@pytest.mark.parametrize("keep", [1, 2])
def test_rotation_keeps_exactly_the_newest_keep(tmp_path, keep):
    """Planted bug: rotation keeping one checkpoint too many (``keep + 1``)."""
    info = DistInfo(0, 1, 0, 1, 0, torch.device("cpu"))
    pfc = PartialFC(4, 6, 1.0, CombinedMargin())
    checkpointer = Checkpointer(
        tmp_path, info, keep, {"progress": Component(TrainProgress(), "shared"), "centres": Component(pfc, "sharded")}
    )
    for step in range(1, 5):
        checkpointer.save(step)
        remaining = sorted(p.name for p in tmp_path.iterdir())
        assert remaining == [f"step-{s:08d}" for s in range(max(1, step - keep + 1), step + 1)], step
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step-00000004"
