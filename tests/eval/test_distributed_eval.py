"""Verification during training: ranks embed unequal slices, gather once, and agree with one process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from dist_harness import run_distributed

from partialfc.data import VerificationSet
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
