"""Evaluation during training: ranks embed unequal slices, gather once, and agree with one process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from dist_harness import run_distributed

from partialfc.data import VerificationSet
from partialfc.data.synth import HOLDOUT_DIR
from partialfc.eval.embedder import TorchEmbedder
from partialfc.eval.ijb_protocols import IdentifyProtocol, IJBSource, PairsProtocol
from partialfc.eval.verification import evaluate
from partialfc.models import create_model


def _evaluate(rank: int, world_size: int, bin_path: str) -> dict:
    torch.manual_seed(0)  # the same weights on every rank
    model = create_model("tiny", embedding_size=32)
    return dataclasses.asdict(evaluate(model, VerificationSet(bin_path), 32, torch.device("cpu"), batch_size=50))


def test_three_ranks_match_one_process(tiny_dataset: Path):
    bin_path = str(tiny_dataset / "synth_val.bin")  # 400 images: slices of 134, 133, 133
    single = _evaluate(0, 1, bin_path)
    ranks = run_distributed(_evaluate, 3, bin_path)
    for result in ranks:
        assert result == ranks[0]
    for key in ("accuracy", "accuracy_std", "threshold", "mean_norm"):
        assert abs(ranks[0][key] - single[key]) < 1e-6, key
    assert ranks[0]["tar_at_fars"] == single["tar_at_fars"]


class _CountingEmbedder(TorchEmbedder):
    images = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images += len(pixels)
        return super().__call__(pixels)


def _ijb(rank: int, world_size: int, release: str) -> dict:
    torch.manual_seed(0)
    model = create_model("tiny", embedding_size=32).eval()
    embedder = _CountingEmbedder(model, torch.device("cpu"), 32)
    source = IJBSource.open(release)
    pairs = PairsProtocol(batch_size=50).run(embedder, source)
    identify = IdentifyProtocol(batch_size=50).run(embedder, source)
    return {"pairs": pairs.summary, "identify": identify.summary, "forwards": embedder.images}


def test_ijb_protocols_on_three_ranks_match_one_process(tiny_dataset: Path):
    """The hold-out release's 320 images in slices of 107, 107, 106; template features from the gathered rows."""
    release = str(tiny_dataset / HOLDOUT_DIR)
    single = _ijb(0, 1, release)
    ranks = run_distributed(_ijb, 3, release)
    assert [result.pop("forwards") for result in ranks] == [2 * 107, 2 * 107, 2 * 106]  # image and mirror, once
    assert single.pop("forwards") == 2 * 320
    for result in ranks:
        assert result == ranks[0]
    for protocol in ("pairs", "identify"):
        assert ranks[0][protocol] == pytest.approx(single[protocol], abs=1e-6), protocol
