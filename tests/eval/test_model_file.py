"""The model file: old files still load, save is byte-compatible, init-from reads once, ONNX metadata round trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partialfc.models import create_model, register_model
from partialfc.models.model_file import (
    ModelFileError,
    WeightsMismatch,
    init_from,
    load_model,
    load_strict,
    onnx_metadata,
    read_onnx_input_config,
    save_model,
)
from partialfc.models.registry import _REGISTRY

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("tiny", embedding_size=32)


def _save_as_before(path: Path, model: torch.nn.Module) -> None:
    """What the trainer wrote before model_file existed: a temporary file, renamed."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"backbone": "tiny", "embedding_size": 32, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)


def _assert_same_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for key, tensor in expected.items():
        assert torch.equal(tensor, got[key]), key


def test_a_model_file_written_before_this_module_loads(tiny, tmp_path):
    path = tmp_path / "model.pt"
    _save_as_before(path, tiny)
    trained = load_model(path)
    assert (trained.name, trained.embedding_size, trained.backbone.training) == ("tiny", 32, False)
    _assert_same_weights(tiny.state_dict(), trained.backbone.state_dict())


def test_save_model_writes_the_same_bytes_as_before(tiny, tmp_path):
    (tmp_path / "old").mkdir(), (tmp_path / "new").mkdir()
    _save_as_before(tmp_path / "old" / "model.pt", tiny)
    save_model(tmp_path / "new" / "model.pt", "tiny", 32, tiny.state_dict())
    assert (tmp_path / "new" / "model.pt").read_bytes() == (tmp_path / "old" / "model.pt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["model.pt"]  # no temporary left


def test_save_model_refuses_non_finite_weights(tiny, tmp_path):
    weights = tiny.state_dict()
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    with pytest.raises(FloatingPointError, match=rf"model.pt not written: 1 backbone tensors are not finite \({name}"):
        save_model(tmp_path / "model.pt", "tiny", 32, weights)
    assert not any(tmp_path.iterdir())


def test_load_strict_names_missing_unexpected_and_misshapen_weights(tiny):
    state = dict(tiny.state_dict())
    dropped = next(iter(state))
    del state[dropped]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        WeightsMismatch, match=rf"^1 missing keys \['{dropped}'\], 1 unexpected keys \['extra.weight'\]$"
    ):
        load_strict(create_model("tiny", embedding_size=32), state)
    with pytest.raises(WeightsMismatch, match=r"size mismatch for head.fc.weight") as raised:
        load_strict(create_model("tiny", embedding_size=64), tiny.state_dict())
    assert "\n" not in str(raised.value)


