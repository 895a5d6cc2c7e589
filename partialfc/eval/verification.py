"""1:1 verification on InsightFace ``.bin`` sets (LFW protocol), during training and offline.

Each rank embeds a contiguous slice of a set's images, original and horizontally flipped (the
two embeddings are summed, then L2-normalised); one all-gather gives every rank all embeddings,
and every rank computes the same metrics: no rank idles while rank 0 works (the incumbent's
behaviour) and no extra broadcast is needed. Offline (``python -m partialfc.eval verify``) the
same code runs in one process, with a PyTorch or an ONNX model behind an :class:`Embedder`.

Metrics (conventions in :mod:`partialfc.eval.scores`): the 10-fold accuracy (mean ± std) read as
insightface's ``calculate_roc`` reads it, on its 0.01 grid of squared L2 distances, which is what every
published LFW/CFP-FP/AgeDB figure is, and beside it the exact best cut between distinct cosine scores;
the grid threshold fitted on all pairs, TAR at several FARs (strict), and the mean norm of the raw
embeddings (insightface's "XNorm").
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

__all__ = ["VerificationResult", "VerifyProtocol", "evaluate", "verify_set"]

VERIFY_FARS = (1e-4, 1e-3, 1e-2)
DEFAULT_BIN = DEFAULT_DATA / f"{VERIFICATION_NAME}.bin"


@dataclass(frozen=True)
class VerificationResult:
    """Two read-outs of the same pairs: ``accuracy`` is insightface's (the 0.01 grid on squared L2
    distances: what their README and papers publish); ``best_cut_*`` the exact best cut between
    distinct cosine scores, never below it on the training folds."""

    name: str
    accuracy: float
    accuracy_std: float
    tar_at_far: float  # at ``far``
    far: float
    num_pairs: int
    threshold: float = float("nan")  # the grid threshold fitted on all pairs, as a cosine
    best_cut_accuracy: float = float("nan")
    best_cut_accuracy_std: float = float("nan")
    best_cut_threshold: float = float("nan")
    tar_at_fars: dict[float, float] = field(default_factory=dict)
    mean_norm: float = float("nan")


def verify_set(
    embedder: Embedder,
    vset: VerificationSet,
    batch_size: int,
    far: float = 1e-3,
    fars: tuple[float, ...] = VERIFY_FARS,
) -> VerificationResult:
    """Collective when torch.distributed is initialised: every rank gets the same result.

    The sums are normalised in float64, as insightface's ``sklearn.preprocessing.normalize`` does.
    """
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
    grid = grid_verification_accuracy((first - second).square().sum(dim=1).numpy(), vset.issame)
    best_cut = verification_accuracy(similarity, vset.issame)
    all_fars = tuple(sorted(set(fars) | {far}))
    tars, _ = strict_tar_at_far(similarity[vset.issame], similarity[~vset.issame], all_fars)
    tar_of = dict(zip(all_fars, tars.tolist()))
    return VerificationResult(
        vset.name,
        grid.mean,
        grid.std,
        tar_of[far],
        far,
        vset.num_pairs,
        threshold=grid.threshold,
        best_cut_accuracy=best_cut.mean,
        best_cut_accuracy_std=best_cut.std,
        best_cut_threshold=best_cut.threshold,
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

    def __init__(self, batch_size: int, fars: tuple[float, ...] = VERIFY_FARS) -> None:
        self.batch_size, self.fars = batch_size, fars

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "bins",
            metavar="BIN",
            nargs="*",
            help=f"verification .bin files (default: {DEFAULT_BIN})",
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
        protocol = cls(args.batch_size, tuple(args.far))
        return protocol, [VerificationSet(path) for path in args.bins or [DEFAULT_BIN]]

    def run(self, embedder: Embedder | StoredEmbeddings, source: VerificationSet) -> EvalResult:
        if isinstance(embedder, StoredEmbeddings):
            raise ValueError(f"{embedder.description}: verify embeds each pair and its mirror image; give a model")
        start = time.perf_counter()
        result = verify_set(embedder, source, self.batch_size, self.fars[0], self.fars)
        seconds = time.perf_counter() - start
        tar_names = {far: f"TAR@FAR={far:g}" for far in self.fars}
        summary = {
            "accuracy": result.accuracy,
            "accuracy_std": result.accuracy_std,
            "threshold": result.threshold,
            "best_cut_accuracy": result.best_cut_accuracy,
            "best_cut_accuracy_std": result.best_cut_accuracy_std,
            **{tar_names[far]: tar for far, tar in result.tar_at_fars.items()},
            "mean_norm": result.mean_norm,
        }
        row = (
            result.name,
            str(result.num_pairs),
            format_number(result.accuracy),
            format_number(result.accuracy_std),
            format_number(result.best_cut_accuracy),
            format_number(result.threshold),
            *(format_number(result.tar_at_fars[far]) for far in self.fars),
            f"{result.mean_norm:.2f}",
            f"{seconds:.1f}",
        )
        header = ("set", "pairs", "accuracy", "± std", "best cut", "threshold", *tar_names.values(), "norm", "seconds")
        return EvalResult(
            self.name,
            result.name,
            summary,
            self.headline,
            Table(header, (row,)),
            notes=[
                f"{embedder.description}; 10-fold accuracy with flip on insightface's 0.01 grid of squared L2 "
                "distances (the published read-out); best cut: the exact best threshold between distinct cosines; "
                "TAR@FAR strict"
            ],
            details={"pairs": result.num_pairs, "best_cut_threshold": result.best_cut_threshold},
            seconds=seconds,
        )
