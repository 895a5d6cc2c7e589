"""The loss study writes into docs/ only when told to, and never from a --quick smoke run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from training_run import REPO


def loss_study():
    spec = importlib.util.spec_from_file_location("loss_study", REPO / "benchmarks" / "loss_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["loss_study"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_default_report_goes_under_the_work_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["loss_study.py", "--quick", "--work", str(tmp_path)])
    assert Path(loss_study().parse_args().out) == tmp_path / "report"
    monkeypatch.setattr(sys, "argv", ["loss_study.py"])
    assert Path(loss_study().parse_args().out) == REPO / "runs" / "loss_study" / "report"


def test_a_quick_run_into_docs_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["loss_study.py", "--quick", "--out", str(REPO / "docs")])
    with pytest.raises(SystemExit) as stop:
        loss_study().parse_args()
    assert stop.value.code == 2 and "must not replace docs/loss_study.md" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["loss_study.py", "--out", str(REPO / "docs")])
    assert Path(loss_study().parse_args().out) == REPO / "docs"  # the full study, asked for explicitly


def test_the_committed_report_regenerates_byte_for_byte_from_its_raw_results(monkeypatch, tmp_path):
    """docs/loss_study.md's results section is a function of docs/loss_study/results.jsonl alone."""
    committed = REPO / "docs" / "loss_study.md"
    (tmp_path / "loss_study").mkdir()
    (tmp_path / "loss_study.md").write_text(committed.read_text())
    (tmp_path / "loss_study" / "results.jsonl").write_text((REPO / "docs" / "loss_study" / "results.jsonl").read_text())
    monkeypatch.setattr(sys, "argv", ["loss_study.py", "--identities", "1500", "--out", str(tmp_path), "--report"])
    assert loss_study().main() == 0
    assert (tmp_path / "loss_study.md").read_text() == committed.read_text()
    assert (tmp_path / "loss_study" / "roc.png").is_file() and (tmp_path / "loss_study" / "accuracy.png").is_file()


def test_a_rerun_trains_only_the_runs_missing_under_the_same_settings(monkeypatch, tmp_path):
    module = loss_study()
    monkeypatch.setattr(
        sys, "argv", ["loss_study.py", "--quick", "--work", str(tmp_path), "--heads", "softmax", "arcface"]
    )
    args = module.parse_args()
    same, other = module.settings_of(args), {**module.settings_of(args), "epochs": 9.0}
    records = [{"head": "softmax", "seed": 0, "settings": same}, {"head": "arcface", "seed": 0, "settings": other}]
    assert [(head.name, seed) for head, seed in module.pending(args, records)] == [("arcface", 0)]
    assert [(head.name, seed) for head, seed in module.pending(args, [])] == [("softmax", 0), ("arcface", 0)]
