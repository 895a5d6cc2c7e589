"""``benchmarks/sample_rate_study.py``: its generator (deterministic from seeds, the stated difficulty
structure), its report (paired verdicts, identical runs shown once, the committed doc regenerated exactly),
and a two-step run of the real 2-rank step with a resume and a report."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
from training_run import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # spawned ranks import the module by name, so it must be importable
import sample_rate_study as study
import study_report


def test_samples_are_a_function_of_seed_identity_and_index_only() -> None:
    space = study.IdentitySpace(seed=7)
    ids, index = np.array([5, 900_000, 5, 3]), np.array([0, 2, 1, 0])
    batch = space.samples(ids, index)
    # Any row is the same whether asked alone, in another order, or in another batch: nothing is streamed.
    assert np.array_equal(space.samples(ids[::-1], index[::-1]), batch[::-1])
    assert np.array_equal(space.samples(ids[1:2], index[1:2])[0], batch[1])
    assert not np.allclose(batch[0], batch[2])  # two samples of identity 5 differ
    assert not np.allclose(study.IdentitySpace(seed=8).samples(ids, index), batch)
    assert batch.dtype == np.float32 and batch.shape == (4, space.input_dim)


def test_counter_gaussians_are_standard_normal() -> None:
    values = study.counter_gaussians(0, 1, np.arange(4000), np.zeros(4000, np.uint64), 63)
    assert values.shape == (4000, 63)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1.0) < 0.01
    assert abs(np.corrcoef(values[:, 0], values[:, 31])[0, 1]) < 0.05  # cos and sin halves are independent


def test_difficulty_structure_is_prototype_plus_low_rank_nuisance_plus_noise() -> None:
    space = study.IdentitySpace(seed=3, input_dim=32, nuisance_rank=4, nuisance_std=0.5, noise_std=0.1)
    basis = space.basis()
    assert np.allclose(basis.T @ basis, np.eye(4), atol=1e-10)
    ids = np.repeat(np.arange(50), 200)
    index = np.tile(np.arange(200), 50)
    deviation = space.samples(ids, index, basis) - space.prototypes(ids)
    assert np.allclose(np.linalg.norm(space.prototypes(np.arange(50)), axis=1), 1.0)
    inside = deviation @ basis  # coordinates along the shared nuisance directions
    outside = deviation - inside @ basis.T
    assert np.allclose(inside.std(axis=0), 0.5, rtol=0.05)
    assert math.isclose(outside.var(axis=0).sum() / (32 - 4), 0.1**2, rel_tol=0.05)
    # The nuisance directions are shared: the same U for every identity and for held-out identities.
    held_out = study.HOLDOUT_BASE + np.repeat(np.arange(20), 200)
    held_dev = space.samples(held_out, np.tile(np.arange(200), 20), basis) - space.prototypes(held_out)
    assert np.allclose((held_dev @ basis).std(axis=0), 0.5, rtol=0.08)


def test_held_out_pairs_are_fixed_interleaved_and_correct() -> None:
    holdout = study.HeldOut(identities=50, samples=4, pairs=400)
    first, second, issame = holdout.pair_rows(0)
    again = holdout.pair_rows(0)
    assert all(np.array_equal(a, b) for a, b in zip((first, second, issame), again))
    ids, _ = holdout.ids()
    assert np.array_equal(ids[first] == ids[second], issame)
    assert not np.any(first == second)
    assert issame[::2].all() and not issame[1::2].any()  # every fold of 40 pairs holds both kinds
    assert ids.min() >= study.HOLDOUT_BASE


def record(num_classes: int, rate: float, seed: int, centres: float, **metrics: float) -> dict:
    """A finished ArcFace cell as results.jsonl holds it; metrics not given are 0.5."""
    return {
        "num_classes": num_classes,
        "sample_rate": rate,
        "head": "arcface",
        "seed": seed,
        **{metric: metrics.get(metric, 0.5) for metric in study.METRICS},
        "centres_per_step": centres,
        "steps": 62,
        "global_batch": 128,
        "train_seconds": 1.0,
        "world_size": 2,
        "settings": {"space": {"seed": 0}},
    }


def test_identical_runs_share_one_row_and_rows_filled_by_positives_are_marked(tmp_path: Path) -> None:
    results = [
        *(record(1000, 1.0, s, 1000.0, rank1=0.4 + s / 100) for s in range(3)),
        *(record(1000, 0.3, s, 300.0, rank1=0.41 + s / 100) for s in range(3)),
        *(record(1000, 0.1, s, 121.2, rank1=0.42 + s / 100) for s in range(3)),
        *(record(1000, 0.05, s, 121.0 + s / 100, rank1=0.43) for s in range(3)),
        *(record(1000, 0.02, s, 121.0 + s / 100, rank1=0.43) for s in range(3)),  # the same runs as r = 0.05
        *(record(1000, 0.01, s, 121.0 + s / 100, rank1=0.43 + (s == 2) / 100) for s in range(3)),  # one seed differs
    ]
    rows = study.arcface_rows(results)
    assert [row.rates for row in rows] == [(1.0,), (0.3,), (0.1,), (0.05, 0.02), (0.01,)]
    # r = 0.1 asks for 2 x ceil(0.1 x 500) = 100 centres per step, r = 0.3 for 300: only the former got more.
    # 1,001 classes split 501 + 500: ceil(50.1) + ceil(50) = 101.
    assert study.requested_centres(1000, 0.1, 2) == 100 and study.requested_centres(1001, 0.1, 2) == 101
    assert [row.positives_bound() for row in rows] == [False, False, True, True, True]
    text = study.report(results, [], tmp_path / "figures")
    assert "| 1,000 | 0.05, 0.02 | 121 ‡ |" in text
    assert "r = 0.05, 0.02 at C = 1,000: identical runs" in text


def test_sampled_cells_are_judged_from_paired_differences(tmp_path: Path) -> None:
    # Seeds spread r = 1.0's rank-1 over 10 points; every seed loses exactly 2 with sampling. Unpaired intervals
    # would overlap; the per-seed differences show the loss. Verification moves by ±0.01 points: equivalent.
    full = [record(10_000, 1.0, s, 1e4, rank1=r1, verify_accuracy=0.99) for s, r1 in enumerate((0.90, 0.95, 0.85))]
    sampled = [
        record(10_000, 0.1, s, 1e3, rank1=r1 - 0.02, verify_accuracy=0.99 + d)
        for s, r1, d in zip((0, 1, 2, 3), (0.90, 0.95, 0.85, 0.5), (1e-4, -1e-4, 0.0, 0.0))
    ]
    rank1 = study.compare(sampled, full, "rank1")
    assert rank1 is not None and len(rank1.differences) == 3  # seed 3 has no reference: left out, not paired
    assert math.isclose(rank1.estimate().mean, -2.0) and rank1.label() == "lower"
    verify = study.compare(sampled, full, "verify_accuracy")
    assert verify is not None and verify.label() == "equivalent (±0.3)"
    assert study.compare(sampled, [record(10_000, 1.0, 9, 1e4)], "rank1") is None

    text = study.report(full + sampled[:3], [], tmp_path / "figures")
    (row,) = [line for line in text.splitlines() if line.startswith("| 10,000 | 0.1 | 1,000 | ") and "lower" in line]
    assert row.count("equivalent") == 3  # verification, TAR and TPIR (unchanged) against rank-1's loss
    assert "TPIR@FPIR=1e-2" in text and (tmp_path / "figures" / "accuracy_loss.png").is_file()


def test_the_report_regenerates_the_committed_doc(tmp_path: Path) -> None:
    """The committed doc is exactly what --report writes from the committed results, on any machine."""
    committed = REPO / "docs" / "sample_rate_study.md"
    text = committed.read_text()
    head, rest = text.split(study_report.START, 1)
    (tmp_path / "sample_rate_study").mkdir()
    (tmp_path / "sample_rate_study.md").write_text(
        f"{head}{study_report.START}\nstale\n{study_report.END}{rest.split(study_report.END, 1)[1]}"
    )
    shutil.copy(REPO / "docs" / "sample_rate_study" / "results.jsonl", tmp_path / "sample_rate_study" / "results.jsonl")
    assert study.main(["--output", str(tmp_path / "sample_rate_study"), "--report"]) == 0
    assert (tmp_path / "sample_rate_study.md").read_text() == text


def test_two_step_run_on_two_ranks_resumes_and_reports(tmp_path: Path) -> None:
    settings = study.Settings(
        holdout=study.HeldOut(identities=40, samples=3, pairs=200),
        samples_per_identity=4,
        batch_per_rank=16,
        embedding_size=8,
        hidden=16,
        max_steps=2,
    )
    cells = study.grid([64], [0.25, 1.0], [0], heads_at=[])
    output = tmp_path / "srs"
    study.run_grid(cells, settings, output / "results.jsonl")
    records = study.read_results(output / "results.jsonl")
    assert [(r["sample_rate"], r["steps"], r["global_batch"]) for r in records] == [(1.0, 2, 32), (0.25, 2, 32)]
    full, sampled = records
    assert full["centres_per_step"] == 64
    # r = 0.25 keeps the batch's positives plus random negatives: fewer than all 64, at least ceil(0.25·32) per rank.
    assert 2 * 8 <= sampled["centres_per_step"] < 64
    for record in records:
        assert 0.0 <= record["verify_accuracy"] <= 1.0 and 0.0 <= record["rank1"] <= 1.0
        assert np.isfinite(record["final_loss"])
    assert study.pending_cells(cells, records, settings) == []
    assert study.pending_cells(cells, records, study.Settings()) == cells  # other settings: nothing reused

    doc = tmp_path / "srs.md"
    doc.write_text(f"# prose kept\n\n{study_report.START}\nstale report\n{study_report.END}\n\ntail kept\n")
    args = study.parse_args(["--output", str(output), "--report"])
    study.write_report(args, settings, cells)
    text = doc.read_text()
    assert text.startswith("# prose kept") and text.endswith("tail kept\n") and "stale report" not in text
    assert "| 64 | 0.25 |" in text and (output / "accuracy_loss.png").is_file()


def test_dense_momentum_diagnostic_matches_lazy_sgd_when_every_row_is_sampled_and_moves_the_others() -> None:
    import torch

    from partialfc.core.centre_optim import LazySGD

    def run(optimizer, rows_per_step: list[torch.Tensor | slice]) -> torch.Tensor:
        weight = torch.linspace(-1, 1, 24).view(6, 4).clone()
        state = optimizer.init_state(weight)
        for step, rows in enumerate(rows_per_step):
            values = weight[rows].clone()
            grad = torch.full_like(values, 0.1 * (step + 1))
            optimizer.update(weight, state, rows, values, grad, found_inf=torch.zeros(()))
        return weight

    settings = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    full = [slice(0, 6)] * 3
    assert torch.allclose(run(study.DenseMomentumSGD(**settings), full), run(LazySGD(**settings), full), atol=1e-6)
    once_then_other = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([2])]
    lazy, dense = run(LazySGD(**settings), once_then_other), run(study.DenseMomentumSGD(**settings), once_then_other)
    assert torch.equal(lazy[:2], run(LazySGD(**settings), once_then_other[:1])[:2])  # lazy: rows 0, 1 wait
    assert (dense[:2] < lazy[:2]).all()  # dense: their momentum keeps pushing them while row 2 is sampled
