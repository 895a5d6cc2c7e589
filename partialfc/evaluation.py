"""Face verification during training (LFW protocol), with the embedding work spread over all ranks.

Each rank embeds a contiguous slice of a ``.bin`` set's images, original and horizontally flipped
(the two embeddings are summed, then L2-normalised); one all-gather gives every rank all
embeddings, and every rank computes the same metrics: no rank idles while rank 0 works (the
incumbent's behaviour) and no extra broadcast is needed.

Metrics on cosine similarity of the pairs:

- **accuracy**: 10-fold cross-validation; in each fold the threshold that maximises accuracy on the
  other nine folds is applied to the held-out fold; mean ± std over folds.
- **TAR@FAR**: the share of positive pairs above the threshold at which a fraction ``far`` of the
  negative pairs is accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partialfc.data.verification import VerificationSet
from partialfc.distributed import all_gather_into
from partialfc.partial_fc import shard_range

__all__ = ["VerificationResult", "verification_metrics", "embed_pairs", "evaluate"]


@dataclass(frozen=True)
class VerificationResult:
    name: str
    accuracy: float
    accuracy_std: float
    tar_at_far: float
    far: float
    num_pairs: int


def verification_metrics(similarity: np.ndarray, issame: np.ndarray, far: float = 1e-3, folds: int = 10) -> tuple[float, float, float]:
    """(mean accuracy, std over folds, TAR at ``far``) of pair similarities."""
    similarity, issame = np.asarray(similarity, dtype=np.float64), np.asarray(issame, dtype=bool)
    fold_of = np.arange(len(similarity)) * folds // max(len(similarity), 1)
    accuracies = []
    for fold in range(folds):
        test = fold_of == fold
        if not test.any():
            continue
        threshold = _best_threshold(similarity[~test], issame[~test])
        accuracies.append(np.mean((similarity[test] > threshold) == issame[test]))
    negatives = np.sort(similarity[~issame])[::-1]
    accepted = int(math.floor(far * len(negatives)))  # negatives allowed above the threshold
    threshold = negatives[accepted] if accepted < len(negatives) else -np.inf
    tar = float(np.mean(similarity[issame] > threshold)) if issame.any() else float("nan")
    return float(np.mean(accuracies)), float(np.std(accuracies)), tar


def _best_threshold(similarity: np.ndarray, issame: np.ndarray) -> float:
    """Threshold maximising accuracy of ``similarity > t``, over all distinct cut points."""
    order = np.argsort(similarity)
    sorted_sim, sorted_same = similarity[order], issame[order]
    # Cutting after position k (pairs 0..k rejected): correct = negatives in 0..k + positives after k.
    negatives_below = np.cumsum(~sorted_same)
    positives_above = sorted_same.sum() - np.cumsum(sorted_same)
    correct = np.concatenate([[sorted_same.sum()], negatives_below + positives_above])
    best = int(np.argmax(correct))
    if best == 0:
        return float(sorted_sim[0]) - 1e-6
    upper = sorted_sim[best] if best < len(sorted_sim) else sorted_sim[-1] + 1e-6
    return float((sorted_sim[best - 1] + upper) / 2)


@torch.no_grad()
def embed_pairs(
    model: nn.Module,
    vset: VerificationSet,
    embedding_size: int,
    device: torch.device,
    batch_size: int,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """L2-normalised (image + flip) embeddings of every image of ``vset``, on every rank."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    start, count = shard_range(len(vset), rank, world_size)
    chunks = [torch.empty(0, embedding_size, device=device)]
    for offset in range(start, start + count, batch_size):
        pixels = torch.from_numpy(vset.images(slice(offset, min(offset + batch_size, start + count))))
        images = model.input_config.normalize(pixels.to(device))
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            embedding = model(images).float() + model(images.flip(3)).float()
        chunks.append(F.normalize(embedding, dim=1))
    local = torch.cat(chunks)
    if world_size == 1:
        return local
    # Slices differ by at most one image: pad to the largest, gather once, trim.
    longest = shard_range(len(vset), 0, world_size)[1]
    padded = torch.zeros(longest, embedding_size, device=device)
    padded[:count] = local
    gathered = torch.empty(world_size * longest, embedding_size, device=device)
    all_gather_into(gathered, padded)
    parts = [gathered[r * longest : r * longest + shard_range(len(vset), r, world_size)[1]] for r in range(world_size)]
    return torch.cat(parts)


def evaluate(
    model: nn.Module,
    vset: VerificationSet,
    embedding_size: int,
    device: torch.device,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    far: float = 1e-3,
) -> VerificationResult:
    """Collective: every rank calls it with the same set and gets the same result."""
    was_training = model.training
    model.eval()
    try:
        embeddings = embed_pairs(model, vset, embedding_size, device, batch_size, amp_dtype).cpu()
    finally:
        model.train(was_training)
    similarity = (embeddings[0::2] * embeddings[1::2]).sum(dim=1).numpy()
    accuracy, std, tar = verification_metrics(similarity, vset.issame, far=far)
    return VerificationResult(vset.name, accuracy, std, tar, far, vset.num_pairs)
