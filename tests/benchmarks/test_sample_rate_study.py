"""``benchmarks/sample_rate_study.py`` and its modules in ``benchmarks/sample_rate/``: the generator
(deterministic from seeds, the stated difficulty structure), the reports (paired verdicts, identical runs
shown once, the committed doc regenerated exactly), and a two-step run of the real 2-rank step with a
resume and a report."""

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
from sample_rate.cell import Cell, DenseMomentumSGD, Settings
from sample_rate.design import Design, TimingModel, factorial_jobs, next_noise_std, plan
from sample_rate.identities import HOLDOUT_BASE, HeldOut, IdentitySpace, counter_gaussians
from sample_rate.report import (
    FACTORIAL_METRICS,
    METRICS,
    arcface_rows,
    compare,
    factorial_report,
    report,
    requested_centres,
)
from sample_rate.runner import Job, cell_seconds, grid, pending_cells, pending_jobs, run_grid, run_jobs


def test_samples_are_a_function_of_seed_identity_and_index_only() -> None:
    space = IdentitySpace(seed=7)
    ids, index = np.array([5, 900_000, 5, 3]), np.array([0, 2, 1, 0])
    batch = space.samples(ids, index)
    # Any row is the same whether asked alone, in another order, or in another batch: nothing is streamed.
    assert np.array_equal(space.samples(ids[::-1], index[::-1]), batch[::-1])
    assert np.array_equal(space.samples(ids[1:2], index[1:2])[0], batch[1])
    assert not np.allclose(batch[0], batch[2])  # two samples of identity 5 differ
    assert not np.allclose(IdentitySpace(seed=8).samples(ids, index), batch)
    assert batch.dtype == np.float32 and batch.shape == (4, space.input_dim)


def test_counter_gaussians_are_standard_normal() -> None:
    values = counter_gaussians(0, 1, np.arange(4000), np.zeros(4000, np.uint64), 63)
    assert values.shape == (4000, 63)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1.0) < 0.01
    assert abs(np.corrcoef(values[:, 0], values[:, 31])[0, 1]) < 0.05  # cos and sin halves are independent


def test_difficulty_structure_is_prototype_plus_low_rank_nuisance_plus_noise() -> None:
    space = IdentitySpace(seed=3, input_dim=32, nuisance_rank=4, nuisance_std=0.5, noise_std=0.1)
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
    held_out = HOLDOUT_BASE + np.repeat(np.arange(20), 200)
    held_dev = space.samples(held_out, np.tile(np.arange(200), 20), basis) - space.prototypes(held_out)
    assert np.allclose((held_dev @ basis).std(axis=0), 0.5, rtol=0.08)


def test_held_out_pairs_are_fixed_interleaved_and_correct() -> None:
    holdout = HeldOut(identities=50, samples=4, pairs=400)
    first, second, issame = holdout.pair_rows(0)
    again = holdout.pair_rows(0)
    assert all(np.array_equal(a, b) for a, b in zip((first, second, issame), again))
    ids, _ = holdout.ids()
    assert np.array_equal(ids[first] == ids[second], issame)
    assert not np.any(first == second)
    assert issame[::2].all() and not issame[1::2].any()  # every fold of 40 pairs holds both kinds
    assert ids.min() >= HOLDOUT_BASE


