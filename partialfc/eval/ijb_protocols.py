"""The IJB-B/C protocols: 1:1 template verification (``pairs``) and 1:N open-set identification (``identify``).

Both start from template features: each loose crop aligned with its five landmarks, embedded (or
read from ``partialfc.embed --raw`` output), turned into an image feature under insightface's mode
switches (F flip, N norm score, D detector score; F1 N1 D1 is the mode of published numbers),
averaged per media and summed per template. An :class:`IJBSource` keeps the last template features
it computed, so that training, which runs both protocols on the same weights, embeds the release once.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.data.synth import HOLDOUT_DIR
from partialfc.eval.embedder import Embedder, StoredEmbeddings, embed_source, load_embedder
from partialfc.eval.identification import identification_metrics, pooled_closed_set_readout
from partialfc.eval.ijb import IJBRelease, ReleaseImages, open_release, read_release_images, read_subject_csv
from partialfc.eval.plots import line_plot
from partialfc.eval.protocols import DEFAULT_DATA, EvalProtocol, EvalResult, Table, format_number
from partialfc.eval.scores import roc_far_grid, roc_tar_at_far, strict_tar_at_far
from partialfc.eval.sources import release_image_source
from partialfc.eval.templates import (
    TemplateFeatures,
    TemplateListError,
    aggregate_templates,
    image_features,
    read_template_pairs,
    template_pair_scores,
)

__all__ = ["IJBSource", "IdentifyProtocol", "PairsProtocol", "TemplateMode"]

PAIR_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
IDENTIFY_FPIRS = (1e-2, 1e-1)
IDENTIFY_RANKS = (1, 5, 10)
CMC_RANKS = 20


@dataclass(frozen=True)
class TemplateMode:
    """insightface's switches for image features (its ``use_flip_test``, ``use_norm_score``, ``use_detector_score``)."""

    flip: bool = True
    norm_score: bool = True
    detector_score: bool = True

    @property
    def name(self) -> str:
        """insightface's name of the mode: F1 N1 D1 is the one published IJB numbers use."""
        return f"F{int(self.flip)} N{int(self.norm_score)} D{int(self.detector_score)}"

    def to_json(self) -> dict[str, Any]:
        return {"mode": {"flip": self.flip, "norm_score": self.norm_score, "detector_score": self.detector_score}}


