"""A model file never holds a non-finite weight, not even one.

A single NaN or inf among a backbone's weights poisons every embedding that passes through it:
verification then reads NaN similarities and the export carries the fault to inference. So
``save_model`` refuses the whole file when any one element of any floating-point tensor is not
finite, naming the file and the tensor, and leaves nothing behind; a finite model saves and loads
back bit for bit.
"""

from __future__ import annotations

import re

import pytest
import torch

from partialfc.models import create_model
from partialfc.models.model_file import load_model, save_model


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(create_model("tiny", embedding_size=32).state_dict())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_element_refuses_the_model_file(weights, tmp_path, bad):
    name = [key for key, tensor in weights.items() if tensor.is_floating_point() and tensor.numel() > 1][-1]
    poisoned = weights[name].clone()
    poisoned.view(-1)[poisoned.numel() // 2] = bad  # one element of one tensor; every other weight is finite
    path = tmp_path / "model.pt"
    with pytest.raises(
        FloatingPointError,
        match=rf"^{re.escape(str(path))} not written: 1 backbone tensors are not finite \({re.escape(name)}, \.\.\.\)$",
    ):
        save_model(path, "tiny", 32, {**weights, name: poisoned})
    assert not any(tmp_path.iterdir())  # neither the model file nor its temporary


def test_a_finite_model_file_saves_and_loads_back(weights, tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, "tiny", 32, weights)
    loaded = load_model(path).backbone.state_dict()
    assert loaded.keys() == weights.keys()
    for key, tensor in weights.items():
        assert torch.equal(loaded[key], tensor), key
