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

from array import array
from collections.abc import Iterator
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


def _rows(path: Path, columns: list[str], what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record, streamed: IJB-C's pair list has 15.7 million lines."""
    if not path.is_file():
        raise TemplateListError(f"{path}: no such {what} file")
    empty = True
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != len(columns):
                raise TemplateListError(f"{path}:{number}: expected {len(columns)} fields ({' '.join(columns)}), "
                                        f"found {len(fields)}: {line.rstrip()!r}")
            empty = False
            yield number, fields
    if empty:
        raise TemplateListError(f"{path}: empty {what} file")


def _integer_columns(path: Path, columns: list[str], what: str, skip: int = 0) -> tuple[list[list[str]], np.ndarray]:
    """The first ``skip`` columns as strings, the others as an int64 ``[records, len(columns) - skip]`` array."""
    strings: list[list[str]] = [[] for _ in range(skip)]
    values = array("q")
    for number, fields in _rows(path, columns, what):
        for column, text in enumerate(fields[:skip]):
            strings[column].append(text)
        try:
            values.extend(int(text) for text in fields[skip:])
        except ValueError:
            bad = next(k for k in range(skip, len(fields)) if not fields[k].lstrip("-").isdigit())
            raise TemplateListError(f"{path}:{number}: {columns[bad]} {fields[bad]!r} is not an integer") from None
    return strings, np.frombuffer(values, dtype=np.int64).reshape(-1, len(columns) - skip)


@dataclass(frozen=True)
class ImageList:
    """Images of an image list with their template and media ids, in file order."""

    names: list[str]
    template_ids: np.ndarray
    media_ids: np.ndarray


def read_image_list(path: str | Path) -> ImageList:
    (names,), ids = _integer_columns(Path(path), ["IMAGE", "TEMPLATE_ID", "MEDIA_ID"], "image list", skip=1)
    return ImageList(names, ids[:, 0], ids[:, 1])


def read_template_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first template ids, second template ids, labels as bool)."""
    path = Path(path)
    _, table = _integer_columns(path, ["TEMPLATE_ID", "TEMPLATE_ID", "LABEL"], "template pair list")
    labels = table[:, 2]
    if not np.isin(labels, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])
        raise TemplateListError(f"{path}: record {bad + 1}: LABEL {labels[bad]} is neither 0 nor 1")
    return table[:, 0], table[:, 1], labels.astype(bool)


def read_template_subjects(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids) of a gallery or probe list."""
    _, table = _integer_columns(Path(path), ["TEMPLATE_ID", "SUBJECT_ID"], "template list")
    return table[:, 0], table[:, 1]


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


def _group_sums(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Row sums per group id ``0..G-1`` (every id present), by sorting and ``reduceat``: np.add.at is
    unbuffered and minutes slower on IJB-C's 469k x 512 image embeddings."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_group[1:] != sorted_group[:-1]]))
    return np.add.reduceat(values[order], starts, axis=0)


def aggregate_templates(embeddings: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray) -> TemplateFeatures:
    """Media-then-template aggregation of L2-normalised image embeddings ``[N, D]``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    media_keys, media_of_image = np.unique(np.stack([template_ids, media_ids], axis=1), axis=0, return_inverse=True)
    media_of_image = media_of_image.reshape(-1)
    media_mean = _group_sums(embeddings, media_of_image) / np.bincount(media_of_image)[:, None]
    templates, template_of_media = np.unique(media_keys[:, 0], return_inverse=True)
    template_sum = _group_sums(media_mean, template_of_media.reshape(-1))
    norms = np.linalg.norm(template_sum, axis=1, keepdims=True)
    return TemplateFeatures(templates, (template_sum / np.maximum(norms, 1e-12)).astype(np.float32))


def template_pair_scores(templates: TemplateFeatures, first: np.ndarray, second: np.ndarray, origin: str,
                         chunk: int = 1 << 16) -> np.ndarray:
    """Cosine similarity of each template pair, ``chunk`` pairs at a time (bounded memory for IJB-C)."""
    first_rows, second_rows = templates.rows(first, origin), templates.rows(second, origin)
    scores = np.empty(len(first_rows))
    for start in range(0, len(scores), chunk):
        a = templates.features[first_rows[start : start + chunk]].astype(np.float64)
        b = templates.features[second_rows[start : start + chunk]].astype(np.float64)
        scores[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return scores