class IJBSource:
    """An IJB release with its lists read once (IJB-C's 15.7 million pairs take ~17 s to parse: a run
    evaluating every N steps pays that once), and the template features of the last embedder asked."""

    def __init__(self, release: IJBRelease) -> None:
        self.release = release
        self.images: ReleaseImages = read_release_images(release)
        self._pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._last: tuple[Embedder | StoredEmbeddings, TemplateMode, TemplateFeatures] | None = None

    @classmethod
    def open(cls, root: str | Path, set_name: str | None = None) -> IJBSource:
        return cls(open_release(root, set_name))

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first template ids, second template ids, labels) of the 1:1 pair list, read on first use."""
        if self._pairs is None:
            self._pairs = read_template_pairs(self.release.pairs)
        return self._pairs

    def template_features(
        self, embedder: Embedder | StoredEmbeddings, mode: TemplateMode, batch_size: int, progress: bool
    ) -> TemplateFeatures:
        """Collective when torch.distributed is initialised and ``embedder`` is a model: every rank
        embeds a block of the images and gets all features."""
        if self._last is not None and self._last[0] is embedder and self._last[1] == mode:
            return self._last[2]
        if isinstance(embedder, StoredEmbeddings):
            features = embedder.rows(self.images.names)
        else:
            features, _ = embed_source(
                embedder,
                release_image_source(self.release, self.images),
                batch_size,
                flip=mode.flip,
                progress=progress,
                normalize=False,
                across_ranks=True,
            )
        inputs = image_features(features, self.images.detector_scores if mode.detector_score else None, mode.norm_score)
        templates = aggregate_templates(inputs, self.images.template_ids, self.images.media_ids)
        self._last = (embedder, mode, templates)
        return templates


class IJBProtocol(EvalProtocol[IJBSource]):
    """What both IJB protocols share: the release, the mode, stored embeddings, the output folder."""

    def __init__(
        self, batch_size: int, mode: TemplateMode = TemplateMode(), out: Path | None = None, progress: bool = False
    ) -> None:
        """``out``: where the CSV/PNG artifacts go; None writes none (training)."""
        self.batch_size, self.mode, self.out, self.progress = batch_size, mode, out, progress

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data",
            default=None,
            help="IJB-B/C release folder: loose_crop/ (or images/) and meta/ with <set>_name_5pts_score.txt, "
            "<set>_face_tid_mid.txt, <set>_template_pair_label.txt and the 1:N CSVs "
            f"(default with --model: {DEFAULT_DATA / HOLDOUT_DIR}, the synthetic hold-out written by the "
            "generator; with --embeddings: required, the release they were made from)",
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
        switches = (
            ("flip", "F1: sum the raw embeddings of each aligned crop and its mirror image; F0: the crop alone"),
            ("norm-score", "N1: keep each image's embedding norm as its weight; N0: L2-normalise each image first"),
            ("detector-score", "D1: weight each image by its face detector score (last column of the landmark list)"),
        )
        for name, text in switches:
            parser.add_argument(
                f"--{name}", action=argparse.BooleanOptionalAction, default=True, help=f"{text} (default on)"
            )
        parser.add_argument(
            "--out",
            default=None,
            help="folder for the CSV/PNG outputs (default: eval/ beside the model or the embeddings)",
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[IJBProtocol, list[IJBSource]]:
        if args.out:
            out = Path(args.out)
        else:
            out = (Path(args.embeddings).parent if args.embeddings else Path(args.model).parent) / "eval"
        if args.embeddings and args.data is None:
            raise ValueError(
                f"--embeddings {args.embeddings} needs --data RELEASE, the release those embeddings were made from"
            )
        mode = TemplateMode(args.flip, args.norm_score, args.detector_score)
        release = IJBSource.open(args.data or DEFAULT_DATA / HOLDOUT_DIR, args.set)
        return cls(args.batch_size, mode, out, progress=not args.quiet), [release]

    @classmethod
    def embedder_from_arguments(cls, args: argparse.Namespace) -> Embedder | StoredEmbeddings:
        if args.embeddings:
            return StoredEmbeddings(Path(args.embeddings))
        return load_embedder(args.model, args.device, args.backbone)

    def _templates(self, embedder: Embedder | StoredEmbeddings, source: IJBSource) -> TemplateFeatures:
        return source.template_features(embedder, self.mode, self.batch_size, self.progress)

    def _header(self, source: IJBSource, templates: TemplateFeatures) -> dict[str, Any]:
        return {
            "set": source.name,
            **self.mode.to_json(),
            "mode_name": self.mode.name,
            "templates": len(templates.template_ids),
            "images": len(source.images.names),
        }


class PairsProtocol(IJBProtocol):
    """1:1 template verification: TAR at each FAR, read as insightface's eval_ijbc.py and strictly."""

    name = "pairs"
    help = "1:1 template verification on an IJB-B/C release, with a ROC"
    description = (
        "Each loose crop is aligned with its five landmarks to the 112x112 ArcFace template; image features "
        "(mode F/N/D, insightface's switches; default F1 N1 D1, the mode of published numbers) are averaged per "
        "media, media summed per template and normalised; each template pair is scored by cosine. Prints TAR at "
        f"FAR {', '.join(f'{f:g}' for f in PAIR_FARS)} read as insightface's eval_ijbc.py does (ROC point nearest "
        "the FAR) and the strict TAR (at most floor(FAR x impostors) impostors accepted); writes OUT/roc.csv "
        "(far_target, far, tar, threshold) and OUT/roc.png. Protocols and read-outs: docs/evaluation.md."
    )
    headline = "TAR@FAR=0.0001"

    def run(self, embedder: Embedder | StoredEmbeddings, source: IJBSource) -> EvalResult:
        start = time.perf_counter()
        templates = self._templates(embedder, source)
        first, second, labels = source.pairs
        scores = template_pair_scores(templates, first, second, str(source.release.pairs))
        positive, negative = scores[labels], scores[~labels]
        literature = roc_tar_at_far(scores, labels, PAIR_FARS)
        strict, strict_thresholds = strict_tar_at_far(positive, negative, PAIR_FARS)
        artifacts = self._roc(source, scores, labels, len(positive), len(negative)) if self.out else {}
        resolution = 1 / max(len(negative), 1)
        rows = tuple(
            (
                f"{far:g}",
                format_number(tar),
                format_number(strict_tar),
                f"{point:.2g}",
                f"{threshold:.4f}",
                "below 1/impostors: strict admits none" if far < resolution else "",
            )
            for far, tar, strict_tar, point, threshold in zip(
                PAIR_FARS, literature.tar, strict, literature.far, literature.threshold
            )
        )
        notes = [
            f"{source.name} mode {self.mode.name}: {len(templates.template_ids)} templates from "
            f"{len(source.images.names)} images; {len(positive)} genuine, {len(negative)} impostor pairs; "
            f"{embedder.description}",
            "TAR: at the ROC point nearest the FAR (insightface eval_ijbc.py); strict: at most floor(FAR x "
            "impostors) impostors accepted",
        ]
        if artifacts:
            notes.append(f"ROC: {artifacts['roc_csv']}, {artifacts['roc_png']}")
        return EvalResult(
            self.name,
            source.name,
            {f"TAR@FAR={far:g}": float(tar) for far, tar in zip(PAIR_FARS, literature.tar)},
            self.headline,
            Table(("FAR", "TAR", "TAR strict", "ROC point FAR", "threshold", "note"), rows),
            notes,
            {
                **self._header(source, templates),
                "genuine_pairs": len(positive),
                "impostor_pairs": len(negative),
                "roc_point_far": {f"{f:g}": float(r) for f, r in zip(PAIR_FARS, literature.far)},
                "thresholds": {f"{f:g}": float(h) for f, h in zip(PAIR_FARS, literature.threshold)},
                "tar_at_far_strict": {f"{f:g}": float(t) for f, t in zip(PAIR_FARS, strict)},
                "thresholds_strict": {f"{f:g}": float(h) for f, h in zip(PAIR_FARS, strict_thresholds)},
            },
            artifacts,
            time.perf_counter() - start,
        )

    def _roc(
        self, source: IJBSource, scores: np.ndarray, labels: np.ndarray, genuine: int, impostors: int
    ) -> dict[str, Path]:
        """OUT/roc.csv and OUT/roc.png: the ROC on a grid of 10 FARs per decade."""
        assert self.out is not None
        grid = roc_far_grid(impostors)
        curve = roc_tar_at_far(scores, labels, grid)
        self.out.mkdir(parents=True, exist_ok=True)
        csv_path = self.out / "roc.csv"
        csv_path.write_text(
            "far_target,far,tar,threshold\n"
            + "".join(
                f"{g:.3g},{f:.6g},{t:.6f},{h:.6f}\n" for g, f, t, h in zip(grid, curve.far, curve.tar, curve.threshold)
            )
        )
        png_path = line_plot(
            self.out / "roc.png",
            [("ROC", curve.far.clip(min=grid[0]), curve.tar)],
            f"1:1 template verification, {source.name} {self.mode.name} ({genuine} + {impostors} pairs)",
            "false accept rate",
            "true accept rate",
            logx=True,
            ylim=(None, 1.0),
        )
        return {"roc_csv": csv_path, "roc_png": png_path}


