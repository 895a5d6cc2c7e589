"""A mistake on a command line or in a config file is one line that names it and what was meant."""

from __future__ import annotations

import pytest

from launcher.__main__ import main as launcher_main
from partialfc.common.cli import closest
from partialfc.config import ConfigError, load_config
from partialfc.train import main as train_main


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("--optim.learning_rate", "--optim.lr"),
        ("--optim.lrr", "--optim.lr"),
        ("--data.batchsize", "--data.batch_size"),
        ("--train.max_step", "--train.max_steps"),
        ("--loss.sample_rat", "--loss.sample_rate"),
    ],
)
def test_closest_option(typo, meant):
    from partialfc.train import build_parser

    options = [option for action in build_parser()._actions for option in action.option_strings]
    assert closest(typo, options) == meant


def test_an_unknown_training_option_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--optim.learning_rate", "0.01"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "python -m partialfc.train: error: unknown option --optim.learning_rate; did you mean "
        "--optim.lr? (all options: python -m partialfc.train --help)"
    ], err


def test_an_unknown_config_key_suggests_the_known_one(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.learning_rate' \(did you mean 'optim.lr'\?\)"):
        load_config(config)


def test_argparse_type_names_stay_internal(capsys):
    with pytest.raises(SystemExit) as stop:
        launcher_main(["--print", "--node-rank", "one"], {})
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid value 'one'" in err and "int" not in err and "usage:" not in err, err


def test_the_launcher_refuses_a_typo_before_starting_torchrun(capsys):
    with pytest.raises(SystemExit) as stop:
        launcher_main(["--print", "--", "--config", "configs/quickstart.yaml", "--train.max_step", "4"], {})
    assert stop.value.code == 2
    assert "unknown option --train.max_step; did you mean --train.max_steps?" in capsys.readouterr().err


def test_a_missing_input_file_is_named_without_python_internals(tmp_path, tiny_dataset, capsys):
    """`eval pairs --embeddings PREFIX` with no PREFIX.npy: the file and the reason, not ``[Errno 2] …'…'``."""
    from partialfc.eval.__main__ import main as eval_main

    missing = tmp_path / "emb"
    assert eval_main(["pairs", "--embeddings", str(missing), "--data", str(tiny_dataset / "holdout")]) == 2
    assert capsys.readouterr().err == f"error: {missing}.npy: No such file or directory\n"


def test_a_mistyped_config_file_is_named_with_the_one_meant(tmp_path):
    (tmp_path / "quickstart.yaml").write_text("train:\n  max_steps: 4\n")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "quickstart.yml")
    assert str(refused.value) == (
        f"cannot read config {tmp_path / 'quickstart.yml'}: No such file or directory "
        f"(did you mean {tmp_path / 'quickstart.yaml'}?)"
    )


def test_a_config_that_is_not_yaml_names_the_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  max_steps: [4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line 3, column 1 is not valid YAML: [^\n]+$"):
        load_config(tmp_path / "bad.yaml")
