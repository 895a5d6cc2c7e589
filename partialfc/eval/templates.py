"""IJB-B/IJB-C style template evaluation: image lists, media-then-template aggregation, 1:1 pairs.

A *template* is the set of images known to show one subject (IJB: stills and video frames); a
*media* is one still or one video inside it. Aggregating media first keeps a 300-frame video from
outweighing one still: image embeddings (L2-normalised) are averaged per media, the media means
are summed per template and the sum is L2-normalised, as insightface's IJB evaluation does.

Files (whitespace-separated text, one record per line, ``#`` starts a comment):

- image list (IJB ``ijbc_face_tid_mid.txt``): ``IMAGE TEMPLATE_ID MEDIA_ID``; IMAGE is a path
  relative to the image folder.
- template pairs (IJB ``ijbc_template_pair_label.txt``): ``TEMPLATE_ID TEMPLATE_ID LABEL``
  (1 = same subject, 0 = different).
- gallery / probe lists for identification: ``TEMPLATE_ID SUBJECT_ID``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ImageList",
    "TemplateFeatures",
    "TemplateListError",
    "aggregate_templates",
    "read_image_list",
    "read_template_pairs",
    "read_template_subjects",
    "template_pair_scores",
]


class TemplateListError(ValueError):
    """A template/pair/subject list is malformed or refers to something absent; names file and line."""


def _records(path: Path, columns: int, what: str) -> list[list[str]]:
    if not path.is_file():
        raise TemplateListError(f"{path}: no such {what} file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != columns:
            raise TemplateListError(f"{path}:{number}: expected {columns} fields ({what}), found {len(fields)}: {line!r}")
        rows.append(fields)
    if not rows:
        raise TemplateListError(f"{path}: empty {what} file")
    return rows


def _integers(path: Path, rows: list[list[str]], column: int, name: str) -> np.ndarray:
    try:
        return np.array([int(row[column]) for row in rows], dtype=np.int64)
    except ValueError:
        bad = next(i for i, row in enumerate(rows) if not row[column].lstrip("-").isdigit())
        raise TemplateListError(f"{path}: record {bad + 1}: {name} {rows[bad][column]!r} is not an integer") from None


@dataclass(frozen=True)
class ImageList:
    """Images of an image list with their template and media ids, in file order."""

    names: list[str]
    template_ids: np.ndarray
    media_ids: np.ndarray


def read_image_list(path: str | Path) -> ImageList:
    path = Path(path)
    rows = _records(path, 3, "image list: IMAGE TEMPLATE_ID MEDIA_ID")
    return ImageList([row[0] for row in rows], _integers(path, rows, 1, "template id"), _integers(path, rows, 2, "media id"))


def read_template_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first template ids, second template ids, labels as bool)."""
    path = Path(path)
    rows = _records(path, 3, "template pairs: TEMPLATE_ID TEMPLATE_ID LABEL")
    labels = _integers(path, rows, 2, "label")
    if not np.isin(labels, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])
        raise TemplateListError(f"{path}: record {bad + 1}: label {labels[bad]} is neither 0 nor 1")
    return _integers(path, rows, 0, "template id"), _integers(path, rows, 1, "template id"), labels.astype(bool)


def read_template_subjects(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids) of a gallery or probe list."""
    path = Path(path)
    rows = _records(path, 2, "template list: TEMPLATE_ID SUBJECT_ID")
    return _integers(path, rows, 0, "template id"), _integers(path, rows, 1, "subject id")


@dataclass(frozen=True)
class TemplateFeatures:
    """One L2-normalised feature per template, template ids sorted ascending."""

    template_ids: np.ndarray
    features: np.ndarray

    def rows(self, template_ids: np.ndarray, origin: str) -> np.ndarray:
        """Row of each requested template id; ``origin`` names the list that asked, for the error."""
        position = np.searchsorted(self.template_ids, template_ids)
        position = np.minimum(position, len(self.template_ids) - 1)
        missing = self.template_ids[position] != template_ids
        if missing.any():
            absent = np.unique(np.asarray(template_ids)[missing])
            raise TemplateListError(
                f"{origin}: {len(absent)} template ids have no image in the image list (first: {absent[:5].tolist()})"
            )
        return position


def aggregate_templates(embeddings: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray) -> TemplateFeatures:
    """Media-then-template aggregation of L2-normalised image embeddings ``[N, D]``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    media_keys, media_of_image = np.unique(np.stack([template_ids, media_ids], axis=1), axis=0, return_inverse=True)
    media_of_image = media_of_image.reshape(-1)
    media_sum = np.zeros((len(media_keys), embeddings.shape[1]))
    np.add.at(media_sum, media_of_image, embeddings)
    media_mean = media_sum / np.bincount(media_of_image, minlength=len(media_keys))[:, None]
    templates, template_of_media = np.unique(media_keys[:, 0], return_inverse=True)
    template_sum = np.zeros((len(templates), embeddings.shape[1]))
    np.add.at(template_sum, template_of_media.reshape(-1), media_mean)
    norms = np.linalg.norm(template_sum, axis=1, keepdims=True)
    return TemplateFeatures(templates, (template_sum / np.maximum(norms, 1e-12)).astype(np.float32))


def template_pair_scores(templates: TemplateFeatures, first: np.ndarray, second: np.ndarray, origin: str) -> np.ndarray:
    """Cosine similarity of each template pair."""
    a = templates.features[templates.rows(first, origin)]
    b = templates.features[templates.rows(second, origin)]
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
