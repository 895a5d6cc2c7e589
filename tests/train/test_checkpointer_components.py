"""The Checkpointer's component registry: optional components, shape mismatches named, step counters
compared, manifest formats (format 1's epoch becomes the shared ``epoch`` component)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from partialfc import CombinedMargin, PartialFC, shard_range
from partialfc.common.distributed import DistInfo
from partialfc.training.checkpoint import Checkpointer, CheckpointError, Component
from partialfc.training.train_state import LoaderEpoch, TrainProgress

SINGLE = DistInfo(0, 1, 0, 1, 0, torch.device("cpu"))


def save(root, step: int = 3, **components: Component):
    return Checkpointer(root, SINGLE, 2, components).save(step)


def test_optional_components_absent_from_an_older_checkpoint_keep_their_initial_state(tmp_path):
    progress = TrainProgress(step=3)
    path = save(tmp_path, progress=Component(progress, "shared"))
    new_shared, new_sharded = nn.Linear(2, 2), PartialFC(4, 6, 1.0, CombinedMargin())
    before = (new_shared.weight.clone(), new_sharded.weight.clone())
    logged: list[str] = []
    loaded = TrainProgress()
    Checkpointer(
        tmp_path,
        SINGLE,
        2,
        {
            "progress": Component(loaded, "shared"),
            "head": Component(new_shared, "shared", optional=True),
            "centres": Component(new_sharded, "sharded", optional=True),
        },
        log=logged.append,
    ).load(path)
    assert loaded.step == 3
    assert torch.equal(new_shared.weight, before[0]) and torch.equal(new_sharded.weight, before[1])
    assert any("no 'head' component" in line for line in logged)
    assert any("no 'centres' component" in line for line in logged)
    with pytest.raises(CheckpointError, match=r"trainer.pt: has no 'head' component"):
        Checkpointer(tmp_path, SINGLE, 2, {"head": Component(nn.Linear(2, 2), "shared")}).load(path)


class ClassTable:
    """A sharded component with one value per class, placed at a rank and world size given by hand (a
    load needs no process group); like PartialFC it refuses a state or cut outside its class range."""

    def __init__(self, num_classes: int, rank: int, world_size: int, offset: float) -> None:
        self.num_classes = num_classes
        self.class_start, self.num_local = shard_range(num_classes, rank, world_size)
        self.rows = offset + torch.arange(self.class_start, self.class_start + self.num_local, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {"rows": self.rows, "class_start": self.class_start}

    def sharded_state_dict(self) -> dict:
        return self.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if (state["class_start"], len(state["rows"])) != (self.class_start, self.num_local):
            raise ValueError(f"state of classes from {state['class_start']}, this shard starts at {self.class_start}")
        self.rows = state["rows"].clone()

    def cut_state(self, state: dict, start: int, stop: int) -> dict:
        first = state["class_start"]
        if not first <= start < stop <= first + len(state["rows"]):
            raise ValueError(f"classes [{start}, {stop}) are not in the saved shard")
        return {"rows": state["rows"][start - first : stop - first], "class_start": start}

    def join_states(self, parts) -> dict:
        return {"rows": torch.cat([part["rows"] for part in parts]), "class_start": parts[0]["class_start"]}


def test_an_optional_component_the_checkpoint_has_is_loaded_on_any_world_size(tmp_path):
    """Absence is read from the manifest's file list, under the saved world size and rank 0's file
    name: a checkpoint holding the optional component's shards loads them, on its own world size
    and re-sharded on each rank of two (whose own file names, ``table-00001-of-00001.pt`` and
    ``table-0000r-of-00002.pt``, the manifest does not list)."""
    path = save(tmp_path, table=Component(ClassTable(6, 0, 1, offset=100.0), "sharded"))
    for rank, world_size in [(0, 1), (0, 2), (1, 2)]:
        table, logged = ClassTable(6, rank, world_size, offset=0.0), []
        info = DistInfo(rank, world_size, rank, world_size, 0, torch.device("cpu"))
        components = {"table": Component(table, "sharded", optional=True)}
        Checkpointer(tmp_path, info, 2, components, log=logged.append).load(path)
        assert not any("no 'table' component" in line for line in logged), (rank, world_size, logged)
        assert torch.equal(table.rows, 100.0 + torch.arange(table.class_start, table.class_start + table.num_local)), (
            rank,
            world_size,
        )


@pytest.mark.parametrize("placement", ["shared", "sharded"])
def test_a_shape_mismatch_names_the_component_and_the_key(tmp_path, placement):
    def component(dim: int) -> Component:
        return Component(
            nn.Linear(dim, 3) if placement == "shared" else PartialFC(dim, 6, 1.0, CombinedMargin()), placement
        )

    path = save(tmp_path, part=component(4))
    with pytest.raises(CheckpointError, match=r"tensor 'part.weight' has shape \((3, 4|6, 4)\) in the checkpoint"):
        Checkpointer(tmp_path, SINGLE, 2, {"part": component(5)}).load(path)


def test_an_optimizer_state_mismatch_is_a_checkpoint_error(tmp_path):
    def optimizer(dim: int) -> torch.optim.SGD:
        model = nn.Linear(dim, 3)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.ones(1, dim)).sum().backward()
        sgd.step()
        return sgd

    path = save(tmp_path, optimizer=Component(optimizer(4), "shared"))
    with pytest.raises(CheckpointError, match=r"tensor 'optimizer.state.0.momentum_buffer' has shape \(3, 4\)"):
        Checkpointer(tmp_path, SINGLE, 2, {"optimizer": Component(optimizer(5), "shared")}).load(path)


def test_step_counters_that_disagree_with_the_checkpoint_are_refused(tmp_path):
    progress, pfc = TrainProgress(step=3), PartialFC(4, 6, 1.0, CombinedMargin())  # pfc never stepped
    components = {"progress": Component(progress, "shared"), "centres": Component(pfc, "sharded")}
    path = Checkpointer(tmp_path, SINGLE, 2, components).save(3)
    counters = {"progress.step": lambda: progress.step, "PartialFC step_count": lambda: pfc.step_count}
    with pytest.raises(
        CheckpointError,
        match=r"step counters disagree: the checkpoint's step is 3, "
        r"progress.step 3, PartialFC step_count 0",
    ):
        Checkpointer(tmp_path, SINGLE, 2, components, step_counters=counters).load(path)
    pfc.step_count = 3
    Checkpointer(tmp_path, SINGLE, 2, components, step_counters=counters).save(3)
    Checkpointer(tmp_path, SINGLE, 2, components, step_counters=counters).load(path)


class FakeLoader:
    """A loader's epoch and position, 10 batches an epoch."""

    def __init__(self, epoch: int = 0, position: int = 3) -> None:
        self.epoch, self.position = epoch, position

    def __len__(self) -> int:
        return 10

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0


