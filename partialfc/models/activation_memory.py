"""Activation memory of a backbone, measured without memory: the tensors autograd saves for backward.

Activations dominate a GPU's memory for deep backbones at the usual batch (r100 at 128 images per
GPU). Their size depends on the backbone, the input size and the autocast dtype only, so it is
measured by running the forward on fake tensors (shapes and dtypes, no storage) with a
``saved_tensors_hooks`` that adds up every distinct storage autograd keeps, parameters excluded
(they are counted with the weights). Two batch sizes give the per-image slope and the constant part
(batch-norm statistics), so any batch is one multiplication. On real tensors the same hook gives the
same bytes (tests/models/test_activation_memory.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from partialfc.models.input_config import input_config_of
from partialfc.models.precision import autocast_dtype
from partialfc.models.registry import create_model


def saved_bytes(model: nn.Module, images: torch.Tensor, amp: str) -> int:
    """Bytes of the distinct storages that ``model(images)`` saves for backward, parameters excluded."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    dtype = autocast_dtype(amp)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
    ):
        model(images)
    return sum(saved.values())


def activation_bytes(
    backbone: str, embedding_size: int, amp: str, batch: int, options: Mapping[str, object] | None = None
) -> int:
    """Bytes a training forward of ``batch`` images keeps for backward (fake tensors: no memory, no compute).

    ``options`` go to the backbone's factory: those that shape a training forward (a ViT's patch masking
    keeps fewer tokens through its blocks) change the figure."""
    with FakeTensorMode():
        model = create_model(backbone, embedding_size=embedding_size, **(options or {}))
        size = input_config_of(model).size
        one, two = (saved_bytes(model, torch.empty(n, 3, *size), amp) for n in (2, 4))
    per_image = (two - one) // 2
    return one + per_image * (batch - 2)
