"""IJB-B/IJB-C style template evaluation: image lists, media-then-template aggregation, 1:1 pairs.

A *template* is the set of images known to show one subject (IJB: stills and video frames); a
*media* is one still or one video inside it. Aggregating media first keeps a 300-frame video from
outweighing one still: image features are averaged per media, the media means summed per
template and the sum L2-normalised, as insightface's ``image2template_feature`` does
(``recognition/arcface_torch/eval_ijbc.py``).

What an image contributes is set by insightface's three switches (:func:`image_features`); its
default, the mode of published IJB numbers, is F1 N1 D1: the raw embeddings of the image and its
mirror image summed (F1), their norm kept (N1: no per-image normalisation, so a blurry crop with a
small embedding weighs less) and multiplied by the face detector's score (D1).

Files (whitespace-separated text, one record per line, ``#`` starts a comment):

- image list (IJB ``ijbc_face_tid_mid.txt``): ``IMAGE TEMPLATE_ID MEDIA_ID``; IMAGE is a path
  relative to the image folder.
- template pairs (IJB ``ijbc_template_pair_label.txt``): ``TEMPLATE_ID TEMPLATE_ID LABEL``
  (1 = same subject, 0 = different).

The release layout around these files (landmarks, 1:N lists) is read by :mod:`partialfc.eval.ijb`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ImageList",
    "TemplateFeatures",
    "TemplateListError",
    "aggregate_templates",
    "image_features",
    "read_image_list",
    "read_template_pairs",
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
                raise TemplateListError(
                    f"{path}:{number}: expected {len(columns)} fields ({' '.join(columns)}), "
                    f"found {len(fields)}: {line.rstrip()!r}"
                )
            empty = False
            yield number, fields
    if empty:
        raise TemplateListError(f"{path}: empty {what} file")


def _line_of_record(path: Path, columns: list[str], record: int) -> int:
    """The line number of record ``record`` (from 0): comments and blank lines are not records."""
    return next(number for k, (number, _) in enumerate(_rows(path, columns, "list")) if k == record)


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
    columns = ["TEMPLATE_ID", "TEMPLATE_ID", "LABEL"]
    _, table = _integer_columns(path, columns, "template pair list")
    labels = table[:, 2]
    if not np.isin(labels, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])
        raise TemplateListError(f"{path}:{_line_of_record(path, columns, bad)}: LABEL {labels[bad]} is neither 0 nor 1")
    return table[:, 0], table[:, 1], labels.astype(bool)


@dataclass(frozen=True)
class TemplateFeatures:
    """One L2-normalised feature per template, template ids sorted ascending."""

    template_ids: np.ndarray
    features: np.ndarray

    def rows(self, template_ids: np.ndarray, origin: str) -> np.ndarray:
        """Row of each requested template id; ``origin`` names the list that asked, for the error.

        Ids in a compact range (IJB's are) go through a lookup table, as insightface's ``template2id``:
        15.7 million binary searches cost seconds, table lookups a fraction of that.
        """
        template_ids = np.asarray(template_ids)
        low, high = int(self.template_ids[0]), int(self.template_ids[-1])
        if high - low < 16 * len(self.template_ids) + (1 << 20):
            table = np.full(high - low + 2, -1, dtype=np.int64)  # the last entry answers every id out of range
            table[self.template_ids - low] = np.arange(len(self.template_ids))
            position = table[np.clip(template_ids - low, -1, high - low + 1)]
            missing = position < 0
        else:
            position = np.minimum(np.searchsorted(self.template_ids, template_ids), len(self.template_ids) - 1)
            missing = self.template_ids[position] != template_ids
        if missing.any():
            absent = np.unique(template_ids[missing])
            raise TemplateListError(
                f"{origin}: {len(absent)} template ids have no image in the image list (first: {absent[:5].tolist()})"
            )
        return position


def image_features(features: np.ndarray, detector_scores: np.ndarray | None, norm_score: bool = True) -> np.ndarray:
    """What each image brings to its media, in place on a float32 copy of ``features`` ``[N, D]``
    (already the image + mirror sums under F1): L2-normalised unless ``norm_score`` (N0 / N1), then
    multiplied by ``detector_scores`` when given (D1)."""
    inputs = np.array(features, dtype=np.float32)
    if not norm_score:
        inputs /= np.maximum(np.linalg.norm(inputs, axis=1, keepdims=True), 1e-12)
    if detector_scores is not None:
        inputs *= np.asarray(detector_scores, np.float32)[:, None]
    return inputs


def aggregate_templates(
    features: np.ndarray, template_ids: np.ndarray, media_ids: np.ndarray, block_rows: int = 1 << 14
) -> TemplateFeatures:
    """Media means summed per template, L2-normalised, from per-image ``features`` ``[N, D]``.

    The sum of media means is a weighted sum of images (weight 1 / images in its media), so one
    pass over the rows in file order multiplies each block of ``block_rows`` images by a sparse weight
    matrix and adds the result into the ``[templates, D]`` float64 sums (90 MiB for IJB-C):
    no sort or copy of the features, memory bounded by the block and the templates, each image
    touched once (insightface's loop scans every image id once per template).
    """
    template_ids, media_ids = np.asarray(template_ids), np.asarray(media_ids)
    if not (len(features) == len(template_ids) == len(media_ids)):
        raise ValueError(f"{len(features)} features for {len(template_ids)} template and {len(media_ids)} media ids")
    templates, template_of_image = np.unique(template_ids, return_inverse=True)
    medias, media_rank = np.unique(media_ids, return_inverse=True)
    # One integer per (template, media): media ids may repeat across templates, as in insightface's loop.
    _, media_of_image, media_sizes = np.unique(
        template_of_image.reshape(-1).astype(np.int64) * len(medias) + media_rank.reshape(-1),
        return_inverse=True,
        return_counts=True,
    )
    weights = torch.from_numpy((1.0 / media_sizes[media_of_image.reshape(-1)]).astype(np.float32))
    rows_template = torch.from_numpy(template_of_image.reshape(-1).astype(np.int64))
    sums = torch.zeros(len(templates), features.shape[1], dtype=torch.float64)
    for start in range(0, len(features), block_rows):
        block = torch.from_numpy(np.asarray(features[start : start + block_rows], dtype=np.float32))
        present, local = torch.unique(rows_template[start : start + block_rows], return_inverse=True)
        # The block's weights as a sparse [templates in block, rows] matrix (valid by construction):
        # one sparse-dense product, float32 within the block as insightface's own sums, float64 across.
        weight = torch.sparse_coo_tensor(
            torch.stack([local, torch.arange(len(block))]),
            weights[start : start + block_rows],
            size=(len(present), len(block)),
            check_invariants=False,
        )
        sums[present] += torch.sparse.mm(weight, block)
    sums /= sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return TemplateFeatures(templates, sums.to(torch.float32).numpy())


def template_pair_scores(
    templates: TemplateFeatures, first: np.ndarray, second: np.ndarray, origin: str, block: int = 1024
) -> np.ndarray:
    """Cosine similarity of each template pair. Pairs are grouped by their first template, ``block``
    first templates at a time; one matrix product scores each group against the second templates it
    needs, so features are read in sequence instead of gathered pair by pair (IJB-C: 15.7 million
    pairs among 23,124 templates). Memory beyond the pair arrays: one float32 ``[block, templates]``
    product (90 MiB for IJB-C)."""
    first_rows, second_rows = templates.rows(first, origin), templates.rows(second, origin)
    order = np.argsort(first_rows, kind="stable")
    sorted_first = first_rows[order]
    starts = np.arange(0, len(templates.template_ids) + block, block)
    bounds = np.searchsorted(sorted_first, starts)
    scores = np.empty(len(first_rows))
    for start, low, high in zip(starts, bounds[:-1], bounds[1:]):
        if low == high:
            continue
        pairs = order[low:high]
        needed, column = np.unique(second_rows[pairs], return_inverse=True)
        product = templates.features[start : start + block] @ templates.features[needed].T
        scores[pairs] = product[sorted_first[low:high] - start, column.reshape(-1)]
    return scores