class IdentifyProtocol(IJBProtocol):
    """1:N open-set identification: rank-k and TPIR@FPIR per gallery and their mean (the summary)."""

    name = "identify"
    help = "1:N open-set identification on an IJB-B/C release: rank-1/5/10, TPIR@FPIR"
    description = (
        "Templates as for `pairs`. Every gallery (<set>_1N_gallery_*.csv: IJB-C G1 and G2) is searched by the "
        "mixed probes (<set>_1N_probe_mixed.csv): probes of enrolled subjects are mated (rank-k, TPIR: mate ranked "
        "first and above the threshold), the others non-mated (they set the threshold for FPIR). Prints rank-1/5/10 "
        f"and TPIR at FPIR {', '.join(f'{f:g}' for f in IDENTIFY_FPIRS)} per gallery and their mean, and "
        "insightface ijb_1n.py's closed-set read-out; writes OUT/cmc.png."
    )
    headline = "rank-1"

    def run(self, embedder: Embedder | StoredEmbeddings, source: IJBSource) -> EvalResult:
        start = time.perf_counter()
        release = source.release
        if not release.galleries:
            raise TemplateListError(f"{release.root / 'meta'}: no {release.name}_1N_gallery_*.csv")
        templates = self._templates(embedder, source)
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
        pooled_line, pooled_json = self._pooled(probes, probe_subjects, enrolled)
        artifacts = {"cmc_png": self._cmc(source, results)} if self.out else {}
        notes = [
            f"{source.name} mode {self.mode.name}: open set, mixed probes; "
            + "; ".join(
                f"{label}: {r.num_gallery_subjects} subjects, {r.num_mated} mated + {r.num_non_mated} non-mated probes"
                for label, r in results.items()
            )
            + f"; {len(source.images.names)} images; {embedder.description}",
            f"insightface ijb_1n.py read-out (galleries joined, closed set, pooled impostor scores): {pooled_line}",
            *(f"CMC: {path}" for path in artifacts.values()),
        ]
        table = Table(
            ("metric", *results, "mean"),
            tuple(
                (name, *(format_number(v) for v in values), format_number(float(np.mean(values))))
                for name, values in metrics.items()
            ),
        )
        galleries = {
            label: {
                "subjects": r.num_gallery_subjects,
                "mated_probes": r.num_mated,
                "non_mated_probes": r.num_non_mated,
                **{f"rank{k}": r.rank(k) for k in IDENTIFY_RANKS},
                "tpir_at_fpir": {f"{f:g}": t for f, t in r.tpir_at_fpir.items()},
                "thresholds": {f"{f:g}": t for f, t in r.thresholds.items()},
                "cmc": r.cmc[:CMC_RANKS].tolist(),
            }
            for label, r in results.items()
        }
        return EvalResult(
            self.name,
            source.name,
            {name: float(np.mean(values)) for name, values in metrics.items()},
            self.headline,
            table,
            notes,
            {**self._header(source, templates), "galleries": galleries, "insightface_1n": pooled_json},
            artifacts,
            time.perf_counter() - start,
        )

    @staticmethod
    def _pooled(
        probes: np.ndarray, probe_subjects: np.ndarray, enrolled: list[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[str, dict[str, Any] | str]:
        """insightface ijb_1n.py's read-out (galleries joined, closed set), as a line and as JSON."""
        try:
            pooled = pooled_closed_set_readout(
                probes,
                probe_subjects,
                np.concatenate([g for g, _ in enrolled]),
                np.concatenate([s for _, s in enrolled]),
                IDENTIFY_FPIRS,
                IDENTIFY_RANKS,
            )
        except ValueError as err:  # galleries that do not enrol every probe subject once: no closed set
            return f"not defined here: {err}", f"not defined here: {err}"
        line = ", ".join(
            [f"top-{k} {format_number(v)}" for k, v in pooled.top_k.items()]
            + [f"TPIR@FAR={f:g} {format_number(v)}" for f, v in pooled.tpir_at_far.items()]
        )
        return line, {
            "probes": pooled.num_probes,
            **{f"top{k}": v for k, v in pooled.top_k.items()},
            "tpir_at_far": {f"{f:g}": v for f, v in pooled.tpir_at_far.items()},
            "thresholds": {f"{f:g}": v for f, v in pooled.thresholds.items()},
        }

    def _cmc(self, source: IJBSource, results: dict[str, Any]) -> Path:
        assert self.out is not None
        series = []
        for label, result in results.items():
            ranks = np.arange(1, min(CMC_RANKS, len(result.cmc)) + 1)
            series.append((label, ranks, result.cmc[: len(ranks)]))
        return line_plot(
            self.out / "cmc.png",
            series,
            f"1:N open-set identification, {source.name} {self.mode.name}",
            "rank",
            "identification rate",
            ylim=(None, 1.0),
        )
