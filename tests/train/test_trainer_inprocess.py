"""The Trainer in this process at world size 1: fast checks of what subprocess runs cannot see."""

from __future__ import annotations

import signal

import pytest
import torch
from training_run import final_state, make_trainer, straight_and_resumed

from partialfc.common.exit_codes import ExitCode
from partialfc.training.log_window import LogWindow


def test_the_scheduled_lr_reaches_both_optimizers_every_step(tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_dataset, tmp_path / "run", **{"schedule.warmup_epochs": 1.0, "train.max_steps": 4})
    batches, window = trainer._batches(), LogWindow()
    for step in range(4):
        window.add(trainer.train_step(batches))
        expected = trainer.plan.learning_rate(step)
        assert expected == (step + 1) * trainer.config.optim.lr / trainer.plan.lr.warmup_steps
        assert trainer.optimizer.backbone_optimizer.param_groups[0]["lr"] == expected
        assert trainer.pfc.optimizer.lr == expected
    assert trainer.progress.step == 4 and window.steps == 4
    phases = trainer.training_step.phases.collect()
    assert set(phases) == {"forward", "backward", "optimizer"} and all(s > 0 for s in phases.values())
    assert trainer.training_step.phases.collect() == dict.fromkeys(phases, 0.0)  # collected once


def test_a_trainer_gives_sigterm_back_when_it_ends(tiny_dataset, tmp_path):
    """A trainer in a longer-lived process (a notebook, a test session) handles SIGTERM while it trains,
    then leaves it as it found it: else the process, and every process it forks, swallows a SIGTERM."""
    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(tiny_dataset, tmp_path / "run", **{"train.max_steps": 1})
    assert signal.getsignal(signal.SIGTERM) == trainer.sigterm._note
    assert trainer.fit() == ExitCode.FINISHED
    assert signal.getsignal(signal.SIGTERM) == before


def test_resume_continues_the_global_rng_streams(tiny_dataset, tmp_path):
    """Dropout draws from the global torch RNG: a resume that did not restore it would diverge."""
    straight, resumed, _, _ = straight_and_resumed(tiny_dataset, tmp_path, **{"model.dropout": 0.3})
    expected = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    actual = torch.load(resumed / "model.pt", weights_only=True)["state_dict"]
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.parametrize("head", ["adaface", "curricularface"])
def test_resume_with_margin_state_is_bit_identical(tiny_dataset, tmp_path, head):
    """The running statistics of AdaFace / CurricularFace are checkpointed with the centres."""
    straight, resumed, first, second = straight_and_resumed(tiny_dataset, tmp_path, **{"loss.family": head})
    expected, actual = final_state(straight), final_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    margin_state = first.pfc.state_dict()["_extra_state"]["margin"]
    assert margin_state and margin_state == second.pfc.state_dict()["_extra_state"]["margin"]


def test_a_sink_is_one_class_and_gets_every_record(tiny_dataset, tmp_path):
    """The trainer hands each record (start, step, evaluation, checkpoint) to every sink in its list."""

    class Collect:
        def __init__(self) -> None:
            self.records: list = []
            self.closed = False

        def write(self, record) -> None:
            self.records.append(record)

        def close(self) -> None:
            self.closed = True

    settings = {"train.max_steps": 4, "train.log_every": 2, "eval.verify.every_steps": 4, "checkpoint.every_steps": 2}
    trainer = make_trainer(tiny_dataset, tmp_path / "run", **settings)
    sink = Collect()
    trainer.sinks.append(sink)
    assert trainer.fit() == ExitCode.FINISHED
    assert [r.event for r in sink.records] == ["start", "step", "checkpoint", "step", "evaluation", "checkpoint"]
    assert [r.step for r in sink.records[1:]] == [2, 2, 4, 4, 4]
    assert sink.records[-1].path == str(tmp_path / "run" / "checkpoints" / "step-00000004") and sink.closed