def record(num_classes: int, rate: float, seed: int, centres: float, **metrics: float) -> dict:
    """A finished ArcFace cell as results.jsonl holds it; metrics not given are 0.5."""
    return {
        "num_classes": num_classes,
        "sample_rate": rate,
        "head": "arcface",
        "seed": seed,
        **{metric: metrics.get(metric, 0.5) for metric in METRICS},
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
    rows = arcface_rows(results)
    assert [row.rates for row in rows] == [(1.0,), (0.3,), (0.1,), (0.05, 0.02), (0.01,)]
    # r = 0.1 asks for 2 x ceil(0.1 x 500) = 100 centres per step, r = 0.3 for 300: only the former got more.
    # 1,001 classes split 501 + 500: ceil(50.1) + ceil(50) = 101.
    assert requested_centres(1000, 0.1, 2) == 100 and requested_centres(1001, 0.1, 2) == 101
    assert [row.positives_bound() for row in rows] == [False, False, True, True, True]
    text = report(results, [], tmp_path / "figures")
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
    rank1 = compare(sampled, full, "rank1")
    assert rank1 is not None and len(rank1.differences) == 3  # seed 3 has no reference: left out, not paired
    assert math.isclose(rank1.estimate().mean, -2.0) and rank1.label() == "lower"
    verify = compare(sampled, full, "verify_accuracy")
    assert verify is not None and verify.label() == "equivalent (±0.3)"
    assert compare(sampled, [record(10_000, 1.0, 9, 1e4)], "rank1") is None

    text = report(full + sampled[:3], [], tmp_path / "figures")
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


def test_the_factorial_report_regenerates_the_committed_doc(tmp_path: Path) -> None:
    """The factorial section is what --factorial --report writes from the committed results, calibration and
    timing records alone."""
    committed = REPO / "docs" / "sample_rate_study.md"
    text = committed.read_text()
    start, end = study_report.markers("factorial")
    head, rest = text.split(start, 1)
    (tmp_path / "sample_rate_study.md").write_text(f"{head}{start}\nstale\n{end}{rest.split(end, 1)[1]}")
    shutil.copytree(REPO / "docs" / "sample_rate_study" / "factorial", tmp_path / "factorial")
    argv = ["--factorial", "--output", str(tmp_path / "factorial"), "--doc", str(tmp_path / "sample_rate_study.md")]
    assert study.main([*argv, "--report"]) == 0
    assert (tmp_path / "sample_rate_study.md").read_text() == text


def test_two_step_run_on_two_ranks_resumes_and_reports(tmp_path: Path) -> None:
    settings = Settings(
        holdout=HeldOut(identities=40, samples=3, pairs=200),
        samples_per_identity=4,
        batch_per_rank=16,
        embedding_size=8,
        hidden=16,
        max_steps=2,
    )
    cells = grid([64], [0.25, 1.0], [0], heads_at=[])
    output = tmp_path / "srs"
    run_grid(cells, settings, output / "results.jsonl")
    records = study_report.read_results(output / "results.jsonl")
    assert [(r["sample_rate"], r["steps"], r["global_batch"]) for r in records] == [(1.0, 2, 32), (0.25, 2, 32)]
    full, sampled = records
    assert full["centres_per_step"] == 64
    # r = 0.25 keeps the batch's positives plus random negatives: fewer than all 64, at least ceil(0.25·32) per rank.
    assert 2 * 8 <= sampled["centres_per_step"] < 64
    for record in records:
        assert 0.0 <= record["verify_accuracy"] <= 1.0 and 0.0 <= record["rank1"] <= 1.0
        assert np.isfinite(record["final_loss"])
    assert pending_cells(cells, records, settings) == []
    assert pending_cells(cells, records, Settings()) == cells  # other settings: nothing reused

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
    assert torch.allclose(run(DenseMomentumSGD(**settings), full), run(LazySGD(**settings), full), atol=1e-6)
    once_then_other = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([2])]
    lazy, dense = run(LazySGD(**settings), once_then_other), run(DenseMomentumSGD(**settings), once_then_other)
    assert torch.equal(lazy[:2], run(LazySGD(**settings), once_then_other[:1])[:2])  # lazy: rows 0, 1 wait
    assert (dense[:2] < lazy[:2]).all()  # dense: their momentum keeps pushing them while row 2 is sampled


# ---------------------------------------------------------------------- the factorial grid
FIRST_GRID = REPO / "docs" / "sample_rate_study" / "results.jsonl"


