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

from partialfc.common.cli import ArgumentParser, error_line
from partialfc.data import VerificationSet
from partialfc.data.synth import HOLDOUT_DIR, VERIFICATION_NAME
from partialfc.eval.embedder import add_model_options, embed_source, load_embedder
from partialfc.eval.identification import identification_metrics, pooled_closed_set_readout
from partialfc.eval.ijb import IJBRelease, open_release, read_release_images, read_subject_csv
from partialfc.eval.plots import line_plot
from partialfc.eval.protocol import roc_far_grid, roc_tar_at_far, strict_tar_at_far
from partialfc.eval.sources import release_image_source
from partialfc.eval.templates import (
    TemplateFeatures,
    TemplateListError,
    aggregate_templates,
    image_features,
    read_template_pairs,
    template_pair_scores,
)
from partialfc.eval.verification import THRESHOLD_RULES, VERIFY_FARS, verify_set

DEFAULT_DATA = Path("data/synthetic")
PAIR_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
IDENTIFY_FPIRS = (1e-2, 1e-1)
IDENTIFY_RANKS = (1, 5, 10)
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
        result = verify_set(
            embedder,
            VerificationSet(path),
            args.batch_size,
            far=args.far[0],
            fars=tuple(args.far),
            thresholds=args.thresholds,
        )
        results.append((result, time.perf_counter() - start))
    if args.json != "-":
        _print_table(
            [
                "set",
                "pairs",
                "accuracy",
                "± std",
                "threshold",
                *(f"TAR@FAR={f:g}" for f in args.far),
                "norm",
                "seconds",
            ],
            [
                [
                    r.name,
                    str(r.num_pairs),
                    _number(r.accuracy),
                    _number(r.accuracy_std),
                    _number(r.threshold),
                    *(_number(r.tar_at_fars[f]) for f in args.far),
                    f"{r.mean_norm:.2f}",
                    f"{s:.1f}",
                ]
                for r, s in results
            ],
        )
        print(
            f"model {args.model} ({embedder.description}); 10-fold accuracy with flip, thresholds {args.thresholds}; "
            "TAR@FAR strict"
        )
    return {
        "model": str(args.model),
        "runtime": embedder.description,
        "threshold_rule": args.thresholds,
        "sets": {
            r.name: {
                "pairs": r.num_pairs,
                "accuracy": r.accuracy,
                "accuracy_std": r.accuracy_std,
                "threshold": r.threshold,
                "mean_norm": r.mean_norm,
                "seconds": s,
                "tar_at_far": {_far_key(f): t for f, t in r.tar_at_fars.items()},
            }
            for r, s in results
        },
    }


# ---------------------------------------------------------------------------------- template commands
def _mode(args: argparse.Namespace) -> dict[str, bool]:
    return {"flip": args.flip, "norm_score": args.norm_score, "detector_score": args.detector_score}


def _mode_name(args: argparse.Namespace) -> str:
    """insightface's name of the mode: F1 N1 D1 is the one published IJB numbers use."""
    return f"F{int(args.flip)} N{int(args.norm_score)} D{int(args.detector_score)}"


def _stored_embeddings(prefix: Path, names: list[str]) -> np.ndarray:
    """Rows of ``PREFIX.npy`` (written by partialfc.embed) for ``names``, looked up in ``PREFIX.txt``."""
    matrix = np.load(prefix.with_name(prefix.name + ".npy"))
    stored = prefix.with_name(prefix.name + ".txt").read_text().splitlines()
    if len(stored) != len(matrix):
        raise TemplateListError(f"{prefix}.txt lists {len(stored)} names for {len(matrix)} rows of {prefix}.npy")
    row_of = {name: row for row, name in enumerate(stored)}
    missing = [name for name in names if name not in row_of]
    if missing:
        raise TemplateListError(
            f"{prefix}.txt: {len(missing)} images of the image list are absent (first: {missing[:3]})"
        )
    return matrix[[row_of[name] for name in names]]


