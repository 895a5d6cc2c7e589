"""The model file, ``model.pt``: the one format the trainer writes and every reader opens.

A ``torch.save`` of ``{"backbone": registry name, "embedding_size": int, "state_dict": weights}``
(:data:`MODEL_KEYS`), readable with ``torch.load(weights_only=True)``. The trainer saves it
(:func:`save_model`), inference opens it (:func:`load_model`), fine-tuning starts from it
(:func:`init_from`), and an ONNX export carries the same facts as metadata (:func:`onnx_metadata`,
:func:`read_onnx_input_config`). Every reader also takes a bare state dict as arcface_torch's
``train_v2.py`` writes it (``torch.save(backbone.state_dict())``: its ``model.pt``, a released
``backbone.pth``); the backbone and embedding size are recognised from its keys and shapes
(:mod:`partialfc.models.recognise`). It lives here, not in a command, so the trainer and the
commands share one reader and one set of errors.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import torch
from torch import nn

from partialfc.models import create_model
from partialfc.models.input_config import InputConfig, input_config_of
from partialfc.models.recognise import UnrecognisedWeights, fitting_backbones, layout_difference, recognise_backbone

__all__ = [
    "MODEL_KEYS",
    "ModelFileError",
    "TrainedModel",
    "WeightsMismatch",
    "init_from",
    "load_model",
    "load_strict",
    "onnx_metadata",
    "read_onnx_input_config",
    "save_model",
]

MODEL_KEYS = ("backbone", "embedding_size", "state_dict")
ONNX_INPUT_KEYS = ("input_size", "channel_order", "mean", "std")


class ModelFileError(ValueError):
    """A model file cannot be used; the message names the file and what is wrong."""


class WeightsMismatch(ValueError):
    """Weights that do not fit a module: the message lists the missing/unexpected keys or the shape clash."""


@dataclass(frozen=True)
class TrainedModel:
    """A model file opened: the backbone (eval mode, CPU), its registry name and embedding size."""

    backbone: nn.Module
    name: str
    embedding_size: int


def save_model(path: Path, name: str, embedding_size: int, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write backbone ``name`` (its registry name) atomically: a reader never sees half a file; and
    never non-finite weights.

    ``state_dict`` is saved as given (a module's ``state_dict()`` keeps its version metadata)."""
    bad = [
        key
        for key, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise FloatingPointError(f"{path} not written: {len(bad)} backbone tensors are not finite ({bad[0]}, ...)")
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"backbone": name, "embedding_size": embedding_size, "state_dict": state_dict}, tmp)
    os.replace(tmp, path)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a one-line :class:`WeightsMismatch` naming at most 8 keys of each kind."""
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches are raised even when strict=False
        raise WeightsMismatch(" ".join(str(err).split())) from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsMismatch(
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:8]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:8]}"
        )


def _is_model_file(saved: object) -> TypeGuard[dict]:
    return isinstance(saved, dict) and all(key in saved for key in MODEL_KEYS)


def _is_state_dict(saved: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(saved, dict) and all(isinstance(value, torch.Tensor) for value in saved.values())


def _fit_description(saved: dict) -> str:
    return f"weights do not fit backbone {saved['backbone']!r} with embedding size {saved['embedding_size']}"


def _read(path: Path) -> object:
    """``torch.load`` of a model file (weights only); a file that is not one is a :class:`ModelFileError`."""
    if path.is_dir():
        inside = path / "model.pt"
        hint = (
            f"its model is {inside}: --model {inside}"
            if inside.is_file()
            else "give a model.pt (written into a run directory at the end of training)"
        )
        raise ModelFileError(f"{path}: a directory, not a model file; {hint}")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ModelFileError(f"{path}: no such model file{where}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ModelFileError(
            f"{path}: not a model.pt written by partialfc.train: {' '.join(str(err).split())[:300]}"
        ) from None


def load_model(path: str | Path, backbone: str | None = None) -> TrainedModel:
    """The backbone of a ``model.pt`` or of a bare state dict, with strict key matching; every failure is a
    :class:`ModelFileError`.

    A bare state dict's backbone is recognised from its keys and shapes; ``backbone`` (a registry name)
    says which it is where several registered backbones fit alike. A ``model.pt`` names its own, which
    ``backbone``, if given, must equal.
    """
    path = Path(path)
    saved = _read(path)
    if saved and _is_state_dict(saved):
        try:
            recognised = recognise_backbone(saved, backbone)
        except UnrecognisedWeights as err:
            raise ModelFileError(f"{path}: a bare state dict: {err}") from None
        name, embedding_size, weights = recognised.name, recognised.embedding_size, saved
    elif _is_model_file(saved):
        name, embedding_size, weights = str(saved["backbone"]), int(saved["embedding_size"]), saved["state_dict"]
        if backbone is not None and backbone != name:
            raise ModelFileError(f"{path}: holds backbone {name!r}, not {backbone!r} (--backbone)")
    else:
        found = (
            (f"keys {sorted(map(str, saved))[:8]}" + (" ..." if len(saved) > 8 else ""))
            if isinstance(saved, dict)
            else type(saved).__name__
        )
        raise ModelFileError(
            f"{path}: not a model.pt written by partialfc.train (keys {list(MODEL_KEYS)}); found {found}; "
            "nor a bare state dict (tensors only, as arcface_torch saves its backbone)"
        )
    try:
        model = create_model(name, embedding_size)
    except ValueError as err:
        raise ModelFileError(f"{path}: {err}") from None
    try:
        load_strict(model, weights)
    except WeightsMismatch as err:
        raise ModelFileError(
            f"{path}: weights do not fit backbone {name!r} with embedding size {embedding_size}: {err}"
        ) from None
    return TrainedModel(model.eval(), name, embedding_size)


def _bare_fit(path: Path, saved: dict[str, torch.Tensor], name: str, embedding_size: int) -> str:
    """The strict-load error prefix for a bare state dict given to a job of backbone ``name``; a
    :class:`ModelFileError` when it is recognised as another backbone or embedding size."""
    fits = fitting_backbones(saved)
    own = next((fit for fit in fits if fit.name == name), None)
    if own is not None and own.embedding_size != embedding_size:
        raise ModelFileError(
            f"{path}: a bare state dict of {name!r} with embedding size {own.embedding_size}; this job has "
            f"model.embedding_size={embedding_size}"
        )
    if own is None and fits:
        found = " or ".join(f"{fit.name!r} (embedding size {fit.embedding_size})" for fit in fits)
        raise ModelFileError(
            f"{path}: a bare state dict of backbone {found}; this job has model.backbone={name!r}: "
            f"{layout_difference(name, saved)}"
        )
    return f"does not fit model.backbone={name!r}"


def init_from(path: Path, backbone: nn.Module, name: str, embedding_size: int) -> None:
    """Fine-tuning: load ``backbone`` (registry ``name``, ``embedding_size``) from a ``model.pt`` of the
    same backbone or from a bare state dict recognised as it, strictly; the file is read once."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ModelFileError(f"{path}: cannot read it: {error}") from None
    if _is_model_file(saved):
        if (str(saved["backbone"]), saved["embedding_size"]) != (name, embedding_size):
            raise ModelFileError(
                f"{path}: holds backbone {saved['backbone']!r} with embedding size {saved['embedding_size']}; "
                f"this job has model.backbone={name!r}, model.embedding_size={embedding_size}"
            )
        weights, fit = saved["state_dict"], _fit_description(saved)
    elif _is_state_dict(saved):
        weights, fit = saved, _bare_fit(path, saved, name, embedding_size)
    else:
        raise ModelFileError(
            f"{path}: neither a partialfc model.pt (keys {list(MODEL_KEYS)}) nor a "
            f"state_dict of tensors (found {type(saved).__name__})"
        )
    try:
        load_strict(backbone, weights)
    except WeightsMismatch as err:
        raise ModelFileError(f"{path}: {fit}: {err}") from None


