"""insightface's evaluation algorithms, written as plain loops from its published sources (each
function cites the file and function it follows), independent of partialfc.eval's vectorised code.

Used by the tests as references and by benchmarks/ijb_scale.py as the baseline. Nothing here is
copied: the loops restate what those functions compute (same thresholds, tie-breaks, orders).
"""

from __future__ import annotations

import heapq
import math

import numpy as np


def kfold_test_indices(num_items: int, folds: int = 10) -> list[np.ndarray]:
    """sklearn ``KFold(n_splits=folds, shuffle=False)``: the first ``num_items % folds`` folds take one more."""
    sizes = [num_items // folds + (1 if k < num_items % folds else 0) for k in range(folds)]
    bounds = np.cumsum([0, *sizes])
    return [np.arange(bounds[k], bounds[k + 1]) for k in range(folds)]


def calculate_roc_accuracy(distances: np.ndarray, issame: np.ndarray, folds: int = 10) -> list[float]:
    """``recognition/arcface_torch/eval/verification.py``, ``calculate_roc`` with ``calculate_accuracy``:
    thresholds ``np.arange(0, 4, 0.01)``, predict same when ``distance < threshold``, the first best
    threshold of the training folds scores the test fold."""
    thresholds = np.arange(0, 4, 0.01)
    accuracies = []
    for test in kfold_test_indices(len(distances), folds):
        train = np.setdiff1d(np.arange(len(distances)), test)
        train_accuracy = np.zeros(len(thresholds))
        for t, threshold in enumerate(thresholds):
            predict = np.less(distances[train], threshold)
            train_accuracy[t] = np.sum(predict == issame[train]) / len(train)
        best = thresholds[int(np.argmax(train_accuracy))]
        accuracies.append(float(np.sum(np.less(distances[test], best) == issame[test]) / len(test)))
    return accuracies


def sklearn_roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(labels, scores)`` with its default ``drop_intermediate=True``, as a
    walk down the scores: one point per distinct score, then every point whose neighbours lie at equal
    steps on both axes dropped, then the (0, 0) point with an infinite threshold in front."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    points = []  # (false positives, true positives, threshold)
    tp = fp = 0
    for position, i in enumerate(order):
        tp += int(labels[i])
        fp += 1 - int(labels[i])
        if position == len(order) - 1 or scores[order[position + 1]] != scores[i]:
            points.append((fp, tp, scores[i]))
    if len(points) > 2:
        kept = [points[0]]
        for k in range(1, len(points) - 1):
            (f0, t0, _), (f1, t1, _), (f2, t2, _) = points[k - 1], points[k], points[k + 1]
            if f2 - 2 * f1 + f0 != 0 or t2 - 2 * t1 + t0 != 0:
                kept.append(points[k])
        points = [*kept, points[-1]]
    points = [(0, 0, math.inf), *points]
    fps, tps, thresholds = (np.array(column, dtype=np.float64) for column in zip(*points))
    return fps / fps[-1], tps / tps[-1], thresholds


def eval_ijbc_tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: list[float]) -> list[float]:
    """``recognition/arcface_torch/eval_ijbc.py``, the TPR@FPR table: the ROC flipped, then for each FAR
    the first point (in flipped order) of least ``|fpr - far|``."""
    fpr, tpr, _ = sklearn_roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    row = []
    for far in fars:
        _, index = min(zip(abs(fpr - far), range(len(fpr))))
        row.append(float(tpr[index]))
    return row


def insightface_image_inputs(
    image_feats: np.ndarray, faceness: np.ndarray, use_flip_test: bool, use_norm_score: bool, use_detector_score: bool
) -> np.ndarray:
    """``eval_ijbc.py`` before ``image2template_feature``: ``image_feats`` ``[N, 2D]`` holds the raw
    embeddings of each crop and of its mirror image side by side; F1 adds the halves, N0 normalises
    each row, D1 multiplies by the detector score."""
    half = image_feats.shape[1] // 2
    inputs = image_feats[:, :half] + image_feats[:, half:] if use_flip_test else image_feats[:, :half]
    if not use_norm_score:
        inputs = inputs / np.sqrt(np.sum(inputs**2, -1, keepdims=True))
    if use_detector_score:
        inputs = inputs * faceness[:, np.newaxis]
    return inputs


def image2template_feature(
    img_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``eval_ijbc.py``, ``image2template_feature``: per template (ascending id), the mean of each media's
    images, summed over media, then L2-normalised (sklearn ``normalize``: a zero row stays zero)."""
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count, template in enumerate(unique_templates):
        (rows,) = np.where(templates == template)
        feats, template_medias = img_feats[rows], medias[rows]
        media_feats = []
        for media in np.unique(template_medias):
            (in_media,) = np.where(template_medias == media)
            media_feats.append(np.mean(feats[in_media], axis=0))
        template_feats[count] = np.sum(np.array(media_feats), axis=0)
    norms = np.sqrt(np.sum(template_feats**2, axis=1, keepdims=True))
    return template_feats / np.where(norms == 0, 1, norms), unique_templates


def verification_scores(
    template_feats: np.ndarray, unique_templates: np.ndarray, p1: np.ndarray, p2: np.ndarray, batch: int = 100000
) -> np.ndarray:
    """``eval_ijbc.py``, ``verification``: a template-id lookup table, then dot products ``batch`` pairs at a time."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count, template in enumerate(unique_templates):
        template2id[template] = count
    score = np.zeros(len(p1))
    for start in range(0, len(p1), batch):
        s = np.arange(start, min(start + batch, len(p1)))
        score[s] = np.sum(template_feats[template2id[p1[s]]] * template_feats[template2id[p2[s]]], -1).flatten()
    return score


def ijb_1n_evaluation(
    query_feats: np.ndarray, gallery_feats: np.ndarray, mask: list[int], fars: tuple[float, ...] = (0.01, 0.1)
) -> tuple[dict[int, float], dict[float, float]]:
    """``recognition/_evaluation_/ijb/ijb_1n.py``, ``evaluation``: top-1/5/10 by sorting each probe's
    similarities, and per FAR the share of mate scores above the ``ceil(probes x FAR)``-th largest
    non-mate score (every non-mate score of every probe pooled)."""
    similarity = np.dot(query_feats, gallery_feats.T)
    top = np.argsort(-similarity, kind="stable")
    hits = {k: sum(mask[i] in top[i, :k] for i in range(len(mask))) / len(mask) for k in (1, 5, 10)}
    positives: list[float] = []
    negatives: list[float] = []
    for i in range(len(mask)):
        for j in range(similarity.shape[1]):
            (positives if j == mask[i] else negatives).append(similarity[i, j])
    tpir = {}
    for far in fars:
        needed = math.ceil(len(mask) * far)
        threshold = heapq.nlargest(needed, negatives)[needed - 1]
        tpir[far] = float(np.sum(np.array(positives) > threshold) / len(mask))
    return hits, tpir


def umeyama_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """skimage ``SimilarityTransform.estimate`` (Umeyama 1991, with scale), which insightface's
    ``face_align.norm_crop`` and ``eval_ijbc.py`` call: the 2x3 matrix mapping ``source`` onto ``target``."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    x, y = source - source_mean, target - target_mean
    covariance = y.T @ x / len(source)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[-1] = -1
    u, singular, vt = np.linalg.svd(covariance)
    rotation = u @ np.diag(signs) @ vt
    scale = (singular @ signs) / x.var(axis=0).sum()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])