def _templates(args: argparse.Namespace) -> tuple[IJBRelease, TemplateFeatures, int, str]:
    """The release, its template features under the chosen mode, the image count and where the features came from."""
    release = open_release(args.data, args.set)
    images = read_release_images(release)
    if args.embeddings:
        features, origin = _stored_embeddings(Path(args.embeddings), images.names), f"embeddings {args.embeddings}.npy"
    else:
        embedder = load_embedder(args.model, args.device)
        features, _ = embed_source(
            embedder,
            release_image_source(release, images),
            args.batch_size,
            flip=args.flip,
            progress=not args.quiet,
            normalize=False,
        )
        origin = f"model {args.model} ({embedder.description})"
    inputs = image_features(features, images.detector_scores if args.detector_score else None, args.norm_score)
    return release, aggregate_templates(inputs, images.template_ids, images.media_ids), len(images.names), origin


def cmd_pairs(args: argparse.Namespace) -> dict[str, Any]:
    release, templates, num_images, origin = _templates(args)
    first, second, labels = read_template_pairs(release.pairs)
    scores = template_pair_scores(templates, first, second, str(release.pairs))
    positive, negative = scores[labels], scores[~labels]
    literature = roc_tar_at_far(scores, labels, PAIR_FARS)
    strict, strict_thresholds = strict_tar_at_far(positive, negative, PAIR_FARS)
    grid = roc_far_grid(len(negative))
    curve = roc_tar_at_far(scores, labels, grid)
    out = _output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "roc.csv"
    csv_path.write_text(
        "far_target,far,tar,threshold\n"
        + "".join(
            f"{g:.3g},{f:.6g},{t:.6f},{h:.6f}\n" for g, f, t, h in zip(grid, curve.far, curve.tar, curve.threshold)
        )
    )
    png_path = line_plot(
        out / "roc.png",
        [("ROC", curve.far.clip(min=grid[0]), curve.tar)],
        f"1:1 template verification, {release.name} {_mode_name(args)} ({len(positive)} + {len(negative)} pairs)",
        "false accept rate",
        "true accept rate",
        logx=True,
        ylim=(None, 1.0),
    )
    resolution = 1 / max(len(negative), 1)
    if args.json != "-":
        _print_table(
            ["FAR", "TAR", "TAR strict", "ROC point FAR", "threshold", "note"],
            [
                [
                    f"{f:g}",
                    _number(t),
                    _number(st),
                    f"{rf:.2g}",
                    f"{h:.4f}",
                    "below 1/impostors: strict admits none" if f < resolution else "",
                ]
                for f, t, st, rf, h in zip(PAIR_FARS, literature.tar, strict, literature.far, literature.threshold)
            ],
        )
        print(
            f"{release.name} mode {_mode_name(args)}: {len(templates.template_ids)} templates "
            f"from {num_images} images; "
            f"{len(positive)} genuine, {len(negative)} impostor pairs; {origin}\n"
            "TAR: at the ROC point nearest the FAR (insightface eval_ijbc.py); strict: at most floor(FAR x impostors) "
            f"impostors accepted\nROC: {csv_path}, {png_path}"
        )
    return {
        "source": origin,
        "set": release.name,
        "mode": _mode(args),
        "mode_name": _mode_name(args),
        "templates": len(templates.template_ids),
        "images": num_images,
        "genuine_pairs": len(positive),
        "impostor_pairs": len(negative),
        "tar_at_far": {_far_key(f): float(t) for f, t in zip(PAIR_FARS, literature.tar)},
        "roc_point_far": {_far_key(f): float(r) for f, r in zip(PAIR_FARS, literature.far)},
        "thresholds": {_far_key(f): float(h) for f, h in zip(PAIR_FARS, literature.threshold)},
        "tar_at_far_strict": {_far_key(f): float(t) for f, t in zip(PAIR_FARS, strict)},
        "thresholds_strict": {_far_key(f): float(h) for f, h in zip(PAIR_FARS, strict_thresholds)},
        "roc_csv": str(csv_path),
        "roc_png": str(png_path),
    }


