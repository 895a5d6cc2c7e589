"""Training options the field uses: EMA of the weights, sample-rate schedule, torch.compile, fine-tuning."""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Callable

import pytest
import torch
from torch import nn
from training_run import make_trainer, straight_and_resumed

from partialfc import CombinedMargin, PartialFC
from partialfc.common.exit_codes import ExitCode
from partialfc.config import ConfigError, OptimConfig, SampleRateSchedule, load_config
from partialfc.training.ema import WeightAverage
from partialfc.training.log_window import LogWindow
from partialfc.training.optimizer import TrainingOptimizer


def load_weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def run_steps(trainer, steps: int, after_each: Callable[[], None] = lambda: None) -> LogWindow:
    """``steps`` training steps in this process; the loader's workers are stopped afterwards."""
    window = LogWindow()
    with contextlib.closing(trainer._batches()) as batches:
        for _ in range(steps):
            window.add(trainer.train_step(batches))
            after_each()
    return window


# ---------------------------------------------------------------------- centre learning rate
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_centre_lr_is_the_scheduled_lr_times_the_scale(name):
    backbone = nn.Linear(4, 8)
    config = OptimConfig(name=name, centre_lr_scale=2.5)
    pfc = PartialFC(8, 10, 1.0, CombinedMargin(s=8.0), optimizer=config.build_centre_optimizer())
    optimizer = TrainingOptimizer(config, backbone, pfc)
    optimizer.set_lr(0.04)
    assert [group["lr"] for group in optimizer.backbone_optimizer.param_groups] == [0.04]
    assert pfc.optimizer.lr == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"optim\.centre_lr_scale=0\.0"):
        load_config(None, {"optim.centre_lr_scale": 0})


def test_a_dropped_step_is_reported_as_not_applied():
    backbone = nn.Linear(4, 8)
    pfc = PartialFC(8, 10, 1.0, CombinedMargin(s=8.0), optimizer=OptimConfig().build_centre_optimizer())
    optimizer = TrainingOptimizer(OptimConfig(), backbone, pfc)
    loss = pfc(backbone(torch.randn(6, 4)), torch.arange(6))
    loss.backward()
    assert bool(optimizer.step(loss).applied)
    loss = pfc(backbone(torch.randn(6, 4)), torch.arange(6))
    loss.backward()
    assert not bool(optimizer.step(loss * float("nan")).applied)


# ---------------------------------------------------------------------- EMA
def test_weight_average_follows_applied_steps_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.75)
    start = {k: v.clone() for k, v in average.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(5, 3))  # moves the batch-norm running statistics
    average.update(model, torch.tensor(True))
    expected = 0.75 * start["0.weight"] + 0.25 * model[0].weight.detach()
    assert torch.allclose(average.module[0].weight, expected, atol=1e-6)
    assert torch.equal(average.module[1].running_mean, model[1].running_mean)  # buffers copied
    assert int(average.module[1].num_batches_tracked) == 1

    kept = {k: v.clone() for k, v in average.module.state_dict().items()}
    with torch.no_grad():  # a dropped step: whatever the model holds must not reach the average
        model[1].running_mean.fill_(float("nan"))
        model[0].weight.add_(1.0)
    average.update(model, torch.tensor(False))
    assert_same_weights(kept, average.module.state_dict())
    assert not any(p.requires_grad for p in average.module.parameters())


def test_resume_with_ema_is_bit_identical_and_model_pt_holds_the_average(tiny_dataset, tmp_path):
    straight, resumed, _, _ = straight_and_resumed(tiny_dataset, tmp_path, **{"train.ema_decay": 0.9})

    expected = load_weights(straight / "checkpoints" / "step-00000006" / "trainer.pt")
    actual = load_weights(resumed / "checkpoints" / "step-00000006" / "trainer.pt")
    assert_same_weights(expected["ema"], actual["ema"])
    assert_same_weights(expected["model"], actual["model"])
    exported = load_weights(straight / "model.pt")["state_dict"]
    assert_same_weights(expected["ema"], exported)  # the average is what model.pt carries
    assert_same_weights(expected["ema"], load_weights(straight / "model_best.pt")["state_dict"])
    raw = expected["model"]
    assert not all(torch.equal(exported[key], raw[key]) for key in raw)  # and it is not the raw weights


# ---------------------------------------------------------------------- sample-rate schedule
def test_sample_rate_schedule_parses_and_names_the_field():
    schedule = SampleRateSchedule.parse(["0.5:0.3", "0.9:1.0"], base=0.1)
    assert [schedule.rate(step, 10) for step in range(10)] == [0.1] * 5 + [0.3] * 4 + [1.0]
    for bad in ("0.5", "x:1", "1.0:0.5", "0.5:-0.1", "0.5:1.5"):
        with pytest.raises(ConfigError, match=f"loss.sample_rate_schedule: entry '{bad}'"):
            load_config(None, {"loss.sample_rate_schedule": bad})
    with pytest.raises(ConfigError, match="strictly increasing"):
        load_config(None, {"loss.sample_rate_schedule": "0.5:0.3,0.5:1.0"})


