"""Names before the rename (``loss.head``, ``margin``, flat ``m2``, ``curricular_m``, ...) keep working
through partialfc/config_aliases.py: in a YAML file, as a flag, and in a checkpoint's saved config, each with one
deprecation line on stderr naming the old and the new name."""

from __future__ import annotations

import json
import re

import pytest
from training_run import REPO, make_trainer

from partialfc.common.exit_codes import ExitCode
from partialfc.config import Config, ConfigError, is_meaning_field, leaf_fields, load_config
from partialfc.config_aliases import ALIASES
from partialfc.train import main

OLD_YAML = """
loss:
  head: margin
  s: 32.0
  m1: 1.0
  m2: 0.3
  m3: 0.1
  adaface_m: 0.35
  adaface_h: 0.2
  adaface_t_alpha: 0.05
  curricular_m: 0.45
  magface_l_a: 12.0
  magface_u_a: 100.0
  magface_l_m: 0.4
  magface_u_m: 0.7
  magface_lambda_g: 30.0
  elastic_m: 0.45
  elastic_std: 0.04
  elastic_kind: cos
  sample_rate: 0.5
eval:
  every_steps: 500
  far: 0.0001
"""

NEW_VALUES = {
    "loss.family": "combined",
    "loss.s": 32.0,
    "loss.combined.m1": 1.0,
    "loss.combined.m2": 0.3,
    "loss.combined.m3": 0.1,
    "loss.adaface.m": 0.35,
    "loss.adaface.h": 0.2,
    "loss.adaface.t_alpha": 0.05,
    "loss.curricularface.m": 0.45,
    "loss.magface.l_a": 12.0,
    "loss.magface.u_a": 100.0,
    "loss.magface.l_m": 0.4,
    "loss.magface.u_m": 0.7,
    "loss.magface.lambda_g": 30.0,
    "loss.elasticface.m": 0.45,
    "loss.elasticface.std": 0.04,
    "loss.elasticface.kind": "cos",
    "loss.sample_rate": 0.5,
    "eval.verify.every_steps": 500,
    "eval.verify.far": 0.0001,
}


def values(config: Config) -> dict[str, object]:
    return {name: value for name, value, _ in leaf_fields(config)}


def test_every_alias_names_a_current_field():
    current = {name for name, _, _ in leaf_fields(Config())}
    assert {renamed.key for renamed in ALIASES.values()} <= current
    assert not set(ALIASES) & current
    # A renamed field that defines the run is compared under its current name when a checkpoint resumes.
    renamed_meaning = {renamed.key for renamed in ALIASES.values() if is_meaning_field(renamed.key)}
    assert renamed_meaning == {renamed.key for renamed in ALIASES.values() if renamed.key.startswith("loss.")}


def _family_files(text: str) -> dict[str, str]:
    """OLD_YAML as one file per margin family: a run uses one family, and another family's parameters are
    refused, so each family's old keys are loaded under ``head: <family>``; the rest go with ``margin``."""
    lines = text.strip().splitlines()[1:]  # the keys under loss:
    owners = {"adaface_": "adaface", "curricular_": "curricularface", "magface_": "magface", "elastic_": "elasticface"}
    files: dict[str, list[str]] = {"margin": [], **{family: [] for family in owners.values()}}
    tail = text.split("eval:", 1)[1]
    for line in lines:
        if line.startswith("eval:"):
            break
        key = line.strip().split(":")[0]
        if key == "head":
            continue
        family = next((f for prefix, f in owners.items() if key.startswith(prefix)), "margin")
        files[family].append(line)
    return {
        family: "loss:\n  head: "
        + family
        + "\n"
        + "\n".join(keys)
        + "\n"
        + ("eval:" + tail if family == "margin" else "")
        for family, keys in files.items()
    }


def test_a_yaml_file_with_the_old_keys_loads_as_the_new_ones(tmp_path, capsys):
    lines, loaded = [], {}
    for family, text in _family_files(OLD_YAML).items():
        path = tmp_path / f"old_{family}.yaml"
        path.write_text(text)
        config = values(load_config(path))
        loaded |= {
            name: config[name] for name in NEW_VALUES if name.startswith(f"loss.{family}.") or family == "margin"
        }
        lines += capsys.readouterr().err.splitlines()
    assert {name: loaded[name] for name in NEW_VALUES} == NEW_VALUES
    # One line per deprecated key in each file; loss.head's value rename shares its line.
    named = {re.search(r": '([^' ]+)", line).group(1) for line in lines}
    assert named == set(ALIASES), sorted(named ^ set(ALIASES))
    assert (
        f"partialfc: {tmp_path / 'old_margin.yaml'}: 'loss.head margin' is deprecated, use 'loss.family combined'"
        in lines
    )
    curricular = tmp_path / "old_curricularface.yaml"
    assert f"partialfc: {curricular}: 'loss.curricular_m' is deprecated, use 'loss.curricularface.m'" in lines