def cmd_identify(args: argparse.Namespace) -> dict[str, Any]:
    release, templates, num_images, origin = _templates(args)
    if not release.galleries:
        raise TemplateListError(f"{release.root / 'meta'}: no {release.name}_1N_gallery_*.csv")
    probe_templates, probe_subjects = read_subject_csv(release.probes)
    probes = templates.features[templates.rows(probe_templates, str(release.probes))]
    results, enrolled = {}, []
    for label, path in release.galleries.items():
        gallery_templates, gallery_subjects = read_subject_csv(path)
        gallery = templates.features[templates.rows(gallery_templates, str(path))]
        enrolled.append((gallery, gallery_subjects))
        results[label] = identification_metrics(probes, probe_subjects, gallery, gallery_subjects, IDENTIFY_FPIRS)
    metrics = {f"rank-{k}": [r.rank(k) for r in results.values()] for k in IDENTIFY_RANKS}
    metrics |= {f"TPIR@FPIR={f:g}": [r.tpir_at_fpir[f] for r in results.values()] for f in IDENTIFY_FPIRS}
    try:
        pooled = pooled_closed_set_readout(
            probes,
            probe_subjects,
            np.concatenate([g for g, _ in enrolled]),
            np.concatenate([s for _, s in enrolled]),
            IDENTIFY_FPIRS,
            IDENTIFY_RANKS,
        )
        pooled_line = ", ".join(
            [f"top-{k} {_number(v)}" for k, v in pooled.top_k.items()]
            + [f"TPIR@FAR={f:g} {_number(v)}" for f, v in pooled.tpir_at_far.items()]
        )
        pooled_json: dict[str, Any] | str = {
            "probes": pooled.num_probes,
            **{f"top{k}": v for k, v in pooled.top_k.items()},
            "tpir_at_far": {_far_key(f): v for f, v in pooled.tpir_at_far.items()},
            "thresholds": {_far_key(f): v for f, v in pooled.thresholds.items()},
        }
    except ValueError as err:  # galleries that do not enrol every probe subject once: no closed set
        pooled_line = pooled_json = f"not defined here: {err}"
    out = _output_dir(args)
    series = []
    for label, result in results.items():
        ranks = np.arange(1, min(CMC_RANKS, len(result.cmc)) + 1)
        series.append((label, ranks, result.cmc[: len(ranks)]))
    png_path = line_plot(
        out / "cmc.png",
        series,
        f"1:N open-set identification, {release.name} {_mode_name(args)}",
        "rank",
        "identification rate",
        ylim=(None, 1.0),
    )
    if args.json != "-":
        _print_table(
            ["metric", *results, "mean"],
            [
                [name, *(_number(v) for v in values), _number(float(np.mean(values)))]
                for name, values in metrics.items()
            ],
        )
        print(
            f"{release.name} mode {_mode_name(args)}: open set, mixed probes; "
            + "; ".join(
                f"{label}: {r.num_gallery_subjects} subjects, {r.num_mated} mated + {r.num_non_mated} non-mated probes"
                for label, r in results.items()
            )
            + f"; {num_images} images; {origin}"
        )
        print(
            f"insightface ijb_1n.py read-out (galleries joined, closed set, pooled impostor scores): {pooled_line}\n"
            f"CMC: {png_path}"
        )
    return {
        "source": origin,
        "set": release.name,
        "mode": _mode(args),
        "mode_name": _mode_name(args),
        "images": num_images,
        "galleries": {
            label: {
                "subjects": r.num_gallery_subjects,
                "mated_probes": r.num_mated,
                "non_mated_probes": r.num_non_mated,
                **{f"rank{k}": r.rank(k) for k in IDENTIFY_RANKS},
                "tpir_at_fpir": {_far_key(f): t for f, t in r.tpir_at_fpir.items()},
                "thresholds": {_far_key(f): t for f, t in r.thresholds.items()},
                "cmc": r.cmc[:CMC_RANKS].tolist(),
            }
            for label, r in results.items()
        },
        "mean": {name: float(np.mean(values)) for name, values in metrics.items()},
        "insightface_1n": pooled_json,
        "cmc_png": str(png_path),
    }


def _output_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return (Path(args.embeddings).parent if args.embeddings else Path(args.model).parent) / "eval"