@pytest.fixture
def counted_loads(monkeypatch) -> list[Path]:
    """Every path torch.load opens, in order."""
    paths, load = [], torch.load

    def counting(path, *args, **kwargs):
        paths.append(Path(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return paths


def test_init_from_reads_a_model_file_or_a_bare_state_dict_once(tiny, tmp_path, counted_loads):
    _save_as_before(tmp_path / "model.pt", tiny)
    started = create_model("tiny", embedding_size=32)
    init_from(tmp_path / "model.pt", started, "tiny", 32)
    assert counted_loads == [tmp_path / "model.pt"]
    _assert_same_weights(tiny.state_dict(), started.state_dict())

    bare = {
        k: v + 1 if v.is_floating_point() else v for k, v in tiny.state_dict().items()
    }  # insightface's backbone.pth
    torch.save(bare, tmp_path / "backbone.pth")
    init_from(tmp_path / "backbone.pth", started, "tiny", 32)
    assert counted_loads == [tmp_path / "model.pt", tmp_path / "backbone.pth"]
    _assert_same_weights(bare, started.state_dict())


def test_init_from_errors_name_the_file_and_the_problem(tiny, tmp_path):
    _save_as_before(tmp_path / "model.pt", tiny)
    target = create_model("tiny", embedding_size=32)
    with pytest.raises(
        ModelFileError,
        match=r"model.pt: holds backbone 'tiny' with embedding size 32; this job has "
        r"model.backbone='tiny', model.embedding_size=64",
    ):
        init_from(tmp_path / "model.pt", create_model("tiny", embedding_size=64), "tiny", 64)
    state = dict(tiny.state_dict())
    del state["head.fc.weight"]
    torch.save({"backbone": "tiny", "embedding_size": 32, "state_dict": state}, tmp_path / "partial.pt")
    with pytest.raises(
        ModelFileError,
        match=r"partial.pt: weights do not fit backbone 'tiny' with embedding size 32: "
        r"1 missing keys \['head.fc.weight'\]",
    ):
        init_from(tmp_path / "partial.pt", target, "tiny", 32)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ModelFileError, match=r"partial.pth: does not fit model.backbone='tiny': 1 missing keys"):
        init_from(tmp_path / "partial.pth", target, "tiny", 32)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(
        ModelFileError,
        match=r"list.pt: neither a partialfc model.pt \(keys \['backbone', "
        r"'embedding_size', 'state_dict'\]\) nor a state_dict of tensors \(found list\)",
    ):
        init_from(tmp_path / "list.pt", target, "tiny", 32)
    with pytest.raises(ModelFileError, match=r"none.pt: cannot read it: "):
        init_from(tmp_path / "none.pt", target, "tiny", 32)


def test_load_model_recognises_a_bare_state_dict(tiny, tmp_path):
    """arcface_torch's model.pt / backbone.pth: torch.save of the state dict alone; ``backbone`` names it too."""
    torch.save(tiny.state_dict(), tmp_path / "backbone.pth")
    trained = load_model(tmp_path / "backbone.pth")
    assert (trained.name, trained.embedding_size, trained.backbone.training) == ("tiny", 32, False)
    _assert_same_weights(tiny.state_dict(), trained.backbone.state_dict())
    assert load_model(tmp_path / "backbone.pth", "tiny").name == "tiny"
    with pytest.raises(ModelFileError, match=r"backbone.pth: a bare state dict: does not fit backbone 'r18': "):
        load_model(tmp_path / "backbone.pth", "r18")
    _save_as_before(tmp_path / "model.pt", tiny)
    with pytest.raises(ModelFileError, match=r"model.pt: holds backbone 'tiny', not 'mbf' \(--backbone\)"):
        load_model(tmp_path / "model.pt", "mbf")


def test_init_from_refuses_a_bare_state_dict_of_another_backbone_or_embedding_size(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(ModelFileError) as raised:
        init_from(tmp_path / "backbone.pth", create_model("face_resnet20", embedding_size=32), "face_resnet20", 32)
    assert str(raised.value).startswith(
        f"{tmp_path / 'backbone.pth'}: a bare state dict of backbone 'tiny' (embedding size 32); this job has "
        "model.backbone='face_resnet20': "
    )
    with pytest.raises(
        ModelFileError,
        match=r"backbone.pth: a bare state dict of 'tiny' with embedding size 32; this job has "
        r"model.embedding_size=64$",
    ):
        init_from(tmp_path / "backbone.pth", create_model("tiny", embedding_size=64), "tiny", 64)


def test_init_from_takes_a_bare_state_dict_that_fits_model_backbone_among_others(tiny, tmp_path):
    """Keys and shapes that two registered backbones share: model.backbone names which, so no error."""

    def tiny_twin(embedding_size: int = 512) -> torch.nn.Module:
        return create_model("tiny", embedding_size)

    register_model(tiny_twin)
    try:
        torch.save(tiny.state_dict(), tmp_path / "backbone.pth")
        started = create_model("tiny", embedding_size=32)
        init_from(tmp_path / "backbone.pth", started, "tiny_twin", 32)
        _assert_same_weights(tiny.state_dict(), started.state_dict())
        with pytest.raises(ModelFileError, match=r"fit several registered backbones \(tiny, tiny_twin\)"):
            load_model(tmp_path / "backbone.pth")
    finally:
        del _REGISTRY["tiny_twin"]


def test_onnx_metadata_round_trips_the_input_config(tiny, tmp_path):
    _save_as_before(tmp_path / "model.pt", tiny)
    trained = load_model(tmp_path / "model.pt")
    metadata = onnx_metadata(trained, tmp_path / "model.pt")
    assert metadata["backbone"] == "tiny" and metadata["embedding_size"] == "32"
    assert metadata["producer"] == "partialfc.export from model.pt"
    assert read_onnx_input_config("model.onnx", metadata) == tiny.input_config
    with pytest.raises(ModelFileError, match=r"x.onnx: ONNX metadata lacks \['mean', 'std'\]"):
        read_onnx_input_config("x.onnx", {k: v for k, v in metadata.items() if k not in ("mean", "std")})
    with pytest.raises(ModelFileError, match=r"x.onnx: bad input metadata"):
        read_onnx_input_config("x.onnx", {**metadata, "input_size": "112"})


def test_no_library_module_imports_a_command_for_the_model_file():
    """The trainer, verification and data cleaning load no CLI module; embed and export not each other."""
    check = (
        "import sys\n"
        "import partialfc.training.trainer, partialfc.eval.verification, partialfc.clean\n"
        "clis = {'partialfc.embed', 'partialfc.export', 'partialfc.eval.__main__', 'partialfc.train'}\n"
        "assert not clis & set(sys.modules), clis & set(sys.modules)\n"
        "import partialfc.export\n"
        "assert 'partialfc.embed' not in sys.modules\n"
    )
    for code in (check, "import sys, partialfc.embed\nassert 'partialfc.export' not in sys.modules\n"):
        run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
