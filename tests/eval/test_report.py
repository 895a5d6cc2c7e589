"""Run report from a run record written through RunLog, as the trainer writes it; the log line made from the record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from partialfc import report
from partialfc.eval.plots import line_plot
from partialfc.training.records import EvaluationRecord, StartRecord, StepRecord, to_json
from partialfc.training.run_log import RECORD_FILE, RunLog, format_record


def _step(log: RunLog, step: int, loss: float, lr: float, samples: float, total: int = 40) -> dict:
    """A step record with the trainer's fields (fp16 runs add loss_scale and skipped_steps); its JSON."""
    fp16 = {"loss_scale": 65536.0, "skipped_steps": 0} if step == 30 else {}
    record = StepRecord(
        step=step,
        total_steps=total,
        epoch=step // 20,
        loss=loss,
        lr=lr,
        grad_norm=1.234,
        samples_per_s=samples,
        data_wait=0.03,
        memory_bytes=2**28,
        eta_s=10.0,
        phase_seconds={"forward": 0.1, "backward": 0.2, "optimizer": 0.01},
        **fp16,
    )
    log.write(record)
    return to_json(record)


def _start(log: RunLog, world_size: int, start_step: int) -> None:
    log.write(
        StartRecord(
            version="0.1.0",
            backbone="tiny",
            num_classes=120,
            world_size=world_size,
            device="cpu",
            images=960,
            global_batch=16 * world_size,
            total_steps=40,
            steps_per_epoch=60 // world_size,
            loader="torch",
            start_step=start_step,
            restart=0,
        )
    )


def _verification(log: RunLog, step: int, accuracy: float, std: float, tar: float) -> None:
    summary = {"accuracy": accuracy, "accuracy_std": std, "TAR@FAR=0.001": tar}
    log.write(EvaluationRecord("verify", "synth_val", step, summary, "accuracy", 1.5, best=accuracy))


@pytest.fixture
def run_dir(tmp_path):
    log = RunLog(tmp_path, enabled=True)
    log.info("a line that is not a record: the report never reads train.log")
    _step(log, 10, 9.5, 0.05, 1234.0)
    _step(log, 20, 8.25, 0.1, 1500.0)
    _verification(log, 20, 0.8123, 0.0311, 0.4)
    _step(log, 30, 7.0, 0.08, 1400.0)  # later replaced: the run was resumed from step 20
    log.info("resumed from checkpoints/step-20 at step 20")
    _step(log, 30, 6.5, 0.075, 1450.0)
    _step(log, 40, 5.75, 0.0, 1480.0)
    _verification(log, 40, 0.9010, 0.0200, 0.65)
    log.update_summary(status="finished", step=40, model=str(tmp_path / "model.pt"))
    log.close()
    return tmp_path


def test_history_read_from_the_record(run_dir):
    history = report.read_history(run_dir / RECORD_FILE)
    assert history.steps.tolist() == [10, 20, 30, 40] and history.total_steps == 40
    assert history.loss.tolist() == [9.5, 8.25, 6.5, 5.75]  # step 30 from the resumed run
    assert history.lr.tolist() == [0.05, 0.1, 0.075, 0.0]
    assert history.samples_per_s.tolist() == [1234.0, 1500.0, 1450.0, 1480.0]
    curve = history.evaluation["verify/synth_val"]
    assert curve.steps.tolist() == [20, 40] and curve.values.tolist() == [0.8123, 0.9010]
    assert curve.spread is not None and curve.spread.tolist() == [0.0311, 0.02] and curve.headline == "accuracy"
    (segment,) = history.segments
    assert segment.values["grad_norm"] == [1.234] * 5 and segment.values["mem_gib"] == [0.25] * 5
    assert segment.values["data_wait"] == [3.0] * 5  # percent of the interval


def test_the_log_line_is_made_from_the_record(tmp_path):
    """train.log's line of an event is format_record of the record written beside it: change the record, the
    line changes with it."""
    log = RunLog(tmp_path, enabled=True)
    first = _step(log, 30, 6.5, 0.075, 1450.0)
    fields = {name: value for name, value in first.items() if name != "event"}
    second_record = StepRecord(**{**fields, "loss": 5.25, "step": 31})
    log.write(second_record)
    second = to_json(second_record)
    log.close()
    assert format_record(first) == (
        "step 30/40 epoch 1 loss 6.5000 lr 0.075 grad_norm 1.234 1,450 samples/s "
        "data_wait 3% mem 0.25GiB eta 0:00:10 loss_scale 65536 skipped 0"
    )
    assert format_record(second) == format_record(first).replace("step 30/40", "step 31/40").replace("6.5000", "5.2500")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [format_record(first), format_record(second)]
    records = [json.loads(line) for line in (tmp_path / RECORD_FILE).read_text().splitlines()]
    assert records == [first, second]
    assert format_record({**first, "grad_norm": None, "nonfinite_steps": 2, "first_nonfinite_step": 29}).endswith(
        "skipped 0 nonfinite 2 (dropped; first at step 29)"
    )
    assert "grad_norm - " in format_record({**first, "grad_norm": None})


