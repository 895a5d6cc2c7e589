"""Run report from a train.log in the trainer's format (written through RunLog, as the trainer does)."""

from __future__ import annotations

import numpy as np
import pytest

from partialfc import report
from partialfc.eval.plots import line_plot
from partialfc.run_log import RunLog


def _step_line(step: int, loss: float, lr: float, samples: float, total: int = 40) -> str:
    # The shape of Trainer._log's line (fp16 runs append " loss_scale S skipped K").
    return (f"step {step}/{total} epoch {step // 20} loss {loss:.4f} lr {lr:.5g} grad_norm 1.234 "
            f"{samples:,.0f} samples/s data_wait 3% mem 0.25GiB eta 0:00:10"
            + (" loss_scale 65536 skipped 0" if step == 30 else ""))


@pytest.fixture
def run_dir(tmp_path):
    log = RunLog(tmp_path, enabled=True)
    log.info("training tiny on data/synthetic: 1000 classes, world size 2")
    log.info(_step_line(10, 9.5, 0.05, 1234.0))
    log.info(_step_line(20, 8.25, 0.1, 1500.0))
    log.info("verification synth_val step 20: accuracy 0.8123 ± 0.0311, TAR@FAR=0.001 0.4000")
    log.info(_step_line(30, 7.0, 0.08, 1400.0))  # later replaced: the run was resumed from step 20
    log.info("resumed from checkpoints/step-20 at step 20")
    log.info(_step_line(30, 6.5, 0.075, 1450.0))
    log.info(_step_line(40, 5.75, 0.0, 1480.0))
    log.info("verification synth_val step 40: accuracy 0.9010 ± 0.0200, TAR@FAR=0.001 0.6500")
    log.update_summary(status="finished", step=40, model=str(tmp_path / "model.pt"))
    log.close()
    return tmp_path


def test_history_parsed_from_the_log(run_dir):
    history = report.parse_train_log(run_dir / "train.log")
    assert history.steps.tolist() == [10, 20, 30, 40] and history.total_steps == 40
    assert history.loss.tolist() == [9.5, 8.25, 6.5, 5.75]  # step 30 from the resumed run
    assert history.lr.tolist() == [0.05, 0.1, 0.075, 0.0]
    assert history.samples_per_s.tolist() == [1234.0, 1500.0, 1450.0, 1480.0]
    steps, accuracy, spread = history.verification["synth_val"]
    assert steps.tolist() == [20, 40] and np.allclose(accuracy, [0.8123, 0.9010]) and np.allclose(spread, [0.0311, 0.02])
    (segment,) = history.segments
    assert segment.values["grad_norm"] == [1.234] * 5 and segment.values["mem_gib"] == [0.25] * 5


def test_each_start_is_its_own_curve(tmp_path):
    """A restart on another world size (the trainer's start line) begins a new line, not a jump in one."""
    log = RunLog(tmp_path, enabled=True)
    log.info("partialfc 0.1.0: tiny, 120 classes on 2 rank(s) (cpu), 960 images, global batch 32, 40 steps "
             "(30/epoch), loader torch, start at step 0 (restart 0)")
    log.info(_step_line(10, 9.5, 0.05, 1234.0))
    log.info(_step_line(20, 8.25, 0.1, 1500.0))
    log.info("partialfc 0.1.0: tiny, 120 classes on 1 rank(s) (cpu), 960 images, global batch 16, 40 steps "
             "(60/epoch), loader torch, start at step 20 (restart 0)")
    log.info(_step_line(30, 6.5, 0.075, 700.0))
    log.close()
    history = report.parse_train_log(tmp_path / "train.log")
    assert [s.label for s in history.segments] == ["start 1: 2 rank(s) from step 0", "start 2: 1 rank(s) from step 20"]
    assert [s.values["step"] for s in history.segments] == [[10, 20], [30]]
    report.write_report(tmp_path)
    assert "- starts: 2 (start 1: 2 rank(s) from step 0; start 2: 1 rank(s) from step 20)" in \
        (tmp_path / "report" / "report.md").read_text()


def test_report_writes_plots_and_markdown(run_dir, capsys):
    assert report.main([str(run_dir)]) == 0
    out = run_dir / "report"
    for name in ("loss", "lr", "throughput", "grad_norm", "data_wait", "memory", "verification"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "- status: finished" in text
    assert "loss: 9.5000 at step 10 -> 5.7500 at step 40" in text
    assert "synth_val: best accuracy 0.9010 ± 0.0200 at step 40, last 0.9010 ± 0.0200 at step 40" in text
    for title in ("gradient norm", "data wait", "memory"):
        assert f"![{title}]" in text
    assert "median 1,465 samples/s" in text
    assert "![verification accuracy](verification.png)" in text
    assert capsys.readouterr().out.strip() == str(out / "report.md")


def test_missing_or_empty_log_is_named(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "train.log: no train.log" in capsys.readouterr().err
    (tmp_path / "train.log").write_text("2026-01-01 00:00:00 training started\n")
    assert report.main([str(tmp_path)]) == 2
    assert "no step lines" in capsys.readouterr().err


def test_rate_plots_stop_at_one(tmp_path, monkeypatch):
    """ROC, CMC and verification accuracy are rates: their y axis must not run above 1."""
    import matplotlib.axes

    tops = []
    original = matplotlib.axes.Axes.set_ylim

    def record(axes, *args, **kwargs):
        tops.append(args[1] if len(args) > 1 else kwargs.get("top"))
        return original(axes, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylim", record)
    far = np.logspace(-4, 0, 20)
    line_plot(tmp_path / "roc.png", [("ROC", far, np.sqrt(far))], "ROC", "FAR", "TAR", logx=True, ylim=(None, 1.0))
    assert 1.0 in tops
    import ast
    import inspect

    from partialfc.eval import __main__ as eval_cli

    calls = [node for node in ast.walk(ast.parse(inspect.getsource(eval_cli)))
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "line_plot"]
    assert calls and all(any(k.arg == "ylim" for k in call.keywords) for call in calls), "a rate plot without ylim"
