"""Collect what ``benchmarks/gpu_suite.sh`` produced into ``gpu_report.json`` and ``gpu_report.md``.

    python benchmarks/gpu_report.py --work SCRATCH --out OUT --dry 0

Reads from the suite's scratch folder: ``steps.jsonl`` (one record per finished step: name, exit
code, seconds, box), ``environment.json``, ``pytest.xml`` (JUnit; else ``pytest.log``), the layer
benchmark's printed tables (``layer_fp32.log``, ``layer_bf16.log``), ``capacity.json``,
``throughput.json`` (r50) and ``throughput_vit_b.json``. Missing pieces (a step that did not run
yet, or was stopped by its box) are reported as such, so the suite can call this after every step.
Targets are judged only on a real (not dry) run. Imports nothing heavy: it runs in well under a second.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

LAYER_STEPS = ["layer_fp32", "layer_bf16"]  # the suite's steps that run benchmarks/partial_fc_layer.py
# The suite's steps that run benchmarks/train_throughput.py, one row each; the targets are judged on the first (r50).
THROUGHPUT_STEPS = ["throughput", "throughput_vit_b"]
TIMEOUT_EXIT_CODES = {124, 137}  # `timeout`: the box ran out (TERM), or the command ignored TERM (KILL)
# Columns of benchmarks/partial_fc_layer.py's table (header name -> key, type); others are kept as text.
LAYER_COLUMNS = {
    "family": ("family", str),
    "C": ("num_classes", int),
    "D": ("dim", int),
    "B/rank": ("batch_per_rank", int),
    "W": ("world_size", int),
    "r": ("sample_rate", float),
    "S/rank": ("sampled_per_rank", int),
    "gemm": ("gemm", str),
    "param": ("param", str),
    "step ms": ("step_ms", float),
    "floor ms": ("floor_ms", float),
    "ratio": ("ratio", float),
    "peak GiB/rank": ("peak_gib", float),
    "centre mem": ("centre_mem", str),
}
LAYER_REQUIRED = ["C", "r", "S/rank", "gemm", "param", "step ms", "floor ms", "ratio", "peak GiB/rank"]
TARGETS = {
    "layer_ratio": 1.5,  # step / 3-GEMM floor at r = 0.1
    "images_per_s": 3000.0,  # r50 bf16, one H100-class GPU, batch on the device
    "partial_fc_share": 0.05,  # of the step
    "capacity_classes": 12_500_000,  # bf16 centres + momentum, one GPU
}
DALI_NOTE = (
    "DALI `mixed` (GPU JPEG decode) was not measured: DALI is not installed on the GPU machine "
    "(its wheel is too large to copy to a machine without network access)."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the suite's scratch folder")
    parser.add_argument("--out", type=Path, required=True, help="where gpu_report.json and gpu_report.md go")
    parser.add_argument(
        "--dry", type=int, choices=[0, 1], default=0, help="1: a dry run on the CPU (no targets judged)"
    )
    return parser.parse_args()


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or was cut short (a step stopped mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(work: Path) -> list[dict[str, Any]]:
    steps = []
    for line in (work / "steps.jsonl").read_text().splitlines() if (work / "steps.jsonl").is_file() else []:
        step = json.loads(line)
        step["status"] = "ok" if step["rc"] == 0 else "timed out" if step["rc"] in TIMEOUT_EXIT_CODES else "failed"
        steps.append(step)
    return steps


def read_pytest(xml: Path, log: Path) -> dict[str, Any] | None:
    """Counts and the names of failed tests: from the JUnit XML file, or, when pytest was stopped
    before writing it, from the verbose log's per-test lines (``source`` says which)."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError):
        return read_pytest_log(log)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed, "source": "junit"}


