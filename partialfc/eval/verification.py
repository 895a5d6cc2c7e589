"""1:1 verification on InsightFace ``.bin`` sets (LFW protocol), during training and offline.

Each rank embeds a contiguous slice of a set's images, original and horizontally flipped (the
two embeddings are summed, then L2-normalised); one all-gather gives every rank all embeddings,
and every rank computes the same metrics: no rank idles while rank 0 works (the incumbent's
behaviour) and no extra broadcast is needed. Offline (``python -m partialfc.eval verify``) the
same code runs in one process, with a PyTorch or an ONNX model behind an :class:`Embedder`.

Metrics on the cosine similarity of the pairs (conventions in :mod:`partialfc.eval.protocol`):
10-fold accuracy (mean ± std), the best threshold on all pairs, TAR at several FARs (strict), and
the mean norm of the raw embeddings (insightface's "XNorm"). ``thresholds="insightface-grid"``
scores the folds on insightface's 0.01 squared-L2 grid instead, to match a published figure to the digit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partialfc.common.distributed import all_gather_into, shard_range
from partialfc.data import VerificationSet
from partialfc.eval.embedder import Embedder, TorchEmbedder, embed_batch
from partialfc.eval.protocol import grid_verification_accuracy, strict_tar_at_far, verification_accuracy

__all__ = ["THRESHOLD_RULES", "VerificationResult", "embed_pairs", "evaluate", "verify_set"]

VERIFY_FARS = (1e-4, 1e-3, 1e-2)
# "distinct": the best cut between distinct cosine scores; "insightface-grid": insightface's 0.01 distance grid.
THRESHOLD_RULES = ("distinct", "insightface-grid")


@dataclass(frozen=True)
class VerificationResult:
    name: str
    accuracy: float
    accuracy_std: float
    tar_at_far: float  # at ``far``
    far: float
    num_pairs: int
    threshold: float = float("nan")  # best threshold fitted on all pairs
    tar_at_fars: dict[float, float] = field(default_factory=dict)
    mean_norm: float = float("nan")


@torch.no_grad()
def embed_pairs(embedder: Embedder, vset: VerificationSet, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image + flip embedding sums ``[2P, D]``, not normalised; raw norms ``[2P, 2]``) on every rank."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    start, count = shard_range(len(vset), rank, world_size)
    width = embedder.embedding_size + 2  # embedding, then the two raw norms: one gather for both
    chunks = [torch.empty(0, width)]
    for offset in range(start, start + count, batch_size):
        pixels = vset.images(slice(offset, min(offset + batch_size, start + count)))
        embedding, norms = embed_batch(embedder, pixels, flip=True, normalize=False)
        chunks.append(torch.cat([embedding, norms], dim=1).cpu())
    local = torch.cat(chunks)
    if world_size > 1:
        # Slices differ by at most one image: pad to the largest, gather once, trim.
        device = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )
        longest = shard_range(len(vset), 0, world_size)[1]
        padded = torch.zeros(longest, width, device=device)
        padded[:count] = local.to(device)
        gathered = torch.empty(world_size * longest, width, device=device)
        all_gather_into(gathered, padded)
        local = torch.cat(
            [gathered[r * longest : r * longest + shard_range(len(vset), r, world_size)[1]] for r in range(world_size)]
        ).cpu()
    return local[:, :-2], local[:, -2:]


def verify_set(
    embedder: Embedder,
    vset: VerificationSet,
    batch_size: int,
    far: float = 1e-3,
    fars: tuple[float, ...] = VERIFY_FARS,
    thresholds: str = "distinct",
) -> VerificationResult:
    """Collective when torch.distributed is initialised: every rank gets the same result.

    The sums are normalised in float64, as insightface's ``sklearn.preprocessing.normalize`` does.
    """
    if thresholds not in THRESHOLD_RULES:
        raise ValueError(f"thresholds={thresholds!r}: choose one of {THRESHOLD_RULES}")
    sums, norms = embed_pairs(embedder, vset, batch_size)
    embeddings = F.normalize(sums.double(), dim=1)
    first, second = embeddings[0::2], embeddings[1::2]
    similarity = (first * second).sum(dim=1).numpy()
    if thresholds == "distinct":
        accuracy = verification_accuracy(similarity, vset.issame)
    else:
        accuracy = grid_verification_accuracy((first - second).square().sum(dim=1).numpy(), vset.issame)
    all_fars = tuple(sorted(set(fars) | {far}))
    tars, _ = strict_tar_at_far(similarity[vset.issame], similarity[~vset.issame], all_fars)
    tar_of = dict(zip(all_fars, tars.tolist()))
    return VerificationResult(
        vset.name,
        accuracy.mean,
        accuracy.std,
        tar_of[far],
        far,
        vset.num_pairs,
        threshold=accuracy.threshold,
        tar_at_fars={f: tar_of[f] for f in fars},
        mean_norm=float(norms.double().mean()) if len(norms) else float("nan"),
    )


def evaluate(
    model: nn.Module,
    vset: VerificationSet,
    embedding_size: int,
    device: torch.device,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    far: float = 1e-3,
) -> VerificationResult:
    """The trainer's entry point: a backbone in training, switched to eval mode for the pass."""
    was_training = model.training
    model.eval()
    try:
        return verify_set(TorchEmbedder(model, device, embedding_size, amp_dtype), vset, batch_size, far=far)
    finally:
        model.train(was_training)
