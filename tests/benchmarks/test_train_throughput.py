"""The throughput benchmark times the trainer's own step (TrainStep), not a step of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from training_run import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import train_throughput

from partialfc.training.train_step import StepReport, TrainStep


def test_the_timed_steps_are_the_trainers_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reports: list[StepReport] = []

    class CountedStep(TrainStep):
        def __call__(self, *args, **kwargs) -> StepReport:
            reports.append(super().__call__(*args, **kwargs))
            return reports[-1]

    monkeypatch.setattr(train_throughput, "TrainStep", CountedStep)
    out = tmp_path / "throughput.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train_throughput.py",
            "--backbone",
            "tiny",
            "--num-classes",
            "300",
            "--batch",
            "8",
            "--embedding-size",
            "32",
            "--amp",
            "none",
            "--data-backend",
            "torch",
            "--data-workers",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
            "--synthetic-identities",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
    )
    train_throughput.main()
    assert len(reports) == 2 * (2 + 1)  # "step" and "resident step", warm-up included
    assert all(report.applied and report.micro_batches == 1 for report in reports)
    assert reports[0].sampled_centres == 30  # the benchmark's sample rate reached the step
    figures = json.loads(out.read_text())
    assert figures["ms"]["step"] > 0 and figures["ms"]["resident step"] > 0
