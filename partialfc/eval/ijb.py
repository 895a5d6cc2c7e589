"""Reading an IJB-B / IJB-C release (its layout: :mod:`partialfc.data.ijb_layout`) as insightface's
evaluation scripts read it.

Every ``<set>_1N_gallery_*.csv`` is read. insightface pairs the landmark lines with the template
lines by position; here they are joined by image name, and an image missing from either file is an
error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data.ijb_layout import (
    IMAGE_FOLDERS,
    LANDMARKS_SUFFIX,
    META,
    gallery_name,
    image_list_name,
    landmark_list_name,
    pair_list_name,
    probe_name,
)
from partialfc.eval.templates import TemplateListError, read_image_list

__all__ = [
    "IJBRelease",
    "ReleaseImages",
    "landmark_list_name",
    "open_release",
    "read_landmarks",
    "read_release_images",
    "read_subject_csv",
]


@dataclass(frozen=True)
class IJBRelease:
    """Paths of one release folder's files."""

    root: Path
    name: str
    images: Path
    landmarks: Path
    image_list: Path
    pairs: Path
    galleries: dict[str, Path]  # "G1" -> meta/ijbc_1N_gallery_G1.csv, in name order
    probes: Path


def open_release(root: str | Path, set_name: str | None = None) -> IJBRelease:
    """The release at ``root``; ``set_name`` (e.g. IJBC) may be omitted when ``meta/`` holds one landmark list."""
    root = Path(root)
    meta = root / META
    if not meta.is_dir():
        raise TemplateListError(f"{root}: no {META}/ folder; expected an IJB release layout (see `eval pairs --help`)")
    if set_name is None:
        found = sorted(p.name[: -len(LANDMARKS_SUFFIX)] for p in meta.glob(f"*{LANDMARKS_SUFFIX}"))
        if len(found) != 1:
            raise TemplateListError(
                f"{meta}: {'no' if not found else 'several'} *{LANDMARKS_SUFFIX} "
                f"({', '.join(found) or 'none'}); name the set with --set"
            )
        set_name = found[0]
    name = set_name.lower()
    images = next((root / f for f in IMAGE_FOLDERS if (root / f).is_dir()), None)
    if images is None:
        raise TemplateListError(f"{root}: no image folder ({' or '.join(IMAGE_FOLDERS)})")
    prefix = gallery_name(name, "")[: -len(".csv")]
    galleries = {p.stem[len(prefix) :]: p for p in sorted(meta.glob(gallery_name(name, "*")))}
    return IJBRelease(
        root,
        name,
        images,
        meta / landmark_list_name(name),
        meta / image_list_name(name),
        meta / pair_list_name(name),
        galleries,
        meta / probe_name(name),
    )


@dataclass(frozen=True)
class ReleaseImages:
    """Every image of the image list (file order) with its template, media, five landmarks and detector score."""

    names: list[str]
    template_ids: np.ndarray
    media_ids: np.ndarray
    landmarks: np.ndarray  # float32 [N, 5, 2], pixels of the loose crop
    detector_scores: np.ndarray  # float32 [N]


def read_landmarks(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, landmarks ``[N, 5, 2]``, detector scores ``[N]``) of a ``*_name_5pts_score.txt``."""
    path = Path(path)
    if not path.is_file():
        raise TemplateListError(f"{path}: no such landmark list")
    names, values = [], []
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 12:
                raise TemplateListError(
                    f"{path}:{number}: expected 12 fields (IMAGE, 5 x/y landmark pairs, "
                    f"DETECTOR_SCORE), found {len(fields)}"
                )
            try:
                values.append([float(v) for v in fields[1:]])
            except ValueError:
                raise TemplateListError(
                    f"{path}:{number}: landmarks and score must be numbers: {line.rstrip()!r}"
                ) from None
            names.append(fields[0])
    if not names:
        raise TemplateListError(f"{path}: empty landmark list")
    table = np.asarray(values, dtype=np.float32)
    return names, table[:, :10].reshape(-1, 5, 2), table[:, 10]


def read_release_images(release: IJBRelease) -> ReleaseImages:
    """The image list joined with the landmark list by image name."""
    images = read_image_list(release.image_list)
    names, landmarks, scores = read_landmarks(release.landmarks)
    row_of = {name: row for row, name in enumerate(names)}
    if len(row_of) != len(names):
        raise TemplateListError(f"{release.landmarks}: {len(names) - len(row_of)} image names appear twice")
    missing = [name for name in images.names if name not in row_of]
    if missing:
        raise TemplateListError(
            f"{release.landmarks}: no landmarks for {len(missing)} images of "
            f"{release.image_list} (first: {missing[:3]})"
        )
    rows = np.fromiter((row_of[name] for name in images.names), dtype=np.int64, count=len(images.names))
    return ReleaseImages(images.names, images.template_ids, images.media_ids, landmarks[rows], scores[rows])


def read_subject_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids) of a 1:N gallery or probe CSV: one row per template (the file has one per image)."""
    path = Path(path)
    if not path.is_file():
        raise TemplateListError(f"{path}: no such template list")
    with open(path) as lines:
        header = [f.strip().upper() for f in lines.readline().split(",")]
        if header[:2] != ["TEMPLATE_ID", "SUBJECT_ID"]:
            raise TemplateListError(
                f"{path}:1: header must start TEMPLATE_ID,SUBJECT_ID, found {','.join(header[:2])!r}"
            )
        pairs = []
        for number, line in enumerate(lines, start=2):
            fields = line.split(",")
            if not line.strip():
                continue
            try:
                pairs.append((int(fields[0]), int(fields[1])))
            except (ValueError, IndexError):
                raise TemplateListError(
                    f"{path}:{number}: TEMPLATE_ID and SUBJECT_ID must be integers: {line.rstrip()!r}"
                ) from None
    if not pairs:
        raise TemplateListError(f"{path}: no templates")
    table = np.unique(np.asarray(pairs, dtype=np.int64), axis=0)
    templates, counts = np.unique(table[:, 0], return_counts=True)
    if (counts > 1).any():
        raise TemplateListError(f"{path}: template {int(templates[counts > 1][0])} is listed with several subjects")
    return table[:, 0], table[:, 1]