# ---------------------------------------------------------------------------------- parser
def _common(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="also write the results as JSON to FILE; '-' prints only the JSON on stdout",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _template_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA / HOLDOUT_DIR),
        help="IJB-B/C release folder: loose_crop/ (or images/) and meta/ with <set>_name_5pts_score.txt, "
        "<set>_face_tid_mid.txt, <set>_template_pair_label.txt and the 1:N CSVs "
        f"(default: {DEFAULT_DATA / HOLDOUT_DIR}, the synthetic hold-out written by the generator)",
    )
    parser.add_argument(
        "--set",
        default=None,
        metavar="NAME",
        help="set name, the prefix of the meta files: IJBB, IJBC, synth (default: the one landmark list in meta/)",
    )
    parser.add_argument(
        "--embeddings",
        metavar="PREFIX",
        default=None,
        help="use PREFIX.npy/PREFIX.txt written by `partialfc.embed DATA --raw` instead of running --model; "
        "the flip was decided there (embed --no-flip for F0): pass the same --flip/--no-flip here so "
        "the mode is named right",
    )
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="F1: sum the raw embeddings of each aligned crop and its mirror image; F0: the crop alone (default F1)",
    )
    parser.add_argument(
        "--norm-score",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="N1: keep each image's embedding norm as its weight; N0: L2-normalise each image first (default N1)",
    )
    parser.add_argument(
        "--detector-score",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="D1: weight each image by its face detector score (last column of the landmark list) (default D1)",
    )
    parser.add_argument(
        "--out", default=None, help="folder for the CSV/PNG outputs (default: eval/ beside the model or the embeddings)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.eval",
        description="Evaluate a trained face model (model.pt or .onnx). Every command runs on the synthetic "
        "quickstart data by default (data/synthetic, runs/quickstart/model.pt); exit code 2 on bad input.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "verify",
        help="1:1 verification on InsightFace .bin sets (LFW protocol)",
        description="10-fold accuracy with flip (mean ± std over sklearn-style folds, best threshold among "
        "cuts between distinct similarities), the threshold fitted on all pairs, TAR@FAR and the mean "
        "raw embedding norm, per .bin set.",
    )
    p.add_argument(
        "bins",
        metavar="BIN",
        nargs="*",
        help=f"verification .bin files (default: {DEFAULT_DATA / (VERIFICATION_NAME + '.bin')})",
    )
    p.add_argument(
        "--thresholds",
        choices=THRESHOLD_RULES,
        default=THRESHOLD_RULES[0],
        help="distinct: best cut between distinct cosine scores (exact); insightface-grid: insightface's "
        "calculate_roc, squared-L2 thresholds np.arange(0, 4, 0.01), to match a published LFW/CFP-FP/AgeDB "
        "figure to the digit (default distinct)",
    )
    p.add_argument(
        "--far",
        type=float,
        nargs="+",
        default=list(VERIFY_FARS),
        help=f"false accept rates at which TAR is reported (default: {' '.join(f'{f:g}' for f in VERIFY_FARS)})",
    )
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "pairs",
        help="1:1 template verification on an IJB-B/C release, with a ROC",
        description="Each loose crop is aligned with its five landmarks to the 112x112 ArcFace template; "
        "image features (mode F/N/D, insightface's switches; default F1 N1 D1, the mode of published "
        "numbers) are averaged per media, media summed per template and normalised; each template pair "
        f"is scored by cosine. Prints TAR at FAR {', '.join(f'{f:g}' for f in PAIR_FARS)} read as "
        "insightface's eval_ijbc.py does (ROC point nearest the FAR) and the strict TAR (at most "
        "floor(FAR x impostors) impostors accepted); writes OUT/roc.csv (far_target, far, tar, "
        "threshold) and OUT/roc.png. Protocols and read-outs: docs/evaluation.md.",
    )
    _template_options(p)
    _common(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser(
        "identify",
        help="1:N open-set identification on an IJB-B/C release: rank-1/5/10, TPIR@FPIR",
        description="Templates as for `pairs`. Every gallery (<set>_1N_gallery_*.csv: IJB-C G1 and G2) is "
        "searched by the mixed probes (<set>_1N_probe_mixed.csv): probes of enrolled subjects are mated "
        "(rank-k, TPIR: mate ranked first and above the threshold), the others non-mated (they set the "
        f"threshold for FPIR). Prints rank-1/5/10 and TPIR at FPIR {', '.join(f'{f:g}' for f in IDENTIFY_FPIRS)} "
        "per gallery and their mean, and insightface ijb_1n.py's closed-set read-out; writes OUT/cmc.png.",
    )
    _template_options(p)
    _common(p)
    p.set_defaults(func=cmd_identify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        payload = args.func(args)
    except (ValueError, OSError) as err:  # ModelFileError, TemplateListError, VerificationError, DatasetError ...
        print(error_line(err), file=sys.stderr)
        return 2
    _emit_json(args.json, {"command": args.command, **payload})
    return 0


if __name__ == "__main__":
    sys.exit(main())
