"""Which registered backbone a bare state dict is, from its keys and shapes alone.

A bare state dict (arcface_torch's ``model.pt`` or a released ``backbone.pth``: ``torch.save`` of
``backbone.state_dict()``) names neither its architecture nor its embedding size. Both are read
from the tensors: a registered backbone fits when its state dict, built on the meta device (no
memory), has exactly the same keys and the same shape under each key at some embedding size. Keys
say the blocks per stage and the depth (``layer3.13``, ``blocks.23``), shapes the widths, and the
last layer the embedding size. Each backbone's layout is built at embedding sizes 1 and 2 once per
process: the dimensions that differ between the two grow with the embedding size, so one file
tensor under such a key gives it. Every registered backbone is covered as it is registered.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from partialfc.models.registry import create_model, list_models

__all__ = ["Recognised", "UnrecognisedWeights", "fitting_backbones", "layout_difference", "recognise_backbone"]

Shape = tuple[int, ...]


class UnrecognisedWeights(ValueError):
    """No registered backbone, or more than one, fits a state dict; one line says which and why."""


@dataclass(frozen=True)
class Recognised:
    """A registered backbone and the embedding size at which a state dict fits it exactly."""

    name: str
    embedding_size: int


@dataclass(frozen=True)
class _Layout:
    """A backbone's keys and shapes at embedding size 1, and how each shape grows per unit of embedding size."""

    base: dict[str, Shape]
    growth: dict[str, Shape]  # only the keys whose shape depends on the embedding size

    def embedding_size(self, shapes: Mapping[str, Shape]) -> int | None:
        """The embedding size the first size-dependent tensor of ``shapes`` gives, if it gives a whole one."""
        for key, growth in self.growth.items():
            if key not in shapes or len(shapes[key]) != len(growth):
                return None
            for found, base, step in zip(shapes[key], self.base[key], growth, strict=True):
                if step:
                    size, remainder = divmod(found - base, step)
                    return size + 1 if remainder == 0 and size >= 0 else None
        return None

    def at(self, embedding_size: int) -> dict[str, Shape]:
        """Every key's shape at ``embedding_size``."""
        grown = {
            key: tuple(b + g * (embedding_size - 1) for b, g in zip(self.base[key], growth, strict=True))
            for key, growth in self.growth.items()
        }
        return {**self.base, **grown}


def _shapes(name: str, embedding_size: int) -> dict[str, Shape]:
    with torch.device("meta"):
        return {key: tuple(t.shape) for key, t in create_model(name, embedding_size).state_dict().items()}


@functools.cache
def _layout(name: str) -> _Layout:
    one, two = _shapes(name, 1), _shapes(name, 2)
    growth = {
        key: tuple(b - a for a, b in zip(shape, two[key], strict=True))
        for key, shape in one.items()
        if shape != two[key]
    }
    return _Layout(one, growth)


def _shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
    return {key: tuple(tensor.shape) for key, tensor in state_dict.items()}


def _fit(name: str, shapes: Mapping[str, Shape]) -> Recognised | None:
    layout = _layout(name)
    if shapes.keys() != layout.base.keys():
        return None
    size = layout.embedding_size(shapes)
    return Recognised(name, size) if size is not None and layout.at(size) == dict(shapes) else None


def fitting_backbones(state_dict: Mapping[str, torch.Tensor]) -> list[Recognised]:
    """Every registered backbone (sorted by name) whose state dict has exactly these keys and shapes."""
    shapes = _shapes_of(state_dict)
    return [fit for name in list_models() if (fit := _fit(name, shapes)) is not None]


def layout_difference(name: str, state_dict: Mapping[str, torch.Tensor]) -> str:
    """How ``state_dict`` differs from backbone ``name`` (at the embedding size its last layer gives, else 512):
    missing and unexpected keys, then differing shapes, at most 4 of each."""
    shapes, layout = _shapes_of(state_dict), _layout(name)
    expected = layout.at(layout.embedding_size(shapes) or 512)
    missing = [key for key in expected if key not in shapes]
    unexpected = [key for key in shapes if key not in expected]
    misshapen = [
        f"{key} {list(shapes[key])} (expected {list(shape)})"
        for key, shape in expected.items()
        if key in shapes and shapes[key] != shape
    ]
    parts = [
        f"{len(items)} {kind} {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
        for kind, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ:", misshapen))
        if items
    ]
    return "; ".join(parts) or "no difference"


def _nearest(shapes: Mapping[str, Shape]) -> str:
    """The registered backbone sharing the most keys with ``shapes`` (the fewest missing + unexpected)."""
    return min(list_models(), key=lambda name: len(shapes.keys() ^ _layout(name).base.keys()))


def recognise_backbone(state_dict: Mapping[str, torch.Tensor], backbone: str | None = None) -> Recognised:
    """The registered backbone and embedding size of a bare state dict.

    ``backbone`` names it instead, for keys and shapes that several backbones share; it must fit too.
    Otherwise exactly one registered backbone must fit: none names the nearest and how it differs,
    several are listed with a request for ``--backbone NAME``.
    """
    shapes = _shapes_of(state_dict)
    if backbone is not None:
        if backbone not in list_models():
            raise UnrecognisedWeights(f"unknown backbone {backbone!r}; known: {', '.join(list_models())}")
        fit = _fit(backbone, shapes)
        if fit is None:
            raise UnrecognisedWeights(f"does not fit backbone {backbone!r}: {layout_difference(backbone, state_dict)}")
        return fit
    fits = fitting_backbones(state_dict)
    if len(fits) == 1:
        return fits[0]
    if fits:
        names = ", ".join(fit.name for fit in fits)
        raise UnrecognisedWeights(
            f"its keys and shapes fit several registered backbones ({names}); say which with --backbone NAME"
        )
    nearest = _nearest(shapes)
    raise UnrecognisedWeights(
        f"{len(shapes)} tensors that fit no registered backbone; nearest {nearest!r}: "
        f"{layout_difference(nearest, state_dict)}"
    )
