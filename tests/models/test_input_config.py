"""InputConfig: the one definition of how pixels become model input, carried by every model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from partialfc.models import InputConfig, create_model, input_config_of, list_models, register_model
from partialfc.models.registry import _REGISTRY


def test_default_maps_pixels_to_minus_one_one_in_nchw():
    pixels = torch.tensor([0, 255, 51], dtype=torch.uint8).repeat(2, 4, 5, 1)  # [2, 4, 5, 3], RGB
    x = InputConfig().normalize(pixels)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.all(x[:, 0] == -1.0) and torch.all(x[:, 1] == 1.0)
    assert torch.allclose(x[:, 2], torch.tensor((51 - 127.5) / 127.5))


def test_mean_and_std_apply_per_channel_into_out():
    config = InputConfig(size=(2, 2), mean=(0.0, 100.0, 200.0), std=(1.0, 2.0, 4.0))
    pixels = torch.full((1, 2, 2, 3), 200, dtype=torch.uint8)
    out = torch.empty(1, 3, 2, 2)
    assert config.normalize(pixels, out=out) is out
    assert out[0, :, 0, 0].tolist() == [200.0, 50.0, 0.0]


def test_numpy_views_and_tensors_give_the_same_bits():
    config = InputConfig(mean=(1.0, 2.5, 200.0), std=(3.0, 0.7, 55.0))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    mirrored = pixels[:, :, ::-1]  # negative strides: what the PyTorch loader passes for a flipped image
    expected = config.normalize(torch.from_numpy(np.ascontiguousarray(mirrored)))
    assert torch.equal(config.normalize(mirrored), expected)
    out = torch.empty(3, 3, 5, 6)
    config.normalize(mirrored[:1], out=out[1:2])
    assert torch.equal(out[1], expected[0])
    reference = (
        torch.from_numpy(pixels).permute(0, 3, 1, 2).double() - torch.tensor(config.mean).view(1, 3, 1, 1)
    ) / torch.tensor(config.std).view(1, 3, 1, 1)
    assert torch.allclose(config.normalize(pixels).double(), reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channel_order": "BGR"}, "channel_order"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"mean": (1.0,)}, "mean"),
        ({"size": (0, 112)}, "size"),
    ],
)
def test_invalid_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InputConfig(**kwargs)


@pytest.mark.parametrize(
    "pixels",
    [
        torch.zeros(1, 4, 4, 3),
        torch.zeros(4, 4, 3, dtype=torch.uint8),
        torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        np.zeros((1, 4, 4, 3), np.float32),
    ],
)
def test_normalize_refuses_anything_but_uint8_nhwc(pixels):
    with pytest.raises(ValueError, match=r"uint8 pixels \[B, H, W, 3\]"):
        InputConfig().normalize(pixels)


def test_every_model_carries_its_input_config():
    for name in list_models():
        with torch.device("meta"):  # shapes only: the heavy models need not be initialised
            model = create_model(name, embedding_size=64)
        assert model.input_config == InputConfig(), name


def test_a_factory_may_set_its_own_input_config():
    own = InputConfig(size=(96, 96))

    def small_inputs(embedding_size: int = 512) -> nn.Module:
        model = nn.Identity()
        model.input_config = own
        return model

    register_model(small_inputs)
    try:
        assert create_model("small_inputs").input_config is own
    finally:
        del _REGISTRY["small_inputs"]


def test_input_config_of_reads_the_models_config_and_refuses_another_type():
    own = InputConfig(size=(96, 96))
    model = nn.Identity()
    model.input_config = own
    assert input_config_of(model) is own
    model.input_config = (96, 96)
    with pytest.raises(TypeError, match=r"Identity.input_config is a tuple, not an InputConfig"):
        input_config_of(model)
