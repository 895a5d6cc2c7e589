"""1:1 verification on InsightFace ``.bin`` sets (LFW protocol), during training and offline.

Each rank embeds a contiguous slice of a set's images, original and horizontally flipped (the
two embeddings are summed, then L2-normalised); one all-gather gives every rank all embeddings,
and every rank computes the same metrics: no rank idles while rank 0 works (the incumbent's
behaviour) and no extra broadcast is needed. Offline (``python -m partialfc.eval verify``) the
same code runs in one process, with a PyTorch or an ONNX model behind an :class:`Embedder`.

Metrics on the cosine similarity of the pairs (conventions in :mod:`partialfc.eval.scores`):
10-fold accuracy (mean ± std), the best threshold on all pairs, TAR at several FARs (strict), and
the mean norm of the raw embeddings (insightface's "XNorm"). ``thresholds="insightface-grid"``
scores the folds on insightface's 0.01 squared-L2 grid instead, to match a published figure to the digit.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partialfc.data import VerificationSet
from partialfc.data.synth import VERIFICATION_NAME
from partialfc.eval.embedder import Embedder, StoredEmbeddings, TorchEmbedder, embed_source, evaluating
from partialfc.eval.protocols import DEFAULT_DATA, EvalProtocol, EvalResult, Table, format_number
from partialfc.eval.scores import grid_verification_accuracy, strict_tar_at_far, verification_accuracy
from partialfc.eval.sources import verification_set_source

__all__ = ["THRESHOLD_RULES", "VerificationResult", "VerifyProtocol", "evaluate", "verify_set"]

VERIFY_FARS = (1e-4, 1e-3, 1e-2)
# "distinct": the best cut between distinct cosine scores; "insightface-grid": insightface's 0.01 distance grid.
THRESHOLD_RULES = ("distinct", "insightface-grid")
DEFAULT_BIN = DEFAULT_DATA / f"{VERIFICATION_NAME}.bin"


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
    sums, norms = embed_source(
        embedder,
        verification_set_source(vset),
        batch_size,
        flip=True,
        progress=False,
        normalize=False,
        across_ranks=True,
    )
    embeddings = F.normalize(torch.from_numpy(sums).double(), dim=1)
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
        mean_norm=float(norms.astype(np.float64).mean()) if len(norms) else float("nan"),
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
    """A backbone in training, evaluated in eval mode (and put back)."""
    with evaluating(model):
        return verify_set(TorchEmbedder(model, device, embedding_size, amp_dtype), vset, batch_size, far=far)


class VerifyProtocol(EvalProtocol[VerificationSet]):
    """1:1 verification on ``.bin`` sets: one result per set, accuracy the headline."""

    name = "verify"
    help = "1:1 verification on InsightFace .bin sets (LFW protocol)"
    description = (
        "10-fold accuracy with flip (mean ± std over sklearn-style folds, best threshold among cuts between "
        "distinct similarities), the threshold fitted on all pairs, TAR@FAR and the mean raw embedding norm, "
        "per .bin set."
    )
    headline = "accuracy"

    def __init__(self, batch_size: int, fars: tuple[float, ...] = VERIFY_FARS, thresholds: str = "distinct") -> None:
        if thresholds not in THRESHOLD_RULES:
            raise ValueError(f"thresholds={thresholds!r}: choose one of {THRESHOLD_RULES}")
        self.batch_size, self.fars, self.thresholds = batch_size, fars, thresholds

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "bins",
            metavar="BIN",
            nargs="*",
            help=f"verification .bin files (default: {DEFAULT_BIN})",
        )
        parser.add_argument(
            "--thresholds",
            choices=THRESHOLD_RULES,
            default=THRESHOLD_RULES[0],
            help="distinct: best cut between distinct cosine scores (exact); insightface-grid: insightface's "
            "calculate_roc, squared-L2 thresholds np.arange(0, 4, 0.01), to match a published LFW/CFP-FP/AgeDB "
            "figure to the digit (default distinct)",
        )
        parser.add_argument(
            "--far",
            type=float,
            nargs="+",
            default=list(VERIFY_FARS),
            help=f"false accept rates at which TAR is reported (default: {' '.join(f'{f:g}' for f in VERIFY_FARS)})",
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[VerifyProtocol, list[VerificationSet]]:
        protocol = cls(args.batch_size, tuple(args.far), args.thresholds)
        return protocol, [VerificationSet(path) for path in args.bins or [DEFAULT_BIN]]

    def run(self, embedder: Embedder | StoredEmbeddings, source: VerificationSet) -> EvalResult:
        if isinstance(embedder, StoredEmbeddings):
            raise ValueError(f"{embedder.description}: verify embeds each pair and its mirror image; give a model")
        start = time.perf_counter()
        result = verify_set(embedder, source, self.batch_size, self.fars[0], self.fars, self.thresholds)
        seconds = time.perf_counter() - start
        tar_names = {far: f"TAR@FAR={far:g}" for far in self.fars}
        summary = {
            "accuracy": result.accuracy,
            "accuracy_std": result.accuracy_std,
            "threshold": result.threshold,
            **{tar_names[far]: tar for far, tar in result.tar_at_fars.items()},
            "mean_norm": result.mean_norm,
        }
        row = (
            result.name,
            str(result.num_pairs),
            format_number(result.accuracy),
            format_number(result.accuracy_std),
            format_number(result.threshold),
            *(format_number(result.tar_at_fars[far]) for far in self.fars),
            f"{result.mean_norm:.2f}",
            f"{seconds:.1f}",
        )
        return EvalResult(
            self.name,
            result.name,
            summary,
            self.headline,
            Table(("set", "pairs", "accuracy", "± std", "threshold", *tar_names.values(), "norm", "seconds"), (row,)),
            notes=[f"{embedder.description}; 10-fold accuracy with flip, thresholds {self.thresholds}; TAR@FAR strict"],
            details={"pairs": result.num_pairs, "threshold_rule": self.thresholds},
            seconds=seconds,
        )