def test_long_tail_counts_are_deterministic_in_range_with_mean_near_k() -> None:
    space = IdentitySpace(seed=4, images_tail=(1.7, 2, 64))
    ids = np.arange(200_000)
    counts = space.images(ids, 8)
    assert np.array_equal(counts[::-1], space.images(ids[::-1], 8))  # a function of (seed, identity) alone
    assert counts.min() == 2 and counts.max() == 64
    assert abs(counts.mean() - 8) < 0.2 and abs(space.mean_images(8) - counts.mean()) < 0.05
    assert np.mean(counts == 2) > 0.3  # the head of the tail: most identities have few images
    assert not np.array_equal(counts, IdentitySpace(seed=5, images_tail=(1.7, 2, 64)).images(ids, 8))
    assert (IdentitySpace().images(ids[:10], 8) == 8).all()  # off: K each


def test_label_noise_share_and_never_the_true_identity() -> None:
    space = IdentitySpace(seed=1, label_noise=0.1)
    ids, index = np.repeat(np.arange(5000), 8), np.tile(np.arange(8), 5000)
    labels = space.labels(ids, index, 5000)
    noisy = labels != ids
    assert abs(noisy.mean() - 0.1) < 0.01
    assert labels.min() >= 0 and labels.max() < 5000
    assert np.array_equal(space.labels(ids[::-1], index[::-1], 5000), labels[::-1])
    # A noisy label is another identity, never the true one: with two classes every noisy label is the
    # other class, so the share of changed labels stays at 10% (a draw that could keep the identity: 5%).
    pair, index = np.repeat(np.arange(2), 20_000), np.tile(np.arange(20_000), 2)
    assert abs(np.mean(space.labels(pair, index, 2) != pair) - 0.1) < 0.01
    assert np.array_equal(IdentitySpace(seed=1).labels(ids, index, 5000), ids)


def test_near_duplicates_have_the_stated_cosine_share_and_spare_held_out_identities() -> None:
    space = IdentitySpace(seed=2, duplicates=0.05, duplicate_cosine=0.9)
    ids = np.arange(20_000)
    original = space.duplicate_of(ids)
    copies = original >= 0
    assert abs(copies.mean() - 0.05) < 0.01
    assert (original[copies] == ids[copies] - 1).all() and (original[original[copies]] == -1).all()
    prototypes = space.prototypes(ids)
    assert np.allclose(np.sum(prototypes[copies] * prototypes[original[copies]], axis=1), 0.9)
    assert np.allclose(prototypes[~copies], IdentitySpace(seed=2).prototypes(ids[~copies]))
    assert (space.duplicate_of(HOLDOUT_BASE + ids) == -1).all()


def test_first_grid_records_still_match_the_default_settings() -> None:
    records = study_report.read_results(FIRST_GRID)
    arcface_default = [r for r in records if r["settings"] == records[0]["settings"]]
    assert len(arcface_default) == 57
    assert json_key(records[0]["settings"]) == Settings().key()
    cells = grid([1000, 10_000, 100_000], [0.02, 0.05, 0.1, 0.3, 1.0], [0, 1, 2], [10_000, 100_000])
    assert pending_cells(cells, records, Settings()) == []


def json_key(settings: dict) -> str:
    import json

    return json.dumps(settings, sort_keys=True)


