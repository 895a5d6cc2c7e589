"""arcface_torch's weight files as they are: bare state dicts in insightface's key layout, given to the eval,
embed and export commands without a backbone name, and the export back to that layout.

The ViT weights come from the restatement of insightface's module (tests/arcface_torch_reference.py), so
its forward is the reference; the IResNet and MobileFaceNet weights are those of our modules, whose keys
and shapes equal the restated layouts (asserted here too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from arcface_torch_reference import (
    arcface_embeddings,
    arcface_input,
    arcface_layout,
    arcface_vit,
    init_like_training,
    load_into_restatement,
    rgb_images,
)
from torch import nn

from partialfc import embed, export
from partialfc.data.image import encode_jpeg
from partialfc.data.verification import write_verification_bin
from partialfc.eval import __main__ as eval_cli
from partialfc.eval.registry import PROTOCOLS
from partialfc.eval.sources import open_image_source
from partialfc.models import create_model
from partialfc.models.iresnet import IResNet
from partialfc.models.model_file import ModelFileError, save_model
from partialfc.models.registry import _REGISTRY, register_model

EMBEDDING = 64


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A folder of two 112x112 JPEG crops, and their decoded pixels in the order embed lists them."""
    folder = tmp_path_factory.mktemp("crops")
    for k, image in enumerate(rgb_images(2, seed=5).numpy()):
        (folder / f"{k}.jpg").write_bytes(encode_jpeg(image))
    return folder, torch.from_numpy(next(open_image_source(folder).batches(2, 0, 2)))


@pytest.fixture(scope="module")
def pairs_bin(tmp_path_factory) -> Path:
    """A verification .bin of 10 pairs of noise crops (one pair per fold)."""
    images = [encode_jpeg(image) for image in rgb_images(20, seed=6).numpy()]
    return write_verification_bin(tmp_path_factory.mktemp("bin") / "pairs.bin", images, [k % 2 == 0 for k in range(10)])


def arcface_module(name: str) -> nn.Module:
    """Random trained-scale weights in insightface's layout: the restated ViT itself, or our IResNet /
    MobileFaceNet, whose state dict has the restated keys and shapes."""
    module = arcface_vit(name, EMBEDDING) if name.startswith("vit_") else create_model(name, EMBEDDING)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == arcface_layout(name, EMBEDDING)
    return init_like_training(module, seed=1)


@pytest.fixture(scope="module")
def bare_files(tmp_path_factory) -> dict[str, tuple[Path, nn.Module]]:
    """``backbone.pth`` as train_v2.py saves it (``torch.save(backbone.state_dict())``) for vit_t, r18 and
    mbf, each with the module it came from."""
    folder = tmp_path_factory.mktemp("arcface")
    files = {}
    for name in ("vit_t", "r18", "mbf"):
        module = arcface_module(name)
        path = folder / f"{name}_backbone.pth"
        torch.save(module.state_dict(), path)
        files[name] = (path, module)
    return files


