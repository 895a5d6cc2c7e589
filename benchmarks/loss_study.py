"""The loss study: one small backbone, one synthetic data set, eight heads; writes loss_study.md.

Trains the ``tiny`` backbone on the *hard* synthetic identities (pose, lighting, white balance,
occlusion, blur and JPEG compression: see partialfc/data/synth.py; the quickstart's standard set is
too easy, an untrained network already verifies it at 0.85) with softmax, normalised softmax
(NormFace), SphereFace, CosFace, ArcFace and a combined margin, and ArcFace with Partial FC at
r = 0.3 and 0.1 (r = 1.0 is the ArcFace run). Each model is evaluated on the held-out identities
with the project's own commands: ``eval verify`` (10-fold accuracy on the .bin pairs), ``eval pairs``
(template TAR@FAR, ROC) and ``eval identify`` (rank-1/5, TPIR@FPIR). Writes the tables, a ROC plot
and accuracy-over-steps curves, with the settings, seeds, repeats and the time it took.

    python benchmarks/loss_study.py --out docs           # about an hour on 2 CPU cores; updates docs/loss_study.md
    python benchmarks/loss_study.py --seeds 0 1 2        # three repeats (three hours), report in runs/loss_study/report
    python benchmarks/loss_study.py --quick              # a two-minute smoke run of the pipeline, never into docs/
    python benchmarks/loss_study.py --heads arcface adaface curricularface magface elasticface

The newer margin families (AdaFace, CurricularFace, MagFace, ElasticFace-Arc; ``loss.family``) run
when named in ``--heads``, with their papers' parameters and the same s; the default study is the
eight heads above.

Budget (estimated from a 400-step run of the hard set at about 550 samples/s on 2 busy cores; the
report states the measured time): 2000 identities x 20 images, 3 epochs of batch 64 is 1,875
steps, under 4 minutes per head, plus about 2 minutes of evaluation: about 45 minutes for eight heads.

Margins are the papers' (ArcFace paper, Table 1 for SphereFace's m1 = 1.35 in the combined-margin
form and the combined margin (1, 0.3, 0.2)); every normalised head uses s = 32 (128-d embeddings,
a few thousand classes: well above the minimum scale for them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from study_report import append_result, read_results, write_generated

from partialfc import embed
from partialfc.data.synth import HOLDOUT_DIR, VERIFICATION_NAME, generate_synthetic_dataset
from partialfc.eval import __main__ as eval_cli
from partialfc.eval.plots import line_plot
from partialfc.report import read_history
from partialfc.training.run_log import RECORD_FILE

REPO = Path(__file__).resolve().parents[1]
RESULTS = "results.jsonl"

SCALE = "32"
ARCFACE = [
    "--loss.family",
    "combined",
    "--loss.s",
    SCALE,
    "--loss.combined.m1",
    "1",
    "--loss.combined.m2",
    "0.5",
    "--loss.combined.m3",
    "0",
]


@dataclass(frozen=True)
class Head:
    name: str
    description: str
    overrides: tuple[str, ...]


HEADS = [
    Head("softmax", "plain softmax (unnormalised)", ("--loss.family", "softmax")),
    Head(
        "normface",
        f"normalised softmax, s={SCALE}",
        (
            "--loss.family",
            "combined",
            "--loss.s",
            SCALE,
            "--loss.combined.m1",
            "1",
            "--loss.combined.m2",
            "0",
            "--loss.combined.m3",
            "0",
        ),
    ),
    Head(
        "sphereface",
        "SphereFace m1=1.35",
        (
            "--loss.family",
            "combined",
            "--loss.s",
            SCALE,
            "--loss.combined.m1",
            "1.35",
            "--loss.combined.m2",
            "0",
            "--loss.combined.m3",
            "0",
        ),
    ),
    Head(
        "cosface",
        "CosFace m3=0.35",
        (
            "--loss.family",
            "combined",
            "--loss.s",
            SCALE,
            "--loss.combined.m1",
            "1",
            "--loss.combined.m2",
            "0",
            "--loss.combined.m3",
            "0.35",
        ),
    ),
    Head("arcface", "ArcFace m2=0.5, Partial FC r=1.0", (*ARCFACE, "--loss.sample_rate", "1.0")),
    Head(
        "combined",
        "combined (m1, m2, m3) = (1, 0.3, 0.2)",
        (
            "--loss.family",
            "combined",
            "--loss.s",
            SCALE,
            "--loss.combined.m1",
            "1",
            "--loss.combined.m2",
            "0.3",
            "--loss.combined.m3",
            "0.2",
        ),
    ),
    Head("arcface_r0.3", "ArcFace m2=0.5, Partial FC r=0.3", (*ARCFACE, "--loss.sample_rate", "0.3")),
    Head("arcface_r0.1", "ArcFace m2=0.5, Partial FC r=0.1", (*ARCFACE, "--loss.sample_rate", "0.1")),
]
FAMILIES = [  # the loss section's defaults for each are its paper's parameters
    Head("adaface", "AdaFace m=0.4, h=0.333", ("--loss.family", "adaface", "--loss.s", SCALE)),
    Head("curricularface", "CurricularFace m=0.5", ("--loss.family", "curricularface", "--loss.s", SCALE)),
    Head(
        "magface",
        "MagFace margin 0.45..0.8 over magnitude 10..110, lambda_g=35",
        ("--loss.family", "magface", "--loss.s", SCALE),
    ),
    Head("elasticface", "ElasticFace-Arc m ~ N(0.5, 0.05)", ("--loss.family", "elasticface", "--loss.s", SCALE)),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=2000, help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=20, help="images per identity")
    parser.add_argument("--holdout-identities", type=int, default=400, help="held-out identities for evaluation")
    parser.add_argument("--pairs", type=int, default=2000, help="verification pairs in the .bin")
    parser.add_argument("--epochs", type=float, default=3.0, help="training epochs per head")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between verification evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one repeat per seed (training seed)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    parser.add_argument(
        "--heads",
        nargs="+",
        default=[h.name for h in HEADS],
        choices=[h.name for h in HEADS + FAMILIES],
        help="heads to train",
    )
    parser.add_argument("--work", default=str(REPO / "runs" / "loss_study"), help="data and training runs")
    parser.add_argument(
        "--out",
        default=None,
        help="writes OUT/loss_study.md and OUT/loss_study/*.png (default: WORK/report; the committed "
        "study is updated only by --out docs, and never by --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny data and 12 steps per head: checks the pipeline, not the losses"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only regenerate the results section of OUT/loss_study.md from OUT/loss_study/results.jsonl",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = str(Path(args.work) / "report")
    elif args.quick and Path(args.out).resolve() == (REPO / "docs").resolve():
        parser.error("--quick checks the pipeline, not the losses: its results must not replace docs/loss_study.md")
    if args.quick:
        args.identities, args.images_per_identity, args.holdout_identities, args.pairs = 60, 6, 20, 100
        args.epochs, args.eval_every, args.batch_size = 2.0, 6, 32
    return args


def train(args: argparse.Namespace, data: Path, head: Head, seed: int) -> tuple[Path, float]:
    output = Path(args.work) / "runs" / f"{head.name}-seed{seed}"
    if (output / "model.pt").is_file() and json.loads((output / "summary.json").read_text()).get(
        "status"
    ) == "finished":
        return output, json.loads((output / "timing.json").read_text())["seconds"]  # finished earlier: reuse
    command = [
        sys.executable,
        "-m",
        "partialfc.train",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--data.path",
        str(data),
        "--output",
        str(output),
        "--data.batch_size",
        str(args.batch_size),
        "--train.epochs",
        str(args.epochs),
        "--train.seed",
        str(seed),
        "--eval.verify.every_steps",
        str(args.eval_every),
        "--checkpoint.every_steps",
        "1000000",
        "--metrics.port",
        "0",
        "--train.log_every",
        "10",
        *head.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{head.name} seed {seed} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    (output / "timing.json").write_text(json.dumps({"seconds": seconds}))
    print(f"  trained {head.name} seed {seed} in {seconds / 60:.1f} min", flush=True)
    return output, seconds


def evaluate(data: Path, run: Path) -> dict:
    """The three eval commands on the held-out identities, through their --json output; the held-out
    images are aligned and embedded once (``partialfc.embed --raw`` on the IJB-layout release) for both
    ``pairs`` and ``identify``."""
    model = ["--model", str(run / "model.pt"), "--quiet"]
    vectors = run / "eval" / "holdout"
    holdout = ["--data", str(data / HOLDOUT_DIR), "--embeddings", str(vectors), "--out", str(run / "eval")]
    results = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the commands' tables; the JSON files hold the numbers
        if embed.main([str(data / HOLDOUT_DIR), *model, "--out", str(vectors), "--raw"]) != 0:
            raise SystemExit(f"embedding the held-out images failed for {run}")
        for command, argv in (
            ("verify", [str(data / f"{VERIFICATION_NAME}.bin"), *model]),
            ("pairs", holdout),
            ("identify", holdout),
        ):
            path = run / f"eval_{command}.json"
            if eval_cli.main([command, *argv, "--json", str(path)]) != 0:
                raise SystemExit(f"eval {command} failed on {run}")
            (result,) = json.loads(path.read_text())["results"].values()
            results[command] = result["summary"]
    return results


ROC_POINTS = np.geomspace(1e-4, 1.0, 41)  # the ROC kept in the results: TAR at these FARs


def run_record(args: argparse.Namespace, data: Path, head: Head, seed: int) -> dict:
    """Train and evaluate one head at one seed: the raw result, everything the report needs."""
    run, train_seconds = train(args, data, head, seed)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    metrics = evaluate(data, run)
    curve = read_history(run / RECORD_FILE).evaluation[f"verify/{VERIFICATION_NAME}"]
    roc = np.loadtxt(run / "eval" / "roc.csv", delimiter=",", skiprows=1, ndmin=2)
    order = np.argsort(roc[:, 1], kind="stable")
    return {
        "head": head.name,
        "seed": seed,
        "settings": settings_of(args),
        **metrics,
        "verify_curve": {"steps": curve.steps.tolist(), "accuracy": curve.values.tolist()},
        "roc": {"far": ROC_POINTS.tolist(), "tar": np.interp(ROC_POINTS, roc[order, 1], roc[order, 2]).tolist()},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "load_average": round(load_before, 2),
    }


def settings_of(args: argparse.Namespace) -> dict:
    """What a result depends on besides head and seed: a result is reused only under the same settings."""
    names = ("identities", "images_per_identity", "holdout_identities", "pairs", "epochs", "batch_size", "data_seed")
    return {"quick": args.quick, **{name: getattr(args, name) for name in names}}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def report(args: argparse.Namespace, records: list[dict], figures: Path) -> str:
    """The generated section of loss_study.md, from the raw results alone."""
    names = [h.name for h in HEADS + FAMILIES if any(r["head"] == h.name for r in records)]
    by_head = {name: [r for r in records if r["head"] == name] for name in names}
    described = {h.name: h.description for h in HEADS + FAMILIES}
    seeds = sorted({r["seed"] for r in records})
    first = seeds[0]
    roc_png = line_plot(
        figures / "roc.png",
        [
            (name, np.array(r["roc"]["far"]), np.array(r["roc"]["tar"]))
            for name in names
            for r in by_head[name]
            if r["seed"] == first
        ],
        f"Template verification ROC, held-out identities (seed {first})",
        "false accept rate",
        "true accept rate",
        logx=True,
    )
    curve_png = line_plot(
        figures / "accuracy.png",
        [
            (name, np.array(r["verify_curve"]["steps"]), np.array(r["verify_curve"]["accuracy"]))
            for name in names
            for r in by_head[name]
            if r["seed"] == first
        ],
        f"Verification accuracy (0.01 grid) over steps (seed {first})",
        "step",
        "10-fold accuracy",
    )

    def column(name: str, command: str, key: str) -> str:
        return _mean_std([float(r[command][key]) for r in by_head[name]])

    def accuracy(name: str) -> float:
        return float(np.mean([r["verify"]["accuracy"] for r in by_head[name]]))

    rows = [
        f"| {name} | {described[name]} | {column(name, 'verify', 'accuracy')} "
        f"| {column(name, 'verify', 'best_cut_accuracy')} | {column(name, 'verify', 'accuracy_std')} "
        f"| {column(name, 'verify', 'TAR@FAR=0.01')} | {column(name, 'pairs', 'TAR@FAR=0.001')} "
        f"| {column(name, 'pairs', 'TAR@FAR=0.01')} | {column(name, 'identify', 'rank-1')} "
        f"| {column(name, 'identify', 'rank-5')} | {column(name, 'identify', 'TPIR@FPIR=0.1')} "
        f"| {np.mean([r['train_seconds'] for r in by_head[name]]) / 60:.1f} |"
        for name in names
    ]
    findings = []
    margin = [n for n in ("sphereface", "cosface", "arcface", "combined") if n in by_head]
    if "softmax" in by_head and margin:
        delta = np.mean([accuracy(n) for n in margin]) - accuracy("softmax")
        findings.append(
            f"- Margin heads ({', '.join(margin)}) average {delta * 100:+.2f} points of verification "
            "accuracy over plain softmax."
        )
    for rate in ("arcface_r0.3", "arcface_r0.1"):
        if rate in by_head and "arcface" in by_head:
            findings.append(
                f"- Partial FC r={rate.split('_r')[1]}: {(accuracy(rate) - accuracy('arcface')) * 100:+.2f} "
                "points of verification accuracy against r=1.0."
            )
    best = max(names, key=accuracy)
    findings.append(f"- Best verification accuracy: {best} ({accuracy(best):.4f}).")

    settings = records[0]["settings"]
    train_minutes = sum(r["train_seconds"] for r in records) / 60
    eval_minutes = sum(r["eval_seconds"] for r in records) / 60
    loads = [r["load_average"] for r in records]
    hard = "quick smoke settings, not a study" if settings["quick"] else "the hard variation"
    return "\n".join(
        [
            f"Runs: {len(records)} (heads × seeds); training took {train_minutes:.1f} min summed over runs and "
            f"evaluation {eval_minutes:.1f} min; the 1-minute load average when each run's evaluation began "
            f"ranged {min(loads):.1f}–{max(loads):.1f}. "
            f"Raw results, one line per run: [`{figures.name}/{RESULTS}`]({figures.name}/{RESULTS}).",
            "",
            "### Setting",
            "",
            f"- Data: synthetic, {hard}: {settings['identities']} training identities × "
            f"{settings['images_per_identity']} images, {settings['holdout_identities']} held-out identities "
            f"(data seed {settings['data_seed']}); {settings['pairs']} verification pairs and the IJB-layout "
            "release `holdout/` for `pairs` and `identify`.",
            f"- Model: `tiny` backbone, 128-d embedding, SGD lr 0.1 (momentum 0.9, weight decay 5e-4), batch "
            f"{settings['batch_size']}, {settings['epochs']:g} epochs, polynomial decay, fp32, one process "
            "(configs/quickstart.yaml).",
            f"- Repeats: {len(seeds)} (training seeds {', '.join(map(str, seeds))}); mean ± sample std over "
            "repeats when there are several.",
            "",
            "### Results on held-out identities",
            "",
            "Verify accuracy is insightface's read-out (thresholds on a 0.01 grid of squared L2 distances, "
            "10 folds), the one published LFW/CFP-FP/AgeDB columns use; best cut is the exact best threshold "
            "per fold; fold std is the grid accuracy's std over the 10 folds.",
            "",
            "| head | definition | verify accuracy | verify best cut | verify fold std | verify TAR@FAR=1e-2 "
            "| pairs TAR@FAR=1e-3 | pairs TAR@FAR=1e-2 | rank-1 | rank-5 | TPIR@FPIR=1e-1 | train min |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *findings,
            "",
            f"![ROC]({figures.name}/{roc_png.name})",
            f"![accuracy over steps]({figures.name}/{curve_png.name})",
        ]
    )


def pending(args: argparse.Namespace, records: list[dict]) -> list[tuple[Head, int]]:
    """The (head, seed) runs asked for that the results do not hold under these settings yet, in run order."""
    done = {(r["head"], r["seed"]) for r in records if r["settings"] == settings_of(args)}
    heads = [h for h in HEADS + FAMILIES if h.name in args.heads]
    return [(head, seed) for seed in args.seeds for head in heads if (head.name, seed) not in done]


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    figures = out / "loss_study"
    results = figures / RESULTS
    if not args.report:
        data = Path(args.work) / ("data_quick" if args.quick else "data")
        if not (data / HOLDOUT_DIR).is_dir():
            print(f"generating the hard synthetic set in {data}", flush=True)
            generate_synthetic_dataset(
                data,
                args.identities,
                args.images_per_identity,
                seed=args.data_seed,
                holdout_identities=args.holdout_identities,
                pairs=args.pairs,
                variation="hard",
            )
        for head, seed in pending(args, read_results(results)):
            append_result(results, run_record(args, data, head, seed))
    records = [
        r
        for r in read_results(results)
        if r["settings"] == settings_of(args) and r["head"] in args.heads and r["seed"] in args.seeds
    ]
    if not records:
        raise SystemExit(f"no results in {results} for these settings, heads and seeds: run without --report first")
    doc = write_generated(
        out / "loss_study.md",
        report(args, records, figures),
        "Loss study: softmax, NormFace, SphereFace, CosFace, ArcFace, combined margin, Partial FC",
    )
    print(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
