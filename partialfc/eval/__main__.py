"""``python -m partialfc.eval {verify,pairs,identify}``: evaluate a trained model (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.data import VerificationSet
from partialfc.data.synth import (
    GALLERY_LIST,
    HOLDOUT_DIR,
    HOLDOUT_IMAGES,
    IMAGE_LIST,
    PROBE_LIST,
    TEMPLATE_PAIRS,
    VERIFICATION_NAME,
)
from partialfc.embed import add_model_options, embed_source, image_folder_source, load_embedder
from partialfc.eval.identification import identification_metrics
from partialfc.eval.plots import line_plot
from partialfc.eval.protocol import roc_far_grid, tar_at_far
from partialfc.eval.templates import (
    TemplateListError,
    aggregate_templates,
    read_image_list,
    read_template_pairs,
    read_template_subjects,
    template_pair_scores,
)
from partialfc.evaluation import VERIFY_FARS, verify_set

DEFAULT_DATA = Path("data/synthetic")
PAIR_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
IDENTIFY_FPIRS = (1e-2, 1e-1)
CMC_RANKS = 20


def _number(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for line in (header, ["-" * w for w in widths], *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


def _emit_json(path: str | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    text = json.dumps(payload, indent=2, sort_keys=True)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")


def _far_key(far: float) -> str:
    return f"{far:g}"


# ---------------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    embedder = load_embedder(args.model, args.device)
    bins = args.bins or [str(DEFAULT_DATA / f"{VERIFICATION_NAME}.bin")]
    results = []
    for path in bins:
        start = time.perf_counter()
        result = verify_set(embedder, VerificationSet(path), args.batch_size, far=args.far[0], fars=tuple(args.far))
        results.append((result, time.perf_counter() - start))
    if args.json != "-":
        _print_table(
            ["set", "pairs", "accuracy", "± std", "threshold", *(f"TAR@FAR={f:g}" for f in args.far), "norm", "seconds"],
            [[r.name, str(r.num_pairs), _number(r.accuracy), _number(r.accuracy_std), _number(r.threshold),
              *(_number(r.tar_at_fars[f]) for f in args.far), f"{r.mean_norm:.2f}", f"{s:.1f}"] for r, s in results],
        )
        print(f"model {args.model} ({embedder.description}); 10-fold accuracy with flip")
    return {
        "model": str(args.model), "runtime": embedder.description,
        "sets": {r.name: {"pairs": r.num_pairs, "accuracy": r.accuracy, "accuracy_std": r.accuracy_std,
                          "threshold": r.threshold, "mean_norm": r.mean_norm, "seconds": s,
                          "tar_at_far": {_far_key(f): t for f, t in r.tar_at_fars.items()}} for r, s in results},
    }


# ---------------------------------------------------------------------------------- template commands
def _image_embeddings(args: argparse.Namespace, names: list[str]) -> tuple[np.ndarray, str]:
    """L2-normalised (image + flip) embeddings of ``names``: from a model, or looked up in ``--embeddings``."""
    if args.embeddings:
        prefix = Path(args.embeddings)
        matrix = np.load(prefix.with_name(prefix.name + ".npy"))
        stored = prefix.with_name(prefix.name + ".txt").read_text().splitlines()
        if len(stored) != len(matrix):
            raise TemplateListError(f"{prefix}.txt lists {len(stored)} names for {len(matrix)} rows of {prefix}.npy")
        row_of = {name: row for row, name in enumerate(stored)}
        missing = [name for name in names if name not in row_of]
        if missing:
            raise TemplateListError(f"{prefix}.txt: {len(missing)} images of the image list are absent (first: {missing[:3]})")
        return matrix[[row_of[name] for name in names]], f"embeddings {prefix}.npy"
    embedder = load_embedder(args.model, args.device)
    source = image_folder_source(args.images or Path(args.data) / HOLDOUT_IMAGES, names)
    embeddings, _ = embed_source(embedder, source, args.batch_size, flip=True, progress=not args.quiet)
    return embeddings, f"model {args.model} ({embedder.description})"


def _output_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return (Path(args.embeddings).parent if args.embeddings else Path(args.model).parent) / "eval"


def _templates(args: argparse.Namespace):
    image_list_path = Path(args.image_list or Path(args.data) / IMAGE_LIST)
    images = read_image_list(image_list_path)
    embeddings, origin = _image_embeddings(args, images.names)
    return aggregate_templates(embeddings, images.template_ids, images.media_ids), len(images.names), origin


def cmd_pairs(args: argparse.Namespace) -> dict[str, Any]:
    pairs_path = Path(args.pairs or Path(args.data) / TEMPLATE_PAIRS)
    first, second, labels = read_template_pairs(pairs_path)
    templates, num_images, origin = _templates(args)
    scores = template_pair_scores(templates, first, second, str(pairs_path))
    positive, negative = scores[labels], scores[~labels]
    tars, thresholds = tar_at_far(positive, negative, PAIR_FARS)
    grid = roc_far_grid(len(negative))
    roc_tar, roc_threshold = tar_at_far(positive, negative, grid)
    sorted_negative = np.sort(negative)
    roc_far = (len(negative) - np.searchsorted(sorted_negative, roc_threshold, side="right")) / max(len(negative), 1)
    out = _output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "roc.csv"
    csv_path.write_text("far_target,far,tar,threshold\n" + "".join(
        f"{g:.3g},{f:.6g},{t:.6f},{h:.6f}\n" for g, f, t, h in zip(grid, roc_far, roc_tar, roc_threshold)))
    png_path = line_plot(out / "roc.png", [("ROC", roc_far.clip(min=grid[0]), roc_tar)],
                         f"1:1 template verification ({len(positive)} + {len(negative)} pairs)",
                         "false accept rate", "true accept rate", logx=True)
    resolution = 1 / max(len(negative), 1)
    if args.json != "-":
        _print_table(["FAR", "TAR", "threshold", "note"],
                     [[f"{f:g}", _number(t), f"{h:.4f}", "below 1/negatives: no negative admitted" if f < resolution else ""]
                      for f, t, h in zip(PAIR_FARS, tars, thresholds)])
        print(f"{len(templates.template_ids)} templates from {num_images} images; {len(positive)} genuine, "
              f"{len(negative)} impostor pairs; {origin}\nROC: {csv_path}, {png_path}")
    return {
        "source": origin, "templates": len(templates.template_ids), "images": num_images,
        "genuine_pairs": int(len(positive)), "impostor_pairs": int(len(negative)),
        "tar_at_far": {_far_key(f): float(t) for f, t in zip(PAIR_FARS, tars)},
        "thresholds": {_far_key(f): float(h) for f, h in zip(PAIR_FARS, thresholds)},
        "roc_csv": str(csv_path), "roc_png": str(png_path),
    }


def cmd_identify(args: argparse.Namespace) -> dict[str, Any]:
    gallery_path = Path(args.gallery or Path(args.data) / GALLERY_LIST)
    probe_path = Path(args.probes or Path(args.data) / PROBE_LIST)
    gallery_templates, gallery_subjects = read_template_subjects(gallery_path)
    probe_templates, probe_subjects = read_template_subjects(probe_path)
    templates, num_images, origin = _templates(args)
    result = identification_metrics(
        templates.features[templates.rows(probe_templates, str(probe_path))], probe_subjects,
        templates.features[templates.rows(gallery_templates, str(gallery_path))], gallery_subjects, IDENTIFY_FPIRS,
    )
    out = _output_dir(args)
    ranks = np.arange(1, min(CMC_RANKS, len(result.cmc)) + 1)
    png_path = line_plot(out / "cmc.png", [("CMC", ranks, result.cmc[: len(ranks)])],
                         f"1:N identification ({result.num_mated} mated probes, {result.num_gallery_subjects} subjects)",
                         "rank", "identification rate")
    if args.json != "-":
        _print_table(["metric", "value"],
                     [["rank-1", _number(result.rank(1))], ["rank-5", _number(result.rank(5))],
                      *([f"TPIR@FPIR={f:g}", _number(t)] for f, t in result.tpir_at_fpir.items())])
        print(f"{result.num_gallery_subjects} gallery subjects, {result.num_mated} mated and {result.num_non_mated} "
              f"non-mated probe templates from {num_images} images; {origin}\nCMC: {png_path}")
    return {
        "source": origin, "gallery_subjects": result.num_gallery_subjects, "mated_probes": result.num_mated,
        "non_mated_probes": result.num_non_mated, "rank1": result.rank(1), "rank5": result.rank(5),
        "tpir_at_fpir": {_far_key(f): t for f, t in result.tpir_at_fpir.items()},
        "thresholds": {_far_key(f): t for f, t in result.thresholds.items()},
        "cmc": result.cmc[: len(ranks)].tolist(), "cmc_png": str(png_path),
    }


# ---------------------------------------------------------------------------------- parser
def _common(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the results as JSON to FILE; '-' prints only the JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _template_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA / HOLDOUT_DIR),
                        help="folder holding the images/ and lists below under their default names "
                        f"(default: {DEFAULT_DATA / HOLDOUT_DIR}, written by the synthetic generator)")
    parser.add_argument("--images", default=None,
                        help="image folder the image list's names are relative to (default: DATA/images)")
    parser.add_argument("--image-list", default=None,
                        help=f"lines 'IMAGE TEMPLATE_ID MEDIA_ID', as IJB's ijbc_face_tid_mid.txt (default: DATA/{IMAGE_LIST})")
    parser.add_argument("--embeddings", metavar="PREFIX", default=None,
                        help="use PREFIX.npy/PREFIX.txt written by partialfc.embed instead of running --model")
    parser.add_argument("--out", default=None,
                        help="folder for the CSV/PNG outputs (default: eval/ beside the model or the embeddings)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m partialfc.eval",
        description="Evaluate a trained face model (model.pt or .onnx). Every command runs on the synthetic "
        "quickstart data by default (data/synthetic, runs/quickstart/model.pt); exit code 2 on bad input.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verify", help="1:1 verification on InsightFace .bin sets (LFW protocol)",
                       description="10-fold accuracy with flip (mean ± std over sklearn-style folds, best threshold among "
                       "cuts between distinct similarities), the threshold fitted on all pairs, TAR@FAR and the mean "
                       "raw embedding norm, per .bin set.")
    p.add_argument("bins", metavar="BIN", nargs="*",
                   help=f"verification .bin files (default: {DEFAULT_DATA / (VERIFICATION_NAME + '.bin')})")
    p.add_argument("--far", type=float, nargs="+", default=list(VERIFY_FARS),
                   help=f"false accept rates at which TAR is reported (default: {' '.join(f'{f:g}' for f in VERIFY_FARS)})")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("pairs", help="1:1 template verification in the IJB-B/C shape, with a ROC",
                       description="Image embeddings (with flip) are averaged per media, media summed per template "
                       f"and normalised; each template pair is scored by cosine. Prints TAR at FAR "
                       f"{', '.join(f'{f:g}' for f in PAIR_FARS)} and writes OUT/roc.csv (far_target, far, tar, "
                       "threshold) and OUT/roc.png.")
    _template_options(p)
    p.add_argument("--pairs", default=None,
                   help=f"lines 'TEMPLATE_ID TEMPLATE_ID LABEL' (1 genuine, 0 impostor), as IJB's "
                   f"ijbc_template_pair_label.txt (default: DATA/{TEMPLATE_PAIRS})")
    _common(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("identify", help="1:N open-set identification: rank-1/5, TPIR@FPIR, CMC plot",
                       description="Templates as for `pairs`. Probes whose subject is in the gallery are mated (rank-k, "
                       "TPIR), the others non-mated (they set the threshold for FPIR). Prints rank-1, rank-5 and TPIR "
                       f"at FPIR {', '.join(f'{f:g}' for f in IDENTIFY_FPIRS)}; writes OUT/cmc.png.")
    _template_options(p)
    p.add_argument("--gallery", default=None,
                   help=f"lines 'TEMPLATE_ID SUBJECT_ID' of enrolled templates (default: DATA/{GALLERY_LIST})")
    p.add_argument("--probes", default=None,
                   help=f"lines 'TEMPLATE_ID SUBJECT_ID' of probe templates (default: DATA/{PROBE_LIST})")
    _common(p)
    p.set_defaults(func=cmd_identify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        payload = args.func(args)
    except (ValueError, OSError) as err:  # ModelFileError, TemplateListError, VerificationError, DatasetError ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    _emit_json(args.json, {"command": args.command, **payload})
    return 0


if __name__ == "__main__":
    sys.exit(main())