@pytest.mark.parametrize("name", ["vit_t", "r18", "mbf"])
def test_embed_takes_a_bare_state_dict_without_a_backbone_name(name, bare_files, crops, tmp_path, capsys):
    (path, module), (folder, pixels) = bare_files[name], crops
    assert embed.main([str(folder), "--model", str(path), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    assert f"pytorch {name}," in capsys.readouterr().out
    got = np.load(tmp_path / "e.npy")
    expected = arcface_embeddings(module, pixels).numpy()  # insightface's normalisation and flip sum
    assert got.shape == (2, EMBEDDING) and np.abs(got - expected).max() <= 1e-5


def test_every_eval_command_takes_a_bare_state_dict(bare_files, crops):
    """verify, pairs and identify open --model through the same embedder: each recognises the backbone and
    passes --backbone on."""
    path, module = bare_files["mbf"]
    pixels = crops[1]
    with torch.no_grad():
        expected = module(arcface_input(pixels))
    for command, protocol in PROTOCOLS.items():
        sources = {"verify": ["x.bin"], "pairs": ["--data", "x"], "identify": ["--data", "x"]}[command]
        args = eval_cli.build_parser().parse_args([command, *sources, "--model", str(path), "--device", "cpu"])
        embedder = protocol.embedder_from_arguments(args)
        assert embedder.description == f"model {path} (pytorch mbf, cpu)", command
        assert (embedder(pixels) - expected).abs().max() <= 1e-5 * expected.abs().max()
        args = eval_cli.build_parser().parse_args([command, *sources, "--model", str(path), "--backbone", "r18"])
        with pytest.raises(ModelFileError, match=r"a bare state dict: does not fit backbone 'r18': "):
            protocol.embedder_from_arguments(args)  # --backbone reaches the loader


def test_verify_runs_on_a_bare_state_dict_and_refuses_a_backbone_its_model_file_denies(
    bare_files, pairs_bin, tmp_path, capsys
):
    path, module = bare_files["mbf"]
    assert eval_cli.main(["verify", str(pairs_bin), "--model", str(path), "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["source"] == f"model {path} (pytorch mbf, cpu)" and payload["results"]["pairs"]["pairs"] == 10
    save_model(tmp_path / "model.pt", "mbf", EMBEDDING, module.state_dict())
    assert eval_cli.main(["verify", str(pairs_bin), "--model", str(tmp_path / "model.pt"), "--backbone", "r18"]) == 2
    assert "model.pt: holds backbone 'mbf', not 'r18' (--backbone)" in capsys.readouterr().err


def test_onnx_export_of_a_bare_vit_state_dict_embeds_as_its_module(bare_files, tmp_path, capsys):
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    path, module = bare_files["vit_t"]
    out = tmp_path / "vit_t.onnx"
    assert export.main(["onnx", str(path), "--out", str(out)]) == 0
    assert "onnx.checker passed" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = arcface_input(rgb_images(3, seed=7))
    with torch.no_grad():
        expected = module(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
    metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert (metadata["backbone"], metadata["embedding_size"]) == ("vit_t", str(EMBEDDING))


@pytest.mark.parametrize("name", ["vit_t", "r18", "mbf"])
def test_export_arcface_torch_writes_what_get_model_loads_strictly(name, bare_files, tmp_path, capsys):
    """From a partialfc model.pt: the bare state dict, loaded strictly by the restated get_model(name)."""
    save_model(tmp_path / "model.pt", name, EMBEDDING, bare_files[name][1].state_dict())
    out = tmp_path / "backbone.pth"
    assert export.main(["arcface-torch", str(tmp_path / "model.pt"), "--out", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"{out}: {name} state dict for arcface_torch: get_model('{name}', num_features={EMBEDDING})"
        f".load_state_dict(torch.load('{out}'), strict=True)\n"
    )
    written = torch.load(out, weights_only=True)
    load_into_restatement(name, EMBEDDING, written)
    ours = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(written[key], ours[key]) for key in ours)


def test_export_arcface_torch_names_vit_ls_get_model_entry_and_refuses_own_backbones(tmp_path, capsys):
    with torch.device("meta"):
        vit_l = create_model("vit_l", EMBEDDING)
    assert export.ARCFACE_TORCH_NAMES["vit_l"] == "vit_l_dp005_mask_005"
    assert {k: tuple(v.shape) for k, v in vit_l.state_dict().items()} == arcface_layout("vit_l_dp005_mask_005", 64)
    save_model(tmp_path / "tiny.pt", "tiny", 32, create_model("tiny", 32).state_dict())
    assert export.main(["arcface-torch", str(tmp_path / "tiny.pt"), "--out", str(tmp_path / "tiny.pth")]) == 2
    assert "tiny.pt: backbone 'tiny' has no arcface_torch counterpart (those that do: r18, " in capsys.readouterr().err
    assert not (tmp_path / "tiny.pth").exists()


@pytest.fixture
def r18_twin():
    """A second registered backbone with r18's keys and shapes."""

    def r18_twin(embedding_size: int = 512) -> nn.Module:
        return IResNet([2, 2, 2, 2], embedding_size)

    register_model(r18_twin)
    yield "r18_twin"
    del _REGISTRY["r18_twin"]


def test_ambiguous_weights_ask_for_backbone_in_one_line_and_take_it(r18_twin, bare_files, crops, tmp_path, capsys):
    (path, module), (folder, pixels) = bare_files["r18"], crops
    out = str(tmp_path / "e")
    assert embed.main([str(folder), "--model", str(path), "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"{path}: a bare state dict: its keys and shapes fit several registered backbones (r18, r18_twin); "
        "say which with --backbone NAME" in err
    )
    assert export.main(["arcface-torch", str(path), "--out", out + ".pth"]) == 2
    assert "(r18, r18_twin); say which with --backbone NAME" in capsys.readouterr().err
    assert embed.main([str(folder), "--model", str(path), "--out", out, "--quiet", "--backbone", "r18_twin"]) == 0
    assert "pytorch r18_twin," in capsys.readouterr().out
    assert np.abs(np.load(out + ".npy") - arcface_embeddings(module, pixels).numpy()).max() <= 1e-5
    assert export.main(["arcface-torch", str(path), "--out", out + ".pth", "--backbone", "r18"]) == 0