def test_the_epoch_is_a_shared_component_and_format_1_manifests_still_give_it(tmp_path):
    path = save(tmp_path, epoch=Component(LoaderEpoch(FakeLoader(4)), "shared"))
    manifest = json.loads((path / "meta.json").read_text())
    assert manifest["format"] == 2 and "epoch" not in manifest
    loader = FakeLoader()
    Checkpointer(tmp_path, SINGLE, 2, {"epoch": Component(LoaderEpoch(loader), "shared")}).load(path)
    assert loader.epoch == 4

    # A format-1 checkpoint: no format field, the epoch in the manifest, no epoch component.
    old = save(tmp_path, step=5, progress=Component(TrainProgress(step=5), "shared"))
    manifest = json.loads((old / "meta.json").read_text())
    del manifest["format"]
    (old / "meta.json").write_text(json.dumps({**manifest, "epoch": 7}))
    loader = FakeLoader()
    Checkpointer(tmp_path, SINGLE, 2, {"epoch": Component(LoaderEpoch(loader), "shared")}).load(old)
    assert loader.epoch == 7

    (old / "meta.json").write_text(json.dumps({**manifest, "format": 3}))
    with pytest.raises(CheckpointError, match=r"manifest format 3; this partialfc reads formats 1 to 2"):
        Checkpointer(tmp_path, SINGLE, 2, {}).load(old)


def test_resume_hashes_each_file_once_and_again_when_it_changed(tmp_path, monkeypatch):
    """newest_loadable hashes the files it needs; load() reads them without hashing them a second time
    (a resume of a large centre shard reads it twice, not three times), unless a file changed since."""
    import partialfc.training.checkpoint as checkpoint

    components = {"model": Component(nn.Linear(3, 3), "shared"), "centres": Component(PartialFC(4, 6, 1.0), "sharded")}
    path = Checkpointer(tmp_path, SINGLE, 2, components).save(3)
    hashed: list[str] = []
    real_verify = checkpoint.verify_file
    monkeypatch.setattr(
        checkpoint, "verify_file", lambda file, manifest: (hashed.append(file.name), real_verify(file, manifest))
    )
    resuming = Checkpointer(tmp_path, SINGLE, 2, components)
    assert resuming.newest_loadable() == path
    resuming.load(path)
    assert sorted(hashed) == sorted(["trainer.pt", "rank-00000-of-00001.pt", "centres-00000-of-00001.pt"])

    hashed.clear()
    assert resuming.newest_loadable() == path
    trainer_file = path / "trainer.pt"
    stat = trainer_file.stat()
    os.utime(trainer_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched after it was verified
    resuming.load(path)
    assert hashed.count("trainer.pt") == 2 and hashed.count("centres-00000-of-00001.pt") == 1, hashed
    hashed.clear()
    Checkpointer(tmp_path, SINGLE, 2, components).load(path)  # no newest_loadable: every file is hashed
    assert len(hashed) == 3, hashed
