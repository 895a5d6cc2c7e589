"""``train.tensorboard``: the sink writes each log step's scalars; without the package the config is refused
when it loads (before any process group or dataset), naming the field and the extra to install."""

from __future__ import annotations

import importlib.util

import pytest

from partialfc.config import ConfigError, load_config
from partialfc.training.records import StepRecord
from partialfc.training.sinks import TensorBoardSink


def _step(step: int, loss: float) -> StepRecord:
    return StepRecord(
        step=step,
        total_steps=10,
        epoch=0,
        loss=loss,
        lr=0.1,
        grad_norm=None,
        samples_per_s=100.0,
        data_wait=0.0,
        memory_bytes=0,
        eta_s=0.0,
        phase_seconds={},
    )


def test_the_sink_writes_each_log_steps_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path)
    for step, loss in ((2, 9.5), (4, 8.25)):
        sink.write(_step(step, loss))
    sink.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(2, 9.5), (4, 8.25)]
    assert set(events.Tags()["scalars"]) == {"loss", "lr", "samples_per_s"}


def test_a_missing_package_is_named_when_the_config_loads(monkeypatch):
    assert load_config(None, {"train.tensorboard": True}).train.tensorboard  # installed here (the dev extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"train\.tensorboard=True needs the tensorboard package.*partialfc\[tensorboard\]"
    ):
        load_config(None, {"train.tensorboard": True})
    assert not load_config(None, {}).train.tensorboard  # off by default: nothing asked
