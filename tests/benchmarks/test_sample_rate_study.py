"""``benchmarks/sample_rate_study.py``: its generator (deterministic from seeds, the stated difficulty
structure), its statistics, and a two-step run of the real 2-rank step with a resume and a report."""

from __future__ import annotations

import math
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


def test_t_interval_and_overlap() -> None:
    s = study.summarise([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert math.isclose(s.high - s.mean, 4.303 / math.sqrt(3))
    assert study.overlaps(s, study.summarise([4.0, 5.0, 6.0]))
    assert not study.overlaps(s, study.summarise([10.0, 10.5, 11.0]))
    assert not study.overlaps(study.summarise([1.0]), study.summarise([1.0]))  # one seed measures no interval


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
    doc.write_text(f"# prose kept\n\n{study_report.START}\nold\n{study_report.END}\n\ntail kept\n")
    args = study.parse_args(["--output", str(output), "--report"])
    study.write_report(args, settings, cells)
    text = doc.read_text()
    assert text.startswith("# prose kept") and text.endswith("tail kept\n") and "old" not in text
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