def test_each_start_is_its_own_curve(tmp_path):
    """A restart on another world size (a start record) begins a new line, not a jump in one."""
    log = RunLog(tmp_path, enabled=True)
    _start(log, 2, 0)
    _step(log, 10, 9.5, 0.05, 1234.0)
    _step(log, 20, 8.25, 0.1, 1500.0)
    _start(log, 1, 20)
    _step(log, 30, 6.5, 0.075, 700.0)
    log.close()
    assert (
        (tmp_path / "train.log")
        .read_text()
        .splitlines()[-2]
        .endswith(
            "partialfc 0.1.0: tiny, 120 classes on 1 rank(s) (cpu), 960 images, global batch 16, 40 steps (60/epoch), "
            "loader torch, start at step 20 (restart 0)"
        )
    )
    history = report.read_history(tmp_path / RECORD_FILE)
    assert [s.label for s in history.segments] == ["start 1: 2 rank(s) from step 0", "start 2: 1 rank(s) from step 20"]
    assert [s.values["step"] for s in history.segments] == [[10, 20], [30]]
    report.write_report(tmp_path)
    assert (
        "- starts: 2 (start 1: 2 rank(s) from step 0; start 2: 1 rank(s) from step 20)"
        in (tmp_path / "report" / "report.md").read_text()
    )


def test_report_writes_plots_and_markdown(run_dir, capsys):
    assert report.main([str(run_dir)]) == 0
    out = run_dir / "report"
    for name in ("loss", "lr", "throughput", "grad_norm", "data_wait", "memory", "verify"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "- status: finished" in text
    assert "loss: 9.5000 at step 10 -> 5.7500 at step 40" in text
    assert "verify synth_val: best accuracy 0.9010 ± 0.0200 at step 40, last 0.9010 ± 0.0200 at step 40" in text
    for title in ("gradient norm", "data wait", "memory"):
        assert f"![{title}]" in text
    assert "median 1,465 samples/s" in text
    assert "![verify accuracy](verify.png)" in text
    assert capsys.readouterr().out.strip() == str(out / "report.md")


def test_missing_empty_or_broken_record_is_named(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert f"no {RECORD_FILE}" in capsys.readouterr().err
    log = RunLog(tmp_path, enabled=True)
    _start(log, 1, 0)
    log.close()
    assert report.main([str(tmp_path)]) == 2
    assert "no step records" in capsys.readouterr().err
    record_file = tmp_path / RECORD_FILE
    record_file.write_text(record_file.read_text() + '{"event": "step", "time": 1.0, "step": 2}\n')
    assert report.main([str(tmp_path)]) == 2
    assert f"{RECORD_FILE}:2: a record of event 'step' lacking ['total_steps', 'epoch'," in capsys.readouterr().err


def test_a_record_cut_short_by_a_kill_is_left_out(run_dir):
    record_file = run_dir / RECORD_FILE
    record_file.write_text(record_file.read_text() + '{"event": "step", "time": 1.0, "st')
    assert report.read_history(record_file).steps.tolist() == [10, 20, 30, 40]
    record_file.write_text(record_file.read_text() + "\n")  # a whole line that is not JSON is an error
    with pytest.raises(report.ReportError, match=rf"{RECORD_FILE}:\d+: not a JSON record"):
        report.read_history(record_file)


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

    from partialfc.eval import ijb_protocols

    calls = [
        node
        for node in ast.walk(ast.parse(inspect.getsource(ijb_protocols)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "line_plot"
    ]
    assert calls and all(any(k.arg == "ylim" for k in call.keywords) for call in calls), "a rate plot without ylim"


def test_an_earlier_releases_verification_records_read_as_evaluations(run_dir):
    """Run records written before the evaluation record held a ``verification`` event per .bin set."""
    record_file = run_dir / RECORD_FILE
    earlier = {
        "event": "verification",
        "time": 2.0,
        "name": "lfw",
        "step": 40,
        "accuracy": 0.75,
        "accuracy_std": 0.05,
        "far": 0.001,
        "tar_at_far": 0.5,
    }
    record_file.write_text(record_file.read_text() + json.dumps(earlier) + "\n")
    curve = report.read_history(record_file).evaluation["verify/lfw"]
    assert (curve.protocol, curve.target, curve.headline) == ("verify", "lfw", "accuracy")
    assert curve.values.tolist() == [0.75] and curve.spread is not None and curve.spread.tolist() == [0.05]
    (record,) = [r for r in report.read_records(record_file) if getattr(r, "target", None) == "lfw"]
    assert record.summary == {"accuracy": 0.75, "accuracy_std": 0.05, "TAR@FAR=0.001": 0.5}