def read_pytest_log(log: Path) -> dict[str, Any] | None:
    """What ``pytest -v`` printed per test (``path::name PASSED``) before it was stopped."""
    if not log.is_file():
        return None
    outcomes: dict[str, str] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            outcomes[parts[0]] = parts[1]
    if not outcomes:
        return None
    values = list(outcomes.values())
    return {
        "tests": len(values),
        "passed": values.count("PASSED"),
        "failures": values.count("FAILED"),
        "errors": values.count("ERROR"),
        "skipped": values.count("SKIPPED"),
        "failed": [name for name, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")],
        "source": "log (pytest was stopped before its summary)",
    }


def split_header(header: str) -> list[str]:
    """Column names of a table header whose names may contain spaces (the known ones, longest first)."""
    names, words = [], header.split()
    while words:
        for size in (2, 1):
            name = " ".join(words[:size])
            if name in LAYER_COLUMNS or size == 1:
                names.append(name)
                words = words[size:]
                break
    return names


def read_layer_rows(log: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of ``benchmarks/partial_fc_layer.py``'s table, and a problem if no usable table is there."""
    if not log.is_file():
        return [], None
    lines = log.read_text().splitlines()
    header_at = next((i for i, line in enumerate(lines) if "floor ms" in line and "step ms" in line), None)
    if header_at is None:
        return [], f"{log.name}: no table header (a line naming 'step ms' and 'floor ms')"
    columns = split_header(lines[header_at])
    missing = [name for name in LAYER_REQUIRED if name not in columns]
    if missing:
        return [], f"{log.name}: table header lacks {missing}: {lines[header_at].strip()!r}"
    rows = []
    for line in lines[header_at + 1 :]:
        tokens = line.split()
        if len(tokens) != len(columns):
            continue
        row: dict[str, Any] = {}
        try:
            for name, token in zip(columns, tokens):
                key, kind = LAYER_COLUMNS.get(name, (name, str))
                row[key] = kind(token)
        except ValueError:
            continue  # not a table row
        rows.append(row)
    return rows, None


def judge(value: float | None, target: float, at_most: bool, dry: bool) -> str:
    if dry:
        return "not judged (dry run on the CPU)"
    if value is None:
        return "not measured"
    met = value <= target if at_most else value >= target
    return "met" if met else "missed"


def build_report(work: Path, dry: bool) -> dict[str, Any]:
    steps = read_steps(work)
    finished = {step["name"] for step in steps if step["status"] == "ok"}
    layer_rows, problems = [], []
    for step in LAYER_STEPS:
        rows, problem = read_layer_rows(work / f"{step}.log")
        layer_rows += rows
        if problem and step in finished:  # a stopped step may not have printed its table yet
            problems.append(problem)
    for row in layer_rows:
        row["target"] = (
            judge(row["ratio"], TARGETS["layer_ratio"], True, dry)
            if row["sample_rate"] == 0.1
            else "no target at this r"
        )
    capacity = read_json(work / "capacity.json")
    if capacity is not None:
        capacity["target"] = judge(capacity.get("largest_classes"), TARGETS["capacity_classes"], False, dry)
    throughput = read_json(work / "throughput.json")
    if throughput is not None:
        throughput["targets"] = {
            "images_per_s": judge(throughput["images_per_s"]["resident"], TARGETS["images_per_s"], False, dry),
            "partial_fc_share": judge(throughput["partial_fc_share"], TARGETS["partial_fc_share"], True, dry),
        }
    return {
        "dry_run": dry,
        "environment": read_json(work / "environment.json"),
        "steps": steps,
        "pytest": read_pytest(work / "pytest.xml", work / "pytest.log"),
        "layer": layer_rows,
        "capacity": capacity,
        "throughput": throughput,
        "throughput_vit_b": read_json(work / "throughput_vit_b.json"),
        "targets": TARGETS,
        "problems": problems,
        "not_measured": [DALI_NOTE],
    }


def _count(value: int | None) -> str:
    return "none" if value is None else f"{value:,}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"] or {}
    lines = ["# GPU suite report", ""]
    if report["dry_run"]:
        lines += ["**Dry run on the CPU at tiny sizes: the figures test the plumbing, they measure nothing.**", ""]
    lines += [
        f"Machine: {env.get('gpu') or 'no GPU'}"
        + (f" ({env['gpu_memory_bytes'] / 2**30:.0f} GiB)" if env.get("gpu_memory_bytes") else "")
        + f", driver {env.get('driver')}, {env.get('cpu_cores')} CPU cores; Python {env.get('python')}, "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}.",
        "",
    ]
    lines += ["## Steps", ""]
    lines += _table(
        ["step", "status", "seconds", "box (s)"],
        [[s["name"], s["status"], s["seconds"], s["box"]] for s in report["steps"]],
    )
    pytest = report["pytest"]
    lines += ["", "## pytest -m gpu", ""]
    if pytest is None:
        lines += ["No result (the step did not finish)."]
    else:
        lines += [
            f"{pytest['passed']} passed, {pytest['failures']} failed, {pytest['errors']} errors, "
            f"{pytest['skipped']} skipped (from the {pytest['source']})."
        ]
        lines += [f"- failed: `{name}`" for name in pytest["failed"]]
    lines += ["", f"## Partial FC layer (target: step ≤ {TARGETS['layer_ratio']}× the 3-GEMM floor at r = 0.1)", ""]
    lines += _table(
        ["C", "r", "S", "gemm", "centres", "step ms", "floor ms", "ratio", "peak GiB", "target"],
        [
            [
                f"{r['num_classes']:,}",
                r["sample_rate"],
                f"{r['sampled_per_rank']:,}",
                r["gemm"],
                r["param"],
                r["step_ms"],
                r["floor_ms"],
                r["ratio"],
                r["peak_gib"],
                r["target"],
            ]
            for r in report["layer"]
        ],
    )
    lines += [f"- {problem}" for problem in report["problems"]]
    capacity = report["capacity"]
    lines += [
        "",
        f"## Capacity (target: ≥ {TARGETS['capacity_classes']:,} classes per GPU, bf16 centres + momentum)",
        "",
    ]
    if capacity is None:
        lines += ["No result (the step did not finish)."]
    else:
        largest, failed = (capacity.get(key) for key in ("largest_classes", "smallest_failed"))
        lines += [
            f"Largest C that completes a step: **{_count(largest)}** (r = {capacity['sample_rate']}, "
            f"B = {capacity['batch']}, D = {capacity['dim']}, {capacity['param_dtype']} centres; first failure "
            f"{_count(failed)}; search stopped by {capacity.get('stopped_by', 'the step box')}): "
            f"{capacity['target']}.",
            "",
        ]
        lines += _table(
            ["C", "completed", "seconds", "peak GiB"],
            [
                [
                    _count(t["num_classes"]),
                    t["ok"],
                    t["seconds"],
                    "-" if t["peak_bytes"] is None else f"{t['peak_bytes'] / 2**30:.2f}",
                ]
                for t in capacity["trials"]
            ],
        )
    lines += [
        "",
        f"## Training throughput (targets for r50: ≥ {TARGETS['images_per_s']:,.0f} images/s, Partial FC ≤ "
        f"{TARGETS['partial_fc_share']:.0%} of the step)",
        "",
    ]
    measured = {step: report[step] for step in THROUGHPUT_STEPS if report[step] is not None}
    if not measured:
        lines += ["No result (the step did not finish)."]
    else:
        lines += _table(
            [
                "step",
                "backbone",
                "amp",
                "optimizer",
                "B",
                "C",
                "r",
                "W",
                "images/s, batch on the device",
                "images/s, through the loader",
                "Partial FC share",
                "loader",
            ],
            [
                [
                    step,
                    row["backbone"],
                    row["amp"],
                    row["optimizer"],
                    row["batch_per_rank"],
                    f"{row['num_classes']:,}",
                    row["sample_rate"],
                    row["world_size"],
                    f"**{row['images_per_s']['resident']:,.0f}**",
                    f"{row['images_per_s']['loader']:,.0f}",
                    f"{row['partial_fc_share']:.1%}",
                    f"{row['loader']}, {row['workers_per_rank']} workers",
                ]
                for step, row in measured.items()
            ],
        )
        lines += [
            f"- {step}: no result (the step did not finish)." for step in THROUGHPUT_STEPS if step not in measured
        ]
        if report["throughput"] is not None:
            targets = report["throughput"]["targets"]
            lines += [
                "",
                f"Targets, judged on the throughput step: images/s on the device {targets['images_per_s']}; "
                f"Partial FC share {targets['partial_fc_share']}.",
            ]
        lines += [""]
        lines += _table(
            ["part", *(f"{row['backbone']} ms" for row in measured.values())],
            [[part, *(row["ms"][part] for row in measured.values())] for part in next(iter(measured.values()))["ms"]],
        )
    lines += ["", "## Not measured", ""] + [f"- {note}" for note in report["not_measured"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    report = build_report(args.work, bool(args.dry))
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"gpu_report.json": json.dumps(report, indent=2) + "\n", "gpu_report.md": render_markdown(report)}
    for name, text in files.items():
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(args.out / name)


if __name__ == "__main__":
    main()
