"""Command-line tools for RecordIO face datasets: ``python -m partialfc.data <command> --help``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.common.cli import ArgumentParser, error_line
from partialfc.data.dataset import RecordDataset
from partialfc.data.image import ImageDecodeError, decode_jpeg
from partialfc.data.recordio import RecordIOError
from partialfc.data.verification import VerificationError

# Upper bounds of the class-size histogram buckets (images per class).
_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _histogram(sizes: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    low = 0
    for high in (*_BUCKETS, None):
        mask = sizes > low if high is None else (sizes > low) & (sizes <= high)
        label = f">{low}" if high is None else (str(high) if high == low + 1 else f"{low + 1}-{high}")
        count = int(mask.sum())
        if count:
            rows.append({"images_per_class": label, "classes": count})
        if high is None:
            break
        low = high
    return rows


def _summary(ds: RecordDataset, samples: int) -> dict[str, Any]:
    sizes = ds.class_sizes()
    per_shard = np.bincount(ds.image_shard, minlength=len(ds.shards))
    picks: list[int] = (
        np.unique(np.linspace(0, ds.num_images - 1, min(samples, ds.num_images)).astype(np.int64)).tolist()
        if ds.num_images
        else []
    )
    sample_rows = []
    for i in picks:
        data = ds.read_image(i)
        try:
            shape: list[int] | str = list(decode_jpeg(data).shape)
        except ImageDecodeError as err:
            shape = f"undecodable: {err}"
        sample_rows.append({"index": i, "label": int(ds.labels[i]), "bytes": len(data), "shape": shape})
    return {
        "layout": ds.layout,
        "num_images": ds.num_images,
        "num_classes": ds.num_classes,
        "image_size": list(ds.image_size) if ds.image_size else None,
        "property": str(ds.property.path) if ds.property else None,
        "shards": [
            {"rec": str(s.rec_path), "idx": str(s.idx_path), "size_bytes": s.size_bytes, "num_images": int(n)}
            for s, n in zip(ds.shards, per_shard)
        ],
        "class_sizes": {
            "min": int(sizes.min()) if sizes.size else 0,
            "median": float(np.median(sizes)) if sizes.size else 0.0,
            "mean": float(sizes.mean()) if sizes.size else 0.0,
            "max": int(sizes.max()) if sizes.size else 0,
            "empty_classes": int((sizes == 0).sum()),
        },
        "class_size_histogram": _histogram(sizes),
        "samples": sample_rows,
    }


def _print_summary(info: dict[str, Any]) -> None:
    size = "x".join(map(str, info["image_size"])) if info["image_size"] else "unknown (no property file)"
    print(f"layout       {info['layout']}")
    print(f"images       {info['num_images']:,}")
    print(f"classes      {info['num_classes']:,}")
    print(f"image size   {size}")
    print(f"shards       {len(info['shards'])}")
    for s in info["shards"]:
        print(f"  {s['rec']}  {s['size_bytes'] / 2**20:,.1f} MiB  {s['num_images']:,} images")
    cs = info["class_sizes"]
    print(
        f"images/class min {cs['min']}  median {cs['median']:g}  mean {cs['mean']:.1f}  max {cs['max']}"
        f"  empty classes {cs['empty_classes']}"
    )
    for row in info["class_size_histogram"]:
        print(f"  {row['images_per_class']:>10} images: {row['classes']:,} classes")
    print("samples")
    for s in info["samples"]:
        print(f"  image {s['index']}: label {s['label']}, {s['bytes']} bytes, decoded {s['shape']}")


def cmd_inspect(args: argparse.Namespace) -> int:
    with RecordDataset(args.path) as ds:
        info = _summary(ds, args.samples)
    if args.json:
        print(json.dumps(info))
    else:
        _print_summary(info)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from partialfc.data.integrity import verify_dataset

    report = verify_dataset(args.path, workers=args.workers, progress=not args.quiet)
    for problem in report.problems:
        print(f"CORRUPT {problem}")
    print(f"checked {report.records:,} records, decoded {report.images:,} images: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def cmd_pack(args: argparse.Namespace) -> int:
    from partialfc.data.pack import pack_dataset, read_jpeg_file, read_list, scan_folder

    src = Path(args.src)
    if src.is_dir():
        labels, paths, names = scan_folder(src)
        print(f"{src}: {len(names)} identities, {len(paths)} images", file=sys.stderr)
    elif src.suffix == ".lst":
        labels, paths = read_list(src)
    else:
        print(f"error: {src} is neither a folder of identity folders nor a .lst file", file=sys.stderr)
        return 2
    recs = pack_dataset(
        args.out,
        labels,
        paths,
        read_jpeg_file,
        shards=args.shards,
        shuffle=args.shuffle,
        seed=args.seed,
        layout=args.layout,
        workers=args.workers,
        progress=not args.quiet,
    )
    for rec in recs:
        print(rec)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from partialfc.data.loaders.dali_index import ensure_image_index

    with RecordDataset(args.path) as ds:
        print(ensure_image_index(ds, cache_dir=args.cache_dir))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from partialfc.data.synth import generate_synthetic_dataset

    out = generate_synthetic_dataset(
        args.out,
        args.identities,
        args.images_per_identity,
        seed=args.seed,
        shards=args.shards,
        holdout_identities=args.holdout_identities,
        pairs=args.pairs,
        workers=args.workers,
        progress=not args.quiet,
        variation=args.variation,
    )
    print(out)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    import torch

    from partialfc.clean import clean_dataset
    from partialfc.training.checkpoint import CheckpointError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out, report = clean_dataset(
            args.run_dir,
            args.dataset,
            args.angle,
            args.out,
            model=args.model,
            batch_size=args.batch_size,
            device=device,
            progress=not args.quiet,
        )
    except CheckpointError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"cleaned index: {out} (train on it with --data.path {out}; the .rec files are unchanged)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.data",
        description="Tools for MXNet RecordIO face datasets (InsightFace and headerless layouts). "
        "PATH is a .rec file, its prefix, a directory holding one dataset, or a quoted glob of shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
        return p

    p = add(
        "pack",
        "Pack a folder of identity sub-folders (or an InsightFace/im2rec .lst) of aligned JPEGs "
        "into OUT.rec/.idx plus a property file; JPEG bytes are stored unchanged.",
    )
    p.add_argument("src", metavar="SRC", help="folder with one sub-folder of .jpg per identity, or a .lst file")
    p.add_argument("out", metavar="OUT", help="output prefix: writes OUT.rec, OUT.idx and property beside them")
    p.add_argument("--shards", type=int, default=1, help="split into N shards OUT-00000-of-0000N.rec (default 1)")
    p.add_argument(
        "--shuffle", action="store_true", help="shuffle the physical image order (keys stay sorted by identity)"
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument(
        "--layout",
        choices=("insightface", "headerless"),
        default="insightface",
        help="insightface: header + identity records (default); headerless: images only",
    )
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: CPU count, max 8)")
    p.set_defaults(func=cmd_pack)

    p = add("inspect", "Show layout, counts, class-size histogram, image size and a few decoded samples.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--samples", type=int, default=4, help="images to decode as samples (default 4)")
    p.set_defaults(func=cmd_inspect)

    p = add(
        "verify",
        "Read every record and decode every image; list corrupt records with file and byte "
        "offset; exit status 1 if any.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--workers", type=int, default=None, help="decoder processes (default: CPU count, max 8)")
    p.set_defaults(func=cmd_verify)

    p = add("index", "Build (or reuse) the image-only index DALI needs for this dataset; prints its path.")
    p.add_argument("path", metavar="PATH")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where to write the index (default: beside the data when writable, else a cache folder)",
    )
    p.set_defaults(func=cmd_index)

    p = add("synth", "Generate the synthetic face-like dataset (InsightFace layout) and verification pairs.")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--identities", type=int, required=True, help="training identities (class ids 0..K-1)")
    p.add_argument("--images-per-identity", type=int, required=True, help="images per identity")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed gives identical files (default 0)")
    p.add_argument("--shards", type=int, default=1, help="number of .rec shards (default 1)")
    p.add_argument(
        "--holdout-identities",
        type=int,
        default=0,
        help="extra identities used only for evaluation: verification pairs and OUT/holdout/, an "
        "IJB-B/C-layout release (loose crops, landmarks, detector scores, template, pair and 1:N lists) "
        "for partialfc.eval pairs/identify (default 0)",
    )
    p.add_argument("--pairs", type=int, default=0, help="verification pairs, half positive (default 0)")
    p.add_argument("--workers", type=int, default=None, help="encoder processes (default: CPU count, max 8)")
    p.add_argument(
        "--variation",
        choices=("standard", "hard"),
        default="standard",
        help="per-image variation: standard (the quickstart's) or hard (wider pose, lighting, white "
        "balance, occlusion, blur, JPEG quality 25-90; see partialfc/data/synth.py) (default standard)",
    )
    p.set_defaults(func=cmd_synth)

    p = add(
        "clean",
        "Sub-center ArcFace data cleaning: embed DATASET with RUN_DIR's model, find each class's "
        "dominant sub-centre (the one most of its images are nearest to) among the centres of RUN_DIR's newest "
        "checkpoint, and drop images farther than --angle from it (and classes left empty). Writes a cleaned "
        "index (an image subset; the .rec files stay untouched) that data.path can point to, and prints how many "
        "images and classes were kept and dropped. Meant for a run trained with loss.sub_centers > 1; with 1 it "
        "is a plain angle filter.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="training output directory (holds checkpoints/ and model.pt)")
    p.add_argument(
        "dataset",
        metavar="DATASET",
        help="the dataset RUN_DIR trained on: a .rec file, its prefix, a "
        "directory holding one dataset, a quoted glob of shards, or a cleaned index",
    )
    p.add_argument(
        "--angle",
        type=float,
        default=75.0,
        help="largest angle in degrees between an image and its class's dominant sub-centre that is "
        "kept (default 75, the paper's)",
    )
    p.add_argument("--out", default=None, help="directory of the cleaned index (default RUN_DIR/cleaned)")
    p.add_argument(
        "--model",
        default=None,
        help="model.pt or .onnx to embed with (default RUN_DIR/model.pt, else the backbone in the newest checkpoint)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument(
        "--device",
        default=None,
        help="torch device for the model, e.g. cpu, cuda, cuda:1 (default: cuda when available)",
    )
    p.set_defaults(func=cmd_clean)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RecordIOError, VerificationError, ValueError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2


def _plain_warnings(message: Warning | str, category: type[Warning], *rest: object) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":
    warnings.formatwarning = _plain_warnings  # type: ignore[assignment]
    sys.exit(main())