def test_factorial_order_and_budget_cut_from_a_fake_timing_model() -> None:
    design = Design(
        seeds=(0, 1),
        centres=(500, 3000, 30_000),
        blocks=((10_000, (128, 2048), True), (100_000, (2048,), True), (1_000_000, (2048,), True)),
    )
    calibration = [_probe(design, c, 0.08, rank1) for c, rank1 in ((10_000, 0.91), (100_000, 0.95))] + [
        _pilot(design, rule, batch, rank1)
        for rule, rank1 in (("fixed", 0.8), ("linear", 0.9))
        for batch in design.pilot_batches
    ]
    timing = TimingModel((0.0, 0.0, 0.0, 0.0), 100.0)  # every cell: 100 s
    jobs, uncalibrated = factorial_jobs(design, calibration, timing)
    assert uncalibrated == [100_000, 1_000_000]  # 100k: one probe at 0.95, outside 0.90 ± 0.02: search goes on
    cells = [
        (j.cell.num_classes, j.settings.batch_per_rank * 2, round(j.cell.sample_rate * j.cell.num_classes), j.cell.seed)
        for j in jobs
    ]
    assert cells[:6] == [(10_000, 128, m, 0) for m in (10_000, 3000, 500)] + [
        (10_000, 2048, m, 0) for m in (10_000, 3000, 500)
    ]
    assert cells[6][3] == 1 and [c for c, *_ in cells[:12]] == [10_000] * 12
    assert cells[12] == (100_000, 2048, 100_000, 0) and len(cells) == 12 + 2 * 4 + 2 * 3  # 1M: reference M = 30k
    assert jobs[12].settings.space.noise_std == 0.05  # not calibrated: the default, for the plan only
    assert jobs[3].settings.lr == 0.1 * 2048 / 128  # the pilot chose linear scaling
    assert jobs[0].settings.space.noise_std == 0.08 and jobs[0].settings.space.seed == 0
    assert jobs[6].settings.space.seed == 1  # data seed = training seed
    text = plan(jobs, [], budget_hours=500 / 3600)
    assert "cells 1-5 (0.14 h) and cuts 21" in text
    assert text.splitlines()[6].endswith(" CUT") and not text.splitlines()[5].endswith(" CUT")


def _probe(design: Design, c: int, noise_std: float, rank1: float) -> dict:
    job = design.job(c, design.centres_at(c)[0], design.calibration_batch, True, 0, noise_std, 0.1)
    return _record(job, {"rank1": rank1}, purpose="difficulty")


def _pilot(design: Design, rule: str, batch: int, rank1: float) -> dict:
    c = design.classes[0]
    job = design.job(c, c, batch, True, 0, design.settings.space.noise_std, design.lr(rule, batch))
    return _record(job, {"rank1": rank1}, purpose=f"lr:{rule}")


def _record(job: Job, metrics: dict[str, float], purpose: str | None = None) -> dict:
    import json

    cell, settings = job.cell, job.settings
    record = {
        "num_classes": cell.num_classes,
        "sample_rate": cell.sample_rate,
        "head": cell.head,
        "seed": cell.seed,
        "global_batch": settings.batch_per_rank * 2,
        "settings": json.loads(settings.key()),
        "train_seconds": 10.0,
        **metrics,
    }
    return record if purpose is None else {**record, "purpose": purpose}


def test_difficulty_search_steps_then_bisects() -> None:
    design = Design()
    assert next_noise_std([], design, 0.05) == 0.05
    assert next_noise_std([(0.05, 0.97)], design, 0.05) == 0.05 * 1.25
    assert next_noise_std([(0.05, 0.97), (0.0625, 0.5)], design, 0.05) == math.sqrt(0.05 * 0.0625)
    assert next_noise_std([(0.05, 0.97), (0.0625, 0.89)], design, 0.05) is None
    assert next_noise_std([(0.05, 0.2)], design, 0.05) == 0.05 / 1.25
    too_many = [(0.01 * (i + 1), 0.5) for i in range(design.max_probes)]
    assert next_noise_std(too_many, design, 0.05) is None