def test_old_flags_and_values_on_the_command_line(capsys):
    flags = ["--loss.head", "margin", "--loss.m2", "0.25"]
    assert main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run", *flags]) == 0
    captured = capsys.readouterr()
    assert "family: combined" in captured.out and "m2: 0.25" in captured.out and "head:" not in captured.out
    assert captured.err.splitlines() == [
        "partialfc: command line: 'loss.head margin' is deprecated, use 'loss.family combined'",
        "partialfc: command line: 'loss.m2' is deprecated, use 'loss.combined.m2'",
    ]
    flags = ["--loss.head", "elasticface", "--loss.elastic_kind", "cos"]
    assert main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run", *flags]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "partialfc: command line: 'loss.head' is deprecated, use 'loss.family'",
        "partialfc: command line: 'loss.elastic_kind' is deprecated, use 'loss.elasticface.kind'",
    ]
    config = load_config(None, {"loss.head": "curricularface", "loss.curricular_m": "0.4"})
    assert (config.loss.family, config.loss.curricularface.m) == ("curricularface", 0.4)


def test_an_old_value_under_the_new_key_is_renamed_and_unknown_ones_are_refused(capsys):
    assert load_config(None, {"loss.family": "margin"}).loss.family == "combined"
    assert capsys.readouterr().err == (
        "partialfc: command line: 'loss.family margin' is deprecated, use 'loss.family combined'\n"
    )
    with pytest.raises(ConfigError, match=r"loss\.family='arcfase' is not one of combined, softmax, adaface.*arcface"):
        load_config(None, {"loss.head": "arcfase"})


def test_allow_changes_may_name_a_field_by_its_old_name(tmp_path, capsys):
    config = load_config(None, {"checkpoint.allow_changes": "loss.m2,train.max_steps"})
    assert config.checkpoint.allow_changes == ["loss.combined.m2", "train.max_steps"]
    assert (
        "'checkpoint.allow_changes loss.m2,train.max_steps' is deprecated, use 'checkpoint.allow_changes "
        "loss.combined.m2,train.max_steps'" in capsys.readouterr().err
    )
    path = tmp_path / "allow.yaml"
    path.write_text("checkpoint:\n  allow_changes: [loss.head, loss.curricular_m]\n")
    assert load_config(path).checkpoint.allow_changes == ["loss.family", "loss.curricularface.m"]


def test_old_and_new_name_together_in_a_file_is_an_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("loss:\n  m2: 0.3\n  combined:\n    m2: 0.4\n")
    with pytest.raises(ConfigError, match=r"'loss\.combined\.m2' is given twice"):
        load_config(path)


def test_a_checkpoint_saved_under_the_old_names_resumes_under_the_new_ones(tiny_dataset, tmp_path, capsys):
    """An old run (``loss.head: margin``, flat ``m2``) continues without being refused as a meaning change."""
    output = tmp_path / "run"
    assert (
        make_trainer(tiny_dataset, output, **{"train.max_steps": 2, "checkpoint.every_steps": 2}).fit()
        == ExitCode.FINISHED
    )
    manifest_path = next((output / "checkpoints").glob("step-*")) / "meta.json"
    manifest = json.loads(manifest_path.read_text())
    loss = manifest["config"]["loss"]
    assert loss.pop("family") == "combined"
    loss.pop("softmax")
    combined, ada, curricular, mag, elastic = (
        loss.pop(name) for name in ("combined", "adaface", "curricularface", "magface", "elasticface")
    )
    manifest["config"]["loss"] = {  # the layout this release wrote before the rename
        "head": "margin",
        "s": loss.pop("s"),
        "m1": combined["m1"],
        "m2": combined["m2"],
        "m3": combined["m3"],
        "adaface_m": ada["m"],
        "adaface_h": ada["h"],
        "adaface_t_alpha": ada["t_alpha"],
        "curricular_m": curricular["m"],
        "magface_l_a": mag["l_a"],
        "magface_u_a": mag["u_a"],
        "magface_l_m": mag["l_m"],
        "magface_u_m": mag["u_m"],
        "magface_lambda_g": mag["lambda_g"],
        "elastic_m": elastic["m"],
        "elastic_std": elastic["std"],
        "elastic_kind": elastic["kind"],
        **loss,
    }
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()

    changed = make_trainer(
        tiny_dataset,
        output,
        **{"train.max_steps": 4, "loss.combined.m2": 0.2, "checkpoint.allow_changes": ["train.max_steps"]},
    )
    with pytest.raises(
        ConfigError,
        match=r"settings that change what the run means: loss.combined.m2 \(checkpoint "
        r"0.3, this job 0.2\)\. ",
    ):
        changed.fit()
    resumed = make_trainer(
        tiny_dataset, output, **{"train.max_steps": 4, "checkpoint.allow_changes": ["train.max_steps"]}
    )
    assert resumed.fit() == ExitCode.FINISHED and resumed.progress.step == 4
    assert "deprecated" not in capsys.readouterr().err  # an old checkpoint is not the user's to fix
