"""A real (tiny) training run: the report reads its log, `eval verify` reproduces its verification."""

from __future__ import annotations

import json

import pytest
from training_run import run_training, train_args

from partialfc import report
from partialfc.eval import __main__ as eval_cli


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    run_training(None, train_args(tiny_dataset, output, "--train.max_steps", "8", "--eval.every_steps", "4",
                                  "--checkpoint.every_steps", "100"))
    return output


def test_report_of_a_real_run(run_dir):
    history = report.parse_train_log(run_dir / "train.log")
    assert history.steps.tolist() == [2, 4, 6, 8] and history.total_steps == 8
    steps, accuracy, _ = history.verification["synth_val"]
    assert steps.tolist() == [4, 8]
    best = json.loads((run_dir / "summary.json").read_text())["best_verification"]["synth_val"]
    assert max(accuracy) == pytest.approx(best, abs=5e-5)  # the log rounds to 4 decimals
    text = report.write_report(run_dir).read_text()
    assert "- status: finished" in text and f"best accuracy {max(accuracy):.4f}" in text
    assert (run_dir / "report" / "verification.png").is_file()


def test_eval_verify_reproduces_the_trainers_verification(run_dir, tiny_dataset, capsys):
    _, accuracy, _ = report.parse_train_log(run_dir / "train.log").verification["synth_val"]
    argv = ["verify", str(tiny_dataset / "synth_val.bin"), "--model", str(run_dir / "model.pt"), "--json", "-"]
    assert eval_cli.main(argv) == 0
    offline = json.loads(capsys.readouterr().out)["sets"]["synth_val"]["accuracy"]
    assert offline == pytest.approx(accuracy[-1], abs=5e-5)  # model.pt is the model verified at the last step
