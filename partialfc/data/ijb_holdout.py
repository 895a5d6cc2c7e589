"""Held-out synthetic identities written as an IJB-B/C release, so the IJB commands run without a download.

The generator's crops are aligned by construction: their five "landmarks" are the ArcFace template
points. Each held-out image is shown as a *loose crop* instead: the aligned crop under a random
similarity transform (rotation, scale, shift) on a larger canvas, with the template points moved
by the same transform as its landmarks, and a detector score. Alignment with those landmarks must
give the aligned crop back (``tests/eval/test_ijb.py``). Files, named for the set ``synth``::

    loose_crop/N.jpg, meta/synth_name_5pts_score.txt, meta/synth_face_tid_mid.txt,
    meta/synth_template_pair_label.txt, meta/synth_1N_gallery_G1.csv, ..._G2.csv, meta/synth_1N_probe_mixed.csv

Templates: up to four per subject, each of media of up to two images (two frames of one video).
1:1 pairs: every same-subject pair of templates and ten times as many different-subject pairs.
1:N, as IJB-C: the subjects are split into two disjoint galleries G1 and G2 (first template of each
subject); every other template is a probe, mated for one gallery and non-mated for the other.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np

from partialfc.data.align import ARCFACE_TEMPLATE
from partialfc.data.ijb_layout import (
    IMAGE_FOLDERS,
    META,
    gallery_name,
    image_list_name,
    landmark_list_name,
    pair_list_name,
    probe_name,
)

__all__ = ["SET_NAME", "loose_crop_transform", "warp_similarity", "write_ijb_holdout"]

SET_NAME = "synth"
LOOSE_CROP = IMAGE_FOLDERS[0]
MAX_TEMPLATES_PER_SUBJECT = 4
NEGATIVE_PAIRS_PER_POSITIVE = 10
DETECTOR_SCORES = (0.6, 1.0)
_LOOSE, _PROTOCOLS = 5, 3  # random streams (synth.py numbers its own; these do not collide)


class AlignedImages(Protocol):
    """What the writer needs of the generator (``SyntheticImage``)."""

    seed: int

    def pixels(self, source: tuple[int, int]) -> np.ndarray: ...

    def encode(self, pixels: np.ndarray, source: tuple[int, int]) -> bytes: ...


def loose_crop_transform(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """(2x3 similarity matrix from aligned-crop pixels to loose-crop pixels, loose-crop side)."""
    angle, scale = rng.uniform(-0.35, 0.35), rng.uniform(0.8, 1.4)
    extent = size * scale * (abs(math.cos(angle)) + abs(math.sin(angle)))  # the rotated square's bounding box
    side = math.ceil(extent * 1.3)
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = (size - 1) / 2
    target = (side - 1) / 2 + rng.uniform(-0.1, 0.1, 2) * extent
    return np.hstack([linear, (target - linear @ [centre, centre])[:, None]]), side


def warp_similarity(image: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    """``out(x) = image(matrix^-1 x)``, bilinear, edges replicated; pixel centres at integer coordinates
    (OpenCV's convention, which the landmarks follow). Numpy, so generating data needs no OpenCV."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    height, width = image.shape[:2]
    sx, sy = np.clip(sx, 0, width - 1), np.clip(sy, 0, height - 1)
    x0, y0 = np.minimum(sx.astype(np.int64), width - 2), np.minimum(sy.astype(np.int64), height - 2)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    source = image.astype(np.float64)
    top = source[y0, x0] * (1 - fx) + source[y0, x0 + 1] * fx
    bottom = source[y0 + 1, x0] * (1 - fx) + source[y0 + 1, x0 + 1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def _templates_of_subject(images_per_identity: int) -> list[list[list[int]]]:
    """Image indices of one subject grouped as templates of media of up to two consecutive images."""
    count = min(MAX_TEMPLATES_PER_SUBJECT, max(1, images_per_identity // 2))
    templates = np.array_split(np.arange(images_per_identity), count)
    return [[t[i : i + 2].tolist() for i in range(0, len(t), 2)] for t in templates]


def _write_subject_csv(path: Path, rows: list[tuple[int, int, str]]) -> None:
    path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{t},{s},{n}\n" for t, s, n in rows))


def write_ijb_holdout(
    out_dir: str | Path, images: AlignedImages, first_identity: int, identities: int, images_per_identity: int
) -> Path:
    """Write the release for identities ``first_identity ..`` (``images_per_identity`` each) into ``out_dir``."""
    out = Path(out_dir)
    (out / LOOSE_CROP).mkdir(parents=True, exist_ok=True)
    (out / META).mkdir(parents=True, exist_ok=True)
    layout = _templates_of_subject(images_per_identity)
    image_lines: list[str] = []
    landmark_lines: list[str] = []
    files_of_template: list[list[str]] = []
    subject_of_template: list[int] = []
    media_id = 0
    for subject in range(first_identity, first_identity + identities):
        for template in layout:
            subject_of_template.append(subject)
            files_of_template.append([])
            for media in template:
                media_id += 1
                for index in media:
                    source = (subject, index)
                    rng = np.random.default_rng((images.seed, _LOOSE, subject, index))
                    aligned = images.pixels(source)
                    matrix, side = loose_crop_transform(rng, aligned.shape[0])
                    name = f"{len(image_lines) + 1}.jpg"
                    (out / LOOSE_CROP / name).write_bytes(images.encode(warp_similarity(aligned, matrix, side), source))
                    points = ARCFACE_TEMPLATE.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
                    score = rng.uniform(*DETECTOR_SCORES)
                    image_lines.append(f"{name} {len(subject_of_template)} {media_id}\n")
                    landmark_lines.append(f"{name} {' '.join(f'{v:.3f}' for v in points.reshape(-1))} {score:.4f}\n")
                    files_of_template[-1].append(name)
    (out / META / image_list_name(SET_NAME)).write_text("".join(image_lines))
    (out / META / landmark_list_name(SET_NAME)).write_text("".join(landmark_lines))

    rng = np.random.default_rng((images.seed, _PROTOCOLS))
    subjects = np.array(subject_of_template)
    template_ids = np.arange(1, len(subjects) + 1)
    first, second = np.triu_indices(len(subjects), k=1)
    same = subjects[first] == subjects[second]
    negatives = np.flatnonzero(~same)
    wanted = min(len(negatives), NEGATIVE_PAIRS_PER_POSITIVE * int(same.sum()) or len(negatives))
    chosen = np.sort(np.concatenate([np.flatnonzero(same), rng.choice(negatives, wanted, replace=False)]))
    (out / META / pair_list_name(SET_NAME)).write_text(
        "".join(f"{template_ids[first[k]]} {template_ids[second[k]]} {int(same[k])}\n" for k in chosen)
    )

    shuffled = rng.permutation(np.unique(subjects))
    galleries = {"G1": shuffled[: (len(shuffled) + 1) // 2], "G2": shuffled[(len(shuffled) + 1) // 2 :]}
    first_template = {int(s): int(np.flatnonzero(subjects == s)[0]) for s in np.unique(subjects)}
    for label, members in galleries.items():
        rows = [
            (int(template_ids[first_template[int(s)]]), int(s), n)
            for s in sorted(members)
            for n in files_of_template[first_template[int(s)]]
        ]
        _write_subject_csv(out / META / gallery_name(SET_NAME, label), rows)
    enrolled = set(first_template.values())
    _write_subject_csv(
        out / META / probe_name(SET_NAME),
        [
            (int(template_ids[k]), int(subjects[k]), n)
            for k in range(len(subjects))
            if k not in enrolled
            for n in files_of_template[k]
        ],
    )
    return out
