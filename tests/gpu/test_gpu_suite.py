"""``benchmarks/gpu_suite.sh`` in its dry mode (tiny sizes on the CPU): its time boxes, the report
files and their fields; and the capacity search it runs. The GPU session then only runs the script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from training_run import REPO

SUITE = REPO / "benchmarks" / "gpu_suite.sh"
STEPS = ["pytest", "layer_fp32", "layer_bf16", "capacity", "throughput", "throughput_vit_b"]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dry_suite(out: Path, work: Path, **settings: str) -> tuple[dict, str, str]:
    """The suite in dry mode with extra ``GPU_SUITE_*`` settings; its report (JSON, markdown) and log."""
    env = {
        **os.environ,
        "OUT": str(out),
        "GPU_SUITE_WORK": str(work),
        "GPU_SUITE_DRY": "1",
        "OMP_NUM_THREADS": "1",
        **{f"GPU_SUITE_{key}": value for key, value in settings.items()},
    }
    result = subprocess.run(["bash", str(SUITE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_report.json", "gpu_report.md", "gpu_suite.log"]
    return (
        json.loads((out / "gpu_report.json").read_text()),
        (out / "gpu_report.md").read_text(),
        (out / "gpu_suite.log").read_text(),
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, str]:
    """The whole dry suite, with the bf16 layer step's box cut to 0.3 s so that it is stopped before its
    first table row (with 1 s, a quiet machine printed one row before the stop)."""
    return run_dry_suite(tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work"), BOX_LAYER_BF16="0.3")


def test_every_step_runs_in_order_and_a_box_stops_a_step(dry_run):
    report, _, log = dry_run
    assert report["dry_run"] is True
    assert [step["name"] for step in report["steps"]] == STEPS
    statuses = {step["name"]: step["status"] for step in report["steps"]}
    assert statuses == {**dict.fromkeys(STEPS, "ok"), "layer_bf16": "timed out"}, log[-5000:]
    stopped = next(step for step in report["steps"] if step["name"] == "layer_bf16")
    assert stopped["box"] == 0.3 and stopped["seconds"] <= 11  # TERM at 0.3 s, KILL 10 s later at the latest


def test_report_holds_every_figure(dry_run):
    report, markdown, _ = dry_run
    pytest_counts = report["pytest"]
    assert pytest_counts["skipped"] == pytest_counts["tests"] > 0 and pytest_counts["failed"] == []

    assert [(row["num_classes"], row["sample_rate"]) for row in report["layer"]] == [
        (2000, 0.1),
        (2000, 1.0),
        (8000, 0.1),
        (8000, 1.0),
    ]  # fp32 only: the bf16 step was stopped
    for row in report["layer"]:
        assert row["gemm"] == row["param"] == "fp32" and row["step_ms"] > 0 and row["floor_ms"] >= 0
        assert row["target"] in ("not judged (dry run on the CPU)", "no target at this r")

    capacity = report["capacity"]
    assert capacity["largest_classes"] == 8000 and capacity["stopped_by"] == "ceiling"
    assert [trial["num_classes"] for trial in capacity["trials"]] == [1000, 2000, 4000, 8000]

    # The ViT row runs vit_t in the dry run (vit_b on a GPU) with the ViT presets' AdamW.
    for step, backbone, optimizer in (("throughput", "tiny", "sgd"), ("throughput_vit_b", "vit_t", "adamw")):
        throughput = report[step]
        assert (throughput["backbone"], throughput["optimizer"], throughput["amp"]) == (backbone, optimizer, "bf16")
        assert throughput["loader"] == "torch"
        assert set(throughput["ms"]) == {"step", "resident step", "data", "backbone", "partial fc", "comm"}
        assert throughput["images_per_s"]["resident"] > 0 and throughput["images_per_s"]["loader"] > 0
        assert throughput["partial_fc_share"] > 0
    assert "targets" in report["throughput"] and "targets" not in report["throughput_vit_b"]

    assert report["environment"]["torch"] and report["problems"] == []
    for text in (
        "Dry run on the CPU",
        "## Partial FC layer",
        "## Capacity",
        "## Training throughput",
        "| throughput | tiny | bf16 | sgd | 8 | 2,000 | 0.1 | 1 | **",
        "| throughput_vit_b | vit_t | bf16 | adamw | 4 | 2,000 | 0.1 | 1 | **",
        "| part | tiny ms | vit_t ms |",
        "DALI `mixed`",
        "| layer_bf16 | timed out | ",
    ):
        assert text in markdown, text


def test_a_chosen_step_runs_alone(tmp_path):
    report, markdown, _ = run_dry_suite(tmp_path / "out", tmp_path / "work", STEPS="capacity")
    assert [step["name"] for step in report["steps"]] == ["capacity"]
    assert report["capacity"]["largest_classes"] == 8000 and report["throughput"] is None
    assert report["throughput_vit_b"] is None
    assert "No result (the step did not finish)." in markdown


def test_a_throughput_row_without_the_other_is_reported_and_the_missing_one_named(tmp_path):
    """Only the ViT-B step finished (the r50 one was stopped): its row is in the table, unjudged (the targets are
    r50's), and the r50 row is named as missing instead of hiding the section."""
    gpu_report = load_benchmark("gpu_report")
    vit = {
        "device": "NVIDIA H100 80GB HBM3",
        "world_size": 1,
        "backbone": "vit_b",
        "amp": "bf16",
        "optimizer": "adamw",
        "num_classes": 1_000_000,
        "sample_rate": 0.1,
        "batch_per_rank": 384,
        "loader": "torch",
        "workers_per_rank": 16,
        "ms": {"step": 250.0, "resident step": 200.0},
        "images_per_s": {"loader": 1536.0, "resident": 1920.0},
        "partial_fc_share": 0.02,
    }
    (tmp_path / "throughput_vit_b.json").write_text(json.dumps(vit))
    report = gpu_report.build_report(tmp_path, dry=False)
    assert report["throughput"] is None and "targets" not in report["throughput_vit_b"]
    markdown = gpu_report.render_markdown(report)
    assert (
        "| throughput_vit_b | vit_b | bf16 | adamw | 384 | 1,000,000 | 0.1 | 1 | **1,920** | 1,536 | 2.0% |" in markdown
    )
    assert "- throughput: no result (the step did not finish)." in markdown
    assert "| part | vit_b ms |" in markdown and "| resident step | 200.0 |" in markdown


def test_capacity_search_doubles_then_bisects():
    search = load_benchmark("capacity").search
    tried = []

    def fits(classes: int) -> bool:
        tried.append(classes)
        return classes <= 37_000

    assert search(fits, 1000, 500, 1 << 40, lambda: False) == (37_000, 37_500, "resolution")
    assert tried == [1000, 2000, 4000, 8000, 16000, 32000, 64000, 48000, 40000, 36000, 38000, 37000, 37500]
    assert search(fits, 1000, 500, 20_000, lambda: False) == (20_000, None, "ceiling")
    assert search(fits, 64_000, 500, 1 << 40, lambda: False) == (None, 64_000, "first trial failed")
    tried.clear()
    assert search(fits, 1000, 500, 1 << 40, lambda: len(tried) == 3) == (4000, None, "time box")


def test_report_judges_targets_and_names_an_unreadable_table(tmp_path):
    """A real (not dry) run: targets judged per row; a finished layer step whose table lacks columns is
    named as a problem instead of silently giving no rows; steps that never ran say so."""
    gpu_report = load_benchmark("gpu_report")
    steps = [{"name": name, "rc": 0, "seconds": 30, "box": 75} for name in ("layer_fp32", "layer_bf16")]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(step) + "\n" for step in steps))
    header = "family        C   D B/rank W   r  S/rank gemm param step ms floor ms ratio peak GiB/rank centre mem"
    rows = [
        "combined  1000000 512   128 1 0.1  100000 fp32  fp32    14.0     10.0  1.40          9.00     2.30x",
        "combined  8000000 512   128 1 0.1  800000 fp32  fp32    32.0     20.0  1.60         50.00     2.40x",
        "combined  8000000 512   128 1 1.0 8000000 fp32  fp32   160.0    150.0  1.07         60.00     3.50x",
    ]
    (tmp_path / "layer_fp32.log").write_text("\n".join(["device=cuda", header, *rows]) + "\n")
    (tmp_path / "layer_bf16.log").write_text("C r step ms floor ms\n1000 0.1 2.0 1.0\n")
    (tmp_path / "pytest.log").write_text(  # stopped by its box: no JUnit file, only the verbose lines
        "tests/gpu/test_a.py::test_x[cuda] PASSED   [ 10%]\ntests/gpu/test_a.py::test_y[cuda] FAILED   [ 20%]\n"
    )

    report = gpu_report.build_report(tmp_path, dry=False)
    assert [(row["num_classes"], row["ratio"], row["target"]) for row in report["layer"]] == [
        (1_000_000, 1.4, "met"),
        (8_000_000, 1.6, "missed"),
        (8_000_000, 1.07, "no target at this r"),
    ]
    assert len(report["problems"]) == 1 and report["problems"][0].startswith("layer_bf16.log: table header lacks")
    assert report["pytest"]["passed"] == 1 and report["pytest"]["failed"] == ["tests/gpu/test_a.py::test_y[cuda]"]
    assert report["pytest"]["source"].startswith("log")
    markdown = gpu_report.render_markdown(report)
    assert markdown.count("No result (the step did not finish).") == 2  # capacity, throughput
