"""Acceptance test: a real Prometheus server scrapes a 2-rank CPU training job (``python -m
partialfc.train`` under torchrun) and its query API shows the job."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prom_server import PrometheusServer, kill_group
from training_run import REPO, train_args, training_command, training_env

STEPS = 40
BATCH = 16  # per rank
WORLD_SIZE = 2
JOB_TIMEOUT = 180


def job_command(dataset: Path, output: Path, port: int) -> list[str]:
    """The 2-rank training job Prometheus scrapes; the endpoint waits for one final scrape."""
    return training_command(
        WORLD_SIZE,
        train_args(
            dataset,
            output,
            "--train.max_steps",
            str(STEPS),
            "--data.batch_size",
            str(BATCH),
            "--schedule.decay",
            "constant",
            "--schedule.warmup_epochs",
            "0",
            "--eval.verify.every_steps",
            "0",
            "--data.val_targets",
            "",
            "--data.backend",
            "torch",
            "--metrics.port",
            str(port),
            "--metrics.address",
            "127.0.0.1",
            "--metrics.final_scrape_timeout",
            "60",
        ),
    )


def run_job(command: list[str], log: Path) -> None:
    """Run the job to its end; its whole process group is killed if it fails or times out."""
    with open(log, "wb") as out:
        job = subprocess.Popen(
            command, cwd=REPO, env=training_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = job.wait(timeout=JOB_TIMEOUT)
        finally:
            kill_group(job)
    assert returncode == 0, f"job failed ({returncode}):\n{log.read_text()[-4000:]}"


def test_prometheus_scrapes_two_rank_job(prometheus: PrometheusServer, tiny_dataset: Path, tmp_path: Path) -> None:
    run_job(job_command(tiny_dataset, tmp_path / "run", prometheus.target_port), tmp_path / "job.log")
    selector = f'{{job="{prometheus.job}"}}'
    expected = STEPS * BATCH

    def final_samples() -> list[dict] | None:
        # Range selectors skip the staleness markers written once the finished job stops answering.
        series = prometheus.query(f"partialfc_samples_total{selector}[10m]")
        done = len(series) == WORLD_SIZE and all(float(s["values"][-1][1]) == expected for s in series)
        return series if done else None

    samples = prometheus.poll(final_samples, 30, f"partialfc_samples_total == {expected} on {WORLD_SIZE} ranks")
    assert sorted(s["metric"]["rank"] for s in samples) == ["0", "1"]

    steps = {s["metric"]["rank"]: s["values"] for s in prometheus.query(f"partialfc_steps_total{selector}[10m]")}
    for series in samples:
        rank = series["metric"]["rank"]
        assert series["metric"]["local_rank"] == rank and series["metric"]["node"] == "0"
        values = [float(v) for _, v in series["values"]]
        assert values == sorted(values), f"samples of rank {rank} decreased: {values}"
        # The same scrape carries both counters; samples are counted just before the step itself.
        steps_at = {t: float(v) for t, v in steps[rank]}
        for at, value in series["values"]:
            assert steps_at[at] * BATCH <= float(value) <= (steps_at[at] + 1) * BATCH, (rank, at, value, steps_at[at])

    last_scrape = max(s["values"][-1][0] for s in samples)
    assert [float(s["value"][1]) for s in prometheus.query(f"up{selector}", at=last_scrape)] == [1.0]
    at_end = {
        name: {s["metric"].get("rank"): float(s["value"][1]) for s in prometheus.query(name + selector, at=last_scrape)}
        for name in ("partialfc_steps_total", "partialfc_loss", "partialfc_learning_rate")
    }
    assert at_end["partialfc_steps_total"] == {"0": STEPS, "1": STEPS}
    assert set(at_end["partialfc_loss"]) == {"0", "1"} and all(v > 0 for v in at_end["partialfc_loss"].values())
    assert at_end["partialfc_learning_rate"] == {"0": 0.1, "1": 0.1}
    total = prometheus.query(f"sum(partialfc_samples_total{selector})", at=last_scrape)
    assert float(total[0]["value"][1]) == WORLD_SIZE * expected
