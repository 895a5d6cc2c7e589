"""A real (tiny) training run: the report reads its run record, `eval verify` reproduces its verification."""

from __future__ import annotations

import json

import pytest
from training_run import run_training, train_args

from partialfc import report
from partialfc.eval import __main__ as eval_cli
from partialfc.training.records import to_json
from partialfc.training.run_log import format_record


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    run_training(
        None,
        train_args(
            tiny_dataset,
            output,
            "--train.max_steps",
            "8",
            "--eval.verify.every_steps",
            "4",
            "--checkpoint.every_steps",
            "100",
        ),
    )
    return output


def test_report_of_a_real_run(run_dir):
    history = report.read_history(run_dir / "train_log.jsonl")
    assert history.steps.tolist() == [2, 4, 6, 8] and history.total_steps == 8
    curve = history.evaluation["verify/synth_val"]
    assert curve.steps.tolist() == [4, 8]
    best = json.loads((run_dir / "summary.json").read_text())["best_evaluation"]["verify/synth_val"]
    assert max(curve.values) == best  # the record holds the value itself, not the line's 4 decimals
    text = report.write_report(run_dir).read_text()
    assert "- status: finished" in text and f"best accuracy {max(curve.values):.4f}" in text
    assert (run_dir / "report" / "verify.png").is_file()


def test_each_record_is_a_line_of_the_log(run_dir):
    """The trainer's start, step and evaluation lines are its records, formatted."""
    records = report.read_records(run_dir / "train_log.jsonl")
    assert [r.event for r in records] == ["start", "step", "step", "evaluation", "step", "step", "evaluation"]
    lines = [line.split(" ", 2)[2] for line in (run_dir / "train.log").read_text().splitlines()]
    assert all(format_record(to_json(record)) in lines for record in records)


def test_eval_verify_reproduces_the_trainers_verification(run_dir, tiny_dataset, capsys):
    accuracy = report.read_history(run_dir / "train_log.jsonl").evaluation["verify/synth_val"].values
    argv = ["verify", str(tiny_dataset / "synth_val.bin"), "--model", str(run_dir / "model.pt"), "--json", "-"]
    assert eval_cli.main(argv) == 0
    offline = json.loads(capsys.readouterr().out)["results"]["synth_val"]["summary"]["accuracy"]
    assert offline == accuracy[-1]  # model.pt is the model verified at the last step
