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
