"""Export a trained backbone: ``python -m partialfc.export onnx MODEL --out model.onnx``, or as arcface_torch's
weights: ``python -m partialfc.export arcface-torch MODEL --out backbone.pth``.

MODEL is a ``model.pt`` or a bare state dict as arcface_torch saves it (its backbone recognised from
its keys and shapes; ``--backbone NAME`` where several registered backbones fit alike).

The ONNX graph takes the *normalised* float32 NCHW image (as insightface's released ONNX models do)
with a dynamic batch axis and returns the raw (not L2-normalised) embedding. How to normalise is
stored in the model's metadata (``metadata_props``, from :func:`partialfc.models.model_file.onnx_metadata`), so a
runtime needs nothing but the file:

    input_size     "112,112"            (height, width)
    channel_order  "RGB"
    mean, std      "127.5,127.5,127.5"  x = (pixel - mean) / std, per channel
    backbone, embedding_size, producer

**Opset 18** by default: it is the opset torch's exporter (torch.export + onnxscript) emits
natively, so no version-conversion pass rewrites the graph (asking for 17 runs the ONNX C API
down-converter as a fallback); the convolutional backbones need only Conv, BatchNormalization,
PRelu, Add, Gemm and Reshape, unchanged since opset 14, and the ViTs add MatMul, Softmax, Clip and
LayerNormalization (opset 17), so newer opsets add nothing; and onnxruntime has run opset 18 since
1.14 (2023). ``--opset`` picks another for an older runtime.

Every export is checked: ``onnx.checker`` (full check) and onnxruntime against PyTorch on random
inputs at batch 1 and 7 (a batch size the example input did not have), max abs difference <= 1e-4.

**arcface-torch** writes the backbone's bare state dict, ``torch.save(state_dict)`` as
arcface_torch's ``train_v2.py`` does, which ``get_model(NAME, num_features=D).load_state_dict(
torch.load(path), strict=True)`` takes (insightface ``recognition/arcface_torch/backbones``).
IResNet, MobileFaceNet and ViT keep upstream's module names, shapes and buffers (the frozen
``features`` BatchNorm scale included), so the state dict is written as it is; backbones that
arcface_torch lacks are refused. ``NAME`` is :data:`ARCFACE_TORCH_NAMES`' entry, printed with the
line that loads it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from partialfc.common.cli import ArgumentParser, error_line
from partialfc.eval.embedder import DEFAULT_MODEL, add_backbone_option
from partialfc.models.input_config import input_config_of
from partialfc.models.model_file import ModelFileError, TrainedModel, load_model, onnx_metadata

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7)
INPUT_NAME, OUTPUT_NAME = "input", "embedding"

__all__ = ["ARCFACE_TORCH_NAMES", "DEFAULT_OPSET", "ExportResult", "ParityError", "export_arcface_torch", "export_onnx"]

# Registry name -> the get_model name of insightface recognition/arcface_torch/backbones/__init__.py that
# builds the same network; vit_l is there only as its WebFace42M entry.
ARCFACE_TORCH_NAMES = {
    **{name: name for name in ("r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large")},
    **{name: name for name in ("vit_t", "vit_s", "vit_b", "vit_h")},
    "vit_l": "vit_l_dp005_mask_005",
}


class ParityError(ModelFileError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    max_abs_difference: dict[int, float]  # batch size -> max |onnxruntime - pytorch|


def export_onnx(
    model_path: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, seed: int = 0, backbone: str | None = None
) -> ExportResult:
    """Export, check with the ONNX checker and compare with PyTorch under onnxruntime; ``backbone`` as
    :func:`~partialfc.models.model_file.load_model` takes it."""
    import onnx
    import onnxruntime as ort

    trained = load_model(model_path, backbone)
    config = input_config_of(trained.backbone)
    example = torch.randn(2, 3, *config.size, generator=torch.Generator().manual_seed(seed))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # torch.onnx logs one warning per torchvision operator it cannot register; none is used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's deprecation chatter about its own internals
        program = torch.onnx.export(
            trained.backbone,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        )
    assert program is not None, "torch.onnx.export returns None only without dynamo=True"
    proto = program.model_proto
    onnx.helper.set_model_props(proto, onnx_metadata(trained, Path(model_path)))
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(proto, tmp)
    onnx.checker.check_model(str(tmp), full_check=True)

    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed + 1)
    differences = {}
    for batch in PARITY_BATCHES:
        images = torch.randn(batch, 3, *config.size, generator=generator)
        with torch.no_grad():
            expected = trained.backbone(images).numpy()
        got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
        if got.shape != expected.shape:
            raise ModelFileError(
                f"{tmp}: onnxruntime output {got.shape} at batch {batch}, PyTorch gives {expected.shape}"
            )
        differences[batch] = float(abs(got - expected).max())
    worst = max(differences, key=differences.__getitem__)
    if differences[worst] > PARITY_TOLERANCE:
        raise ParityError(
            f"{tmp}: onnxruntime differs from PyTorch by {differences[worst]:.3g} at batch {worst} "
            f"(tolerance {PARITY_TOLERANCE:g}); the file is kept for inspection"
        )
    tmp.replace(out)
    return ExportResult(out, opset, differences)


def export_arcface_torch(model_path: str | Path, out: str | Path, backbone: str | None = None) -> TrainedModel:
    """Write the backbone of ``model_path`` as arcface_torch's bare state dict, atomically; the model exported."""
    trained = load_model(model_path, backbone)
    if trained.name not in ARCFACE_TORCH_NAMES:
        raise ModelFileError(
            f"{model_path}: backbone {trained.name!r} has no arcface_torch counterpart (those that do: "
            f"{', '.join(ARCFACE_TORCH_NAMES)})"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(trained.backbone.state_dict(), tmp)
    os.replace(tmp, out)
    return trained


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default=DEFAULT_MODEL,
        help="model.pt written by partialfc.train, or a bare state dict as arcface_torch saves it (its model.pt, "
        f"a released backbone.pth) (default: {DEFAULT_MODEL})",
    )
    add_backbone_option(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.export", description="Export a trained backbone for inference runtimes."
    )
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx_parser = sub.add_parser(
        "onnx",
        help="ONNX with a dynamic batch axis, checked against PyTorch",
        description="Write the backbone of MODEL as ONNX: input 'input' float32 [batch, 3, H, W] normalised as "
        "the metadata says, output 'embedding' float32 [batch, D] (not L2-normalised). The file is "
        "checked by onnx.checker and by onnxruntime against PyTorch at batch 1 and 7 "
        f"(max abs difference <= {PARITY_TOLERANCE:g}); a failing export is left as OUT.tmp and exits 1.",
    )
    _add_model_arguments(onnx_parser)
    onnx_parser.add_argument("--out", default=None, help="output file (default: MODEL with the suffix .onnx)")
    onnx_parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET}, the exporter's native opset; "
        "lower values go through the ONNX version converter)",
    )
    arcface_parser = sub.add_parser(
        "arcface-torch",
        help="the bare state dict insightface's arcface_torch loads",
        description="Write the backbone of MODEL as arcface_torch saves its own (torch.save of the state dict), "
        "for get_model(NAME, num_features=D).load_state_dict(torch.load(OUT), strict=True) in insightface's "
        f"recognition/arcface_torch; NAME is printed. Backbones: {', '.join(ARCFACE_TORCH_NAMES)}.",
    )
    _add_model_arguments(arcface_parser)
    arcface_parser.add_argument("--out", required=True, help="output file, e.g. backbone.pth")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.format == "arcface-torch":
        try:
            trained = export_arcface_torch(args.model, args.out, args.backbone)
        except ModelFileError as err:
            print(error_line(err), file=sys.stderr)
            return 2
        name = ARCFACE_TORCH_NAMES[trained.name]
        print(
            f"{args.out}: {trained.name} state dict for arcface_torch: get_model({name!r}, "
            f"num_features={trained.embedding_size}).load_state_dict(torch.load({str(args.out)!r}), strict=True)"
        )
        return 0
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".onnx")
    try:
        result = export_onnx(args.model, out, opset=args.opset, backbone=args.backbone)
    except ModelFileError as err:
        print(error_line(err), file=sys.stderr)
        return 1 if isinstance(err, ParityError) else 2
    parity = ", ".join(f"batch {b}: {d:.2e}" for b, d in result.max_abs_difference.items())
    print(
        f"{result.path}: opset {result.opset}, dynamic batch axis, onnx.checker passed; "
        f"max |onnxruntime - pytorch| {parity}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