def _csv(values: tuple[float, ...] | tuple[int, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _per_channel(csv: str) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in csv.split(","))
    return red, green, blue


def onnx_metadata(trained: TrainedModel, source: Path) -> dict[str, str]:
    """What an exported ``.onnx`` carries so a runtime needs nothing but the file: input size
    ("H,W"), channel order, per-channel mean and std (x = (pixel - mean) / std), backbone, producer."""
    config = input_config_of(trained.backbone)
    return {
        "input_size": _csv(config.size),
        "channel_order": config.channel_order,
        "mean": _csv(config.mean),
        "std": _csv(config.std),
        "backbone": trained.name,
        "embedding_size": str(trained.embedding_size),
        "producer": f"partialfc.export from {source.name}",
    }


def read_onnx_input_config(path: str | Path, metadata: Mapping[str, str]) -> InputConfig:
    """The :class:`InputConfig` stored by :func:`onnx_metadata`; names the file if it is absent."""
    missing = [key for key in ONNX_INPUT_KEYS if key not in metadata]
    if missing:
        raise ModelFileError(f"{path}: ONNX metadata lacks {missing}; export it with `python -m partialfc.export onnx`")
    try:
        height, width = (int(v) for v in metadata["input_size"].split(","))
        return InputConfig(
            size=(height, width),
            channel_order=metadata["channel_order"],
            mean=_per_channel(metadata["mean"]),
            std=_per_channel(metadata["std"]),
        )
    except ValueError as err:
        raise ModelFileError(f"{path}: bad input metadata {dict(metadata)}: {err}") from None
