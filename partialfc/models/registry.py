"""Name -> constructor table, so configs and CLIs pick a backbone by string (timm-style)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import TypedDict

from torch import nn

from partialfc.models.input_config import InputConfig

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


class BackboneOptions(TypedDict, total=False):
    """Keyword options every registered backbone's factory accepts, so each factory's signature is checked."""

    dropout: float
    fp16: bool


def register_model(factory: ModelFactory) -> ModelFactory:
    """Register ``factory(embedding_size=512, **kwargs)`` under its function name.

    Registering a second model under a taken name is an error rather than a silent override.
    """
    name = factory.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def factory_options(name: str) -> frozenset[str]:
    """The keyword options backbone ``name``'s factory declares (``**options: Unpack[...Options]``), so that
    a config can refuse an option a backbone would not use, naming the field."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    declared = typing.get_type_hints(factory).get("options")
    if declared is None:
        return frozenset()
    (options,) = typing.get_args(declared)
    return frozenset(options.__required_keys__ | options.__optional_keys__)


def create_model(name: str, embedding_size: int = 512, **kwargs: object) -> nn.Module:
    """Build backbone ``name`` mapping ``[B, 3, 112, 112]`` images to ``[B, embedding_size]``.

    Extra keyword arguments go to the model's constructor (``dropout``, ``fp16``, ...). The model
    carries ``model.input_config`` (:class:`InputConfig`): the default unless its factory set one.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    model = factory(embedding_size=embedding_size, **kwargs)
    if not isinstance(getattr(model, "input_config", None), InputConfig):
        # torch annotates Module.__setattr__'s value as Tensor | Module; other values become plain attributes.
        model.input_config = InputConfig()  # type: ignore[assignment]
    return model
