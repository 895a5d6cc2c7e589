"""Evaluation protocols during training: the list ``eval.protocols``, each at its interval, one record each.

The tiny synthetic dataset carries an IJB-shaped hold-out release (``holdout/``: loose crops with
landmarks, template and 1:N lists) beside its ``.bin``, so the IJB protocols run here as on IJB-C.
"""

from __future__ import annotations

import json

import pytest
import torch
from training_run import make_trainer

from partialfc.common.options import ConfigError
from partialfc.config import EVAL_PROTOCOLS, load_config
from partialfc.eval import __main__ as eval_cli
from partialfc.eval import ijb_protocols
from partialfc.eval.registry import PROTOCOLS
from partialfc.report import read_records
from partialfc.training.evaluation import Evaluation
from partialfc.training.records import EvaluationRecord

IJB = {"eval.ijb.release": "holdout", "eval.ijb.every_steps": 4, "train.max_steps": 8}


def test_training_runs_each_listed_protocol_at_its_interval(tiny_dataset, tmp_path, monkeypatch, capsys):
    """pairs and identify every 4 steps on one embedding pass per step, verify only at the end; pairs is
    listed first, so its TAR@FAR=1e-4 decides model_best.pt; the last pairs record is what `eval pairs`
    reads from model.pt."""
    passes = []
    embed_source = ijb_protocols.embed_source
    monkeypatch.setattr(ijb_protocols, "embed_source", lambda *a, **k: passes.append(1) or embed_source(*a, **k))
    output = tmp_path / "run"
    trainer = make_trainer(tiny_dataset, output, **IJB, **{"eval.protocols": ["pairs", "identify", "verify"]})
    batches = []
    trainer.watchdog.working = lambda: batches.append(1)  # each embedded batch is progress for the watchdog
    trainer.fit()
    evaluations = [r for r in read_records(output / "train_log.jsonl") if isinstance(r, EvaluationRecord)]
    assert [(r.protocol, r.target, r.step) for r in evaluations] == [
        ("pairs", "synth", 4),
        ("identify", "synth", 4),
        ("pairs", "synth", 8),
        ("identify", "synth", 8),
        ("verify", "synth_val", 8),
    ]
    assert len(passes) == 2  # identify reused the features pairs computed at the same step
    # eval.batch_size 200 (quickstart): 2 IJB passes of 320 images, the .bin's 400; 2 batches each, image and mirror
    assert len(batches) == 2 * (2 * 2) + 2 * 2
    assert all(r.seconds > 0 for r in evaluations)
    summary = json.loads((output / "summary.json").read_text())
    pairs = [r for r in evaluations if r.protocol == "pairs"]
    assert summary["best_evaluation"]["pairs/synth"] == max(r.summary["TAR@FAR=0.0001"] for r in pairs)
    assert set(summary["last_evaluation"]) == {"pairs/synth", "identify/synth", "verify/synth_val"}
    assert summary["last_evaluation"]["identify/synth"]["rank-1"] == evaluations[3].summary["rank-1"]
    best = torch.load(output / "model_best.pt", weights_only=True)["state_dict"]
    final = torch.load(output / "model.pt", weights_only=True)["state_dict"]
    improved_last = pairs[1].summary["TAR@FAR=0.0001"] > pairs[0].summary["TAR@FAR=0.0001"]
    assert all(torch.equal(best[k], final[k]) for k in final) == improved_last

    capsys.readouterr()
    argv = ["pairs", "--model", str(output / "model.pt"), "--data", str(tiny_dataset / "holdout"), "--json", "-"]
    assert eval_cli.main(argv) == 0
    offline = json.loads(capsys.readouterr().out)["results"]["synth"]["summary"]
    assert offline == pytest.approx(pairs[-1].summary, abs=1e-6)


def test_training_and_the_eval_command_name_the_same_protocols(tiny_dataset, tmp_path):
    """Every protocol the config accepts is the registry's, and training builds that very class."""
    assert tuple(PROTOCOLS) == EVAL_PROTOCOLS
    config = load_config(
        None,
        {"data.path": str(tiny_dataset), "data.val_targets": "synth_val", **IJB, "eval.protocols": list(PROTOCOLS)},
    )
    evaluation = Evaluation.from_config(config, torch.device("cpu"), None)
    assert [type(entry.protocol) for entry in evaluation.scheduled] == list(PROTOCOLS.values())
    assert [entry.every_steps for entry in evaluation.scheduled] == [2000, 4, 4]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eval.protocols": "verify,pairs"}, r"eval\.ijb\.release=''.*must name an IJB release folder"),
        ({"eval.protocols": "verify,roc"}, r"eval\.protocols=.*may only list each of verify, pairs, identify once"),
        ({"eval.protocols": "verify,verify"}, r"eval\.protocols=.*once"),
    ],
)
def test_the_protocol_list_is_checked_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_missing_release_stops_the_start_naming_the_field(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.ijb\.release: 'no-such-release' not found"):
        make_trainer(
            tiny_dataset, tmp_path / "run", **{"eval.protocols": ["pairs"], "eval.ijb.release": "no-such-release"}
        )