def test_sampled_centres_follow_the_schedule_also_after_a_resume(tiny_dataset, tmp_path):
    trainer = make_trainer(
        tiny_dataset,
        tmp_path / "run",
        **{"loss.sample_rate": 0.1, "loss.sample_rate_schedule": "0.5:1.0", "train.max_steps": 4},
    )
    classes, pfc, sampled = trainer.num_classes, trainer.pfc, []
    centre_step = pfc.step

    def record_then_step(**kwargs) -> None:  # the rows of the step's forward pass, seen before the update
        sampled.append((pfc.num_sample, len(pfc.last_sampled_rows)))
        centre_step(**kwargs)

    pfc.step = record_then_step
    run_steps(trainer, 4)
    few = math.ceil(0.1 * classes)
    assert [n for n, _ in sampled] == [few, few, classes, classes]
    assert all(rows < classes for _, rows in sampled[:2]) and all(rows == classes for _, rows in sampled[2:])

    restarted = make_trainer(
        tiny_dataset,
        tmp_path / "restarted",
        **{"loss.sample_rate": 0.1, "loss.sample_rate_schedule": "0.5:1.0", "train.max_steps": 4},
    )
    restarted.progress.step, restarted.progress.samples = 2, 2 * restarted.global_batch  # a resume at step 2
    run_steps(restarted, 1)
    assert restarted.pfc.num_sample == classes


# ---------------------------------------------------------------------- torch.compile
def test_compiled_backbone_trains_like_eager(tiny_dataset, tmp_path, monkeypatch):
    """Dynamo capture + AOT autograd, as model.compile does, but without inductor's C++ code generation:
    inductor compiles the tiny backbone's forward and backward in about 90 s on 2 CPU cores, too slow for CI."""
    compile_module = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda module: compile_module(module, backend="aot_eager"))
    runs = {}
    for compiled in (False, True):
        trainer = make_trainer(
            tiny_dataset, tmp_path / str(compiled), **{"train.max_steps": 2, "model.compile": compiled}
        )
        assert (trainer.backbone._compiled_call_impl is not None) == compiled
        window = run_steps(trainer, 2)
        runs[compiled] = (window.mean_loss(), trainer.backbone.state_dict())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    assert runs[True][1].keys() == runs[False][1].keys()  # checkpoints and model.pt keep their key names
    for key, eager in runs[False][1].items():
        assert torch.allclose(runs[True][1][key], eager, rtol=1e-4, atol=1e-6), key


# ---------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def pretrained_run(tiny_dataset, tmp_path_factory):
    """A finished two-step run: model.pt and its final checkpoint."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    assert make_trainer(tiny_dataset, run, **{"train.max_steps": 2}).fit() == ExitCode.FINISHED
    return run


def initial_state(tiny_dataset, output, **overrides) -> tuple[dict[str, torch.Tensor], object]:
    """The backbone (and trainer) as training would start from, after resume or model.init_from."""
    trainer = make_trainer(tiny_dataset, output, **{"train.max_steps": 2, **overrides})
    trainer._train = lambda batches: "finished"  # stop where the step loop would begin
    trainer.fit()
    return {k: v.clone() for k, v in trainer.backbone.state_dict().items()}, trainer


def test_init_from_a_model_pt_and_from_a_bare_state_dict(tiny_dataset, tmp_path, pretrained_run):
    pretrained = load_weights(pretrained_run / "model.pt")["state_dict"]
    started, trainer = initial_state(
        tiny_dataset,
        tmp_path / "from_model_pt",
        **{"model.init_from": str(pretrained_run / "model.pt"), "train.ema_decay": 0.99},
    )
    assert_same_weights(pretrained, started)
    assert_same_weights(pretrained, trainer.ema.module.state_dict())  # the average starts from them too
    assert "backbone initialised from" in (tmp_path / "from_model_pt" / "train.log").read_text()

    bare = {k: v + 1 if v.is_floating_point() else v for k, v in pretrained.items()}  # insightface backbone.pth
    torch.save(bare, tmp_path / "backbone.pth")
    started, _ = initial_state(
        tiny_dataset, tmp_path / "from_pth", **{"model.init_from": str(tmp_path / "backbone.pth")}
    )
    assert_same_weights(bare, started)


def test_init_from_a_file_that_does_not_fit_names_the_keys(tiny_dataset, tmp_path, pretrained_run):
    state = dict(load_weights(pretrained_run / "model.pt")["state_dict"])
    missing = sorted(state)[0]
    state.pop(missing)
    state["head.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"model\.init_from") as error:
        initial_state(tiny_dataset, tmp_path / "run", **{"model.init_from": str(tmp_path / "other.pth")})
    message = str(error.value)
    assert str(tmp_path / "other.pth") in message and missing in message and "head.extra" in message

    with pytest.raises(ConfigError, match=r"model\.embedding_size=64"):
        initial_state(
            tiny_dataset,
            tmp_path / "run64",
            **{"model.init_from": str(pretrained_run / "model.pt"), "model.embedding_size": 64},
        )


def test_a_resumed_checkpoint_wins_over_init_from(tiny_dataset, tmp_path, pretrained_run):
    checkpoint = pretrained_run / "checkpoints" / "step-00000002"
    output = tmp_path / "resumed"
    shutil.copytree(checkpoint, output / "checkpoints" / checkpoint.name)
    state = load_weights(pretrained_run / "model.pt")["state_dict"]
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, tmp_path / "zeros.pth")
    started, _ = initial_state(tiny_dataset, output, **{"model.init_from": str(tmp_path / "zeros.pth")})
    assert_same_weights(load_weights(checkpoint / "trainer.pt")["model"], started)
    assert "model.init_from" in (output / "train.log").read_text() and "ignored" in (output / "train.log").read_text()
