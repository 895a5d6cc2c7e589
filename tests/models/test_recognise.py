"""A bare state dict's backbone and embedding size, from its keys and shapes: every arcface_torch network
(restated in tests/arcface_torch_reference.py), every registered backbone, ambiguity and mismatches."""

from __future__ import annotations

import pytest
import torch
from arcface_torch_reference import ARCFACE_VITS, IRESNET_LAYERS, arcface_layout
from torch import nn

from partialfc.models import create_model, list_models
from partialfc.models.iresnet import IResNet
from partialfc.models.recognise import Recognised, UnrecognisedWeights, fitting_backbones, recognise_backbone
from partialfc.models.registry import _REGISTRY, register_model

# arcface_torch get_model name -> the registered backbone that is the same network.
ARCFACE_NAMES = {
    **{name: name for name in (*IRESNET_LAYERS, "mbf", "mbf_large")},
    **{name: name.split("_")[0] + "_" + name.split("_")[1] for name in ARCFACE_VITS},
}


def meta_weights(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors of ``layout``'s shapes on the meta device: recognition reads shapes only."""
    return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}


def own_weights(name: str, embedding_size: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return create_model(name, embedding_size=embedding_size).state_dict()


@pytest.mark.parametrize("arcface_name", list(ARCFACE_NAMES))
@pytest.mark.parametrize("embedding_size", [512, 128])
def test_every_arcface_torch_network_is_recognised_with_its_embedding_size(arcface_name, embedding_size):
    weights = meta_weights(arcface_layout(arcface_name, embedding_size))
    expected = Recognised(ARCFACE_NAMES[arcface_name], embedding_size)
    assert fitting_backbones(weights) == [expected]
    assert recognise_backbone(weights) == expected


@pytest.mark.parametrize("name", list_models())
def test_every_registered_backbone_recognises_its_own_state_dict(name):
    assert recognise_backbone(own_weights(name, 96)) == Recognised(name, 96)


@pytest.fixture
def r18_twin():
    """A second registered backbone with r18's keys and shapes (another name for the same network)."""

    def r18_twin(embedding_size: int = 512) -> nn.Module:
        return IResNet([2, 2, 2, 2], embedding_size)

    register_model(r18_twin)
    yield "r18_twin"
    del _REGISTRY["r18_twin"]


def test_keys_and_shapes_that_several_backbones_share_ask_for_a_name(r18_twin):
    weights = meta_weights(arcface_layout("r18", 512))
    assert [fit.name for fit in fitting_backbones(weights)] == ["r18", "r18_twin"]
    with pytest.raises(UnrecognisedWeights) as raised:
        recognise_backbone(weights)
    assert str(raised.value) == (
        "its keys and shapes fit several registered backbones (r18, r18_twin); say which with --backbone NAME"
    )
    assert recognise_backbone(weights, "r18_twin") == Recognised("r18_twin", 512)


def test_a_state_dict_that_fits_nothing_names_the_nearest_backbone_and_the_difference():
    layout = arcface_layout("r50", 512)
    del layout["fc.bias"]
    layout["layer3.14.conv1.weight"] = (256, 256, 3, 3)  # a 15th block begun in stage 3
    with pytest.raises(UnrecognisedWeights) as raised:
        recognise_backbone(meta_weights(layout))
    assert str(raised.value) == (
        f"{len(layout)} tensors that fit no registered backbone; nearest 'r50': 1 missing keys fc.bias; "
        "1 unexpected keys layer3.14.conv1.weight"
    )


def test_a_width_or_embedding_size_that_differs_is_named_with_both_shapes():
    layout = arcface_layout("vit_s", 512)
    layout["pos_embed"] = (1, 100, 512)  # another patch grid
    with pytest.raises(UnrecognisedWeights, match=r"nearest 'vit_s': 1 shapes differ: pos_embed \[1, 100, 512\] "):
        recognise_backbone(meta_weights(layout))
    layout = arcface_layout("mbf", 512)
    layout["features.layers.3.running_var"] = (256,)  # the last BN disagrees with the FC's 512
    with pytest.raises(UnrecognisedWeights, match=r"features.layers.3.running_var \[256\] \(expected \[512\]\)"):
        recognise_backbone(meta_weights(layout))


def test_a_named_backbone_must_fit_and_exist():
    weights = meta_weights(arcface_layout("r34", 512))
    with pytest.raises(UnrecognisedWeights, match=r"^does not fit backbone 'r50': 144 missing keys layer3\.6\.bn1\."):
        recognise_backbone(weights, "r50")
    with pytest.raises(UnrecognisedWeights, match=r"^unknown backbone 'r51'; known: face_resnet20, "):
        recognise_backbone(weights, "r51")