def test_tiny_factorial_cells_on_two_ranks_record_the_new_metrics_and_stop_at_the_budget(tmp_path: Path) -> None:
    settings = Settings(
        space=IdentitySpace(images_tail=(1.7, 2, 8), label_noise=0.1, duplicates=0.05, duplicate_cosine=0.95),
        holdout=HeldOut(identities=40, samples=3, pairs=200, non_mated=10, impostors=400),
        samples_per_identity=4,
        batch_per_rank=16,
        embedding_size=8,
        hidden=16,
        max_steps=4,
        curve_points=4,
        rank1_points=2,
    )
    cheap = Job(Cell(64, 0.25, "arcface", 0), settings, estimate=1.0)
    dear = Job(Cell(64, 1.0, "arcface", 0), settings, estimate=1e9)
    results = tmp_path / "results.jsonl"
    run_jobs([cheap, dear], results, budget_hours=1.0)
    (record,) = study_report.read_results(results)  # the second would pass the budget: never started
    assert record["sample_rate"] == 0.25 and record["steps"] == 4
    assert 0.0 <= record["tar_at_far_1e-4"] <= 1.0 and 0.0 <= record["rank1"] <= 1.0
    assert record["loss_steps"] == [1, 2, 3, 4] and len(record["loss_curve"]) == 4
    assert [step for step, _ in record["rank1_curve"]] == [2, 4]
    assert cell_seconds(record) == record["train_seconds"] + record["eval_seconds"] >= record["train_seconds"]
    assert pending_jobs([cheap, dear], [record]) == [dear]


def test_factorial_report_tables_verdicts_and_cut_cells(tmp_path: Path) -> None:
    design = Design(seeds=(0, 1, 2), centres=(500, 3000), blocks=((10_000, (128,), True), (10_000, (128,), False)))
    rng = np.random.default_rng(0)
    results = []
    for noisy in (True, False):
        for seed in design.seeds:
            base = 0.9 + 0.01 * seed  # the seed moves both cells alike: paired differences cancel it
            for m, shift in ((10_000, 0.0), (3000, -0.05 if noisy else -0.08), (500, 0.0)):
                job = design.job(10_000, m, 128, noisy, seed, 0.08, 0.1)
                metrics = {name: base + shift + 1e-4 * rng.standard_normal() for name in FACTORIAL_METRICS}
                results.append(
                    {
                        **_record(job, metrics),
                        "centres_per_step": float(max(m, 1000)),
                        "steps": 100,
                        "loss_steps": [1, 50, 100],
                        "loss_curve": [30.0, 10.0, 8.0],
                        "rank1_curve": [[50, 0.5], [100, base + shift]],
                        "eval_seconds": 5.0,
                    }
                )
    jobs = [design.job(10_000, 10_000, 128, True, 3, 0.08, 0.1)] + [
        design.job(10_000, m, 128, True, seed, 0.08, 0.1) for seed in design.seeds for m in (10_000, 3000, 500)
    ]
    text = factorial_report(results, [], jobs, [100_000], design, None, tmp_path / "figures")
    rank1 = text.split("**rank-1 identification, label noise on**")[1].split("**")[0]
    row = next(line for line in rank1.splitlines() if line.startswith("| 128 |"))
    reference, at_3000, at_500 = row.strip("| ").split(" | ")[1:]
    assert reference.startswith("91.00 [")
    assert at_3000.startswith("-5.00 [") and "lower" in at_3000 and "‡" not in at_3000
    assert "equivalent (±1)" in at_500 and "‡" in at_500  # 1,000 centres per step for M = 500: positives
    gap = text.split("**Noise on minus noise off, Δ rank-1 identification**")[1].split("**")[0]
    assert "+3.00 [" in gap and "higher" in gap  # sampling lost 3 points less under label noise
    assert "C=10,000 N=128 noise on: 1 cells" in text and "not calibrated: C=100,000" in text
    assert (tmp_path / "figures" / "curves_10000.png").is_file() and (
        tmp_path / "figures" / "deltas_10000.png"
    ).is_file()
    assert text == factorial_report(results, [], jobs, [100_000], design, None, tmp_path / "figures")


def test_write_generated_keeps_the_other_sections(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# t\n\n{study_report.START}\nfirst\n{study_report.END}\n\nprose\n")
    study_report.write_generated(doc, "second", "t", section="factorial")
    study_report.write_generated(doc, "second, again", "t", section="factorial")
    text = doc.read_text()
    assert "first" in text and "prose" in text and text.count("second") == 1 and text.endswith("-->\n")
    start, end = study_report.markers("factorial")
    assert text.index(study_report.END) < text.index(start) < text.index("second, again") < text.index(end)
