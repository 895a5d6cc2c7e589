"""Face embeddings from a trained model: ``python -m partialfc.embed --help``.

Writes the embeddings of an image source (:mod:`partialfc.eval.sources`) under a ``model.pt``, a bare
state dict as arcface_torch saves it, or an exported ``.onnx`` (:mod:`partialfc.eval.embedder`);
``--model``, ``--backbone``, ``--batch-size`` and ``--device`` are shared with ``python -m partialfc.eval``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from partialfc.common.cli import ArgumentParser, error_line
from partialfc.data.recordio import RecordIOError
from partialfc.eval.embedder import add_model_options, embed_source, load_embedder
from partialfc.eval.sources import open_image_source


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.embed",
        description="Embed aligned face crops with a trained model and write OUT.npy (float32 [N, D], "
        "L2-normalised rows unless --raw), OUT.txt (one image name per line, same order) and, for a .rec, "
        "OUT.labels.npy (int64 class ids). Prints progress and images/s on stderr.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder of .jpg/.jpeg crops (searched recursively; names are paths relative to it), "
        "an IJB-B/C release folder (loose_crop/ + meta/; each crop aligned with its five landmarks, "
        "names as in the image list), "
        "a RecordIO dataset (.rec, its prefix, or a directory holding one; names are record keys, as "
        "SHARD.rec:KEY when there are several shards), "
        "or a verification .bin (names pairNNNNNN.a / .b)",
    )
    add_model_options(parser)
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="output prefix: writes OUT.npy, OUT.txt (and OUT.labels.npy for a .rec)",
    )
    parser.add_argument(
        "--no-flip", action="store_true", help="embed each image alone instead of summing it with its mirror image"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="write the unnormalised (image + mirror) sums: `eval pairs/identify --embeddings` "
        "then keep each image's norm as weight (insightface's N1 mode)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        source = open_image_source(args.source)  # first: a wrong source is named before the model is loaded
        embedder = load_embedder(args.model, args.device, args.backbone)
        start = time.perf_counter()
        embeddings, _ = embed_source(
            embedder, source, args.batch_size, flip=not args.no_flip, progress=not args.quiet, normalize=not args.raw
        )
        seconds = time.perf_counter() - start
    except (ValueError, OSError, RecordIOError) as err:  # ModelFileError, ImageSourceError, a corrupt .rec ...
        print(error_line(err), file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_name(out.name + ".npy"), embeddings)
    out.with_name(out.name + ".txt").write_text("".join(f"{name}\n" for name in source.names))
    if source.labels is not None:
        np.save(out.with_name(out.name + ".labels.npy"), source.labels)
    print(
        f"{len(embeddings)} images -> {out}.npy ({embeddings.shape[1]}-d, {embedder.description}) in "
        f"{seconds:.1f}s, {len(embeddings) / max(seconds, 1e-9):,.0f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
