"""Their config files are read, never run: merged onto base.py as get_config merges them, anything but
`config.KEY = VALUE` of literals and arithmetic refused by file and line (insightface
recognition/arcface_torch/utils/utils_config.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from partialfc.migrate import MigrationError
from partialfc.migrate.__main__ import main
from partialfc.migrate.source import read_arcface_config

HEADER = "from easydict import EasyDict as edict\n\nconfig = edict()\n"


def job(folder: Path, body: str, base: str = "config.lr = 0.1\nconfig.num_epoch = 20\n", name: str = "job") -> Path:
    """``folder/<name>.py`` (HEADER + body) beside ``folder/base.py`` (HEADER + base)."""
    (folder / "base.py").write_text(HEADER + base)
    path = folder / f"{name}.py"
    path.write_text(HEADER + body)
    return path


def test_the_job_is_merged_onto_base_each_value_from_the_line_that_set_it(tmp_path):
    path = job(
        tmp_path,
        "config.lr = 0.2\nconfig.batch_size = 64\nconfig.output = None\nconfig.lr = 0.3\n",
        base="config.lr = 0.1\nconfig.num_epoch = 20\nconfig.output = 'base_out'\n",
        name="wf4m_r50",
    )
    arcface = read_arcface_config(path)
    assert list(arcface.keys) == ["lr", "num_epoch", "output", "batch_size"]  # base's order, then the job's new keys
    assert {key: a.value for key, a in arcface.keys.items()} == {
        "lr": 0.3,  # the job's last assignment wins
        "num_epoch": 20,
        "output": "work_dirs/wf4m_r50",  # None: get_config's default from the config's name
        "batch_size": 64,
    }
    assert arcface.keys["lr"].where == f"{path} line 7"
    assert arcface.keys["num_epoch"].where == f"{tmp_path / 'base.py'} line 5"
    assert arcface.set_by_job("lr") and not arcface.set_by_job("num_epoch")


@pytest.mark.parametrize(
    "body, value",
    [
        ("config.num_epoch = 20\nconfig.warmup_epoch = config.num_epoch // 10\n", 2),
        ("config.num_epoch = 16\nconfig.warmup_epoch = config.num_epoch / 8\n", 2.0),
        ("config.warmup_epoch = -(2 ** 3) + 4 * 3 % 5\n", -6),
        ("config.warmup_epoch = (1.0, 0.5 - 0.25, 0)\n", (1.0, 0.25, 0)),
        ('"""a docstring"""\nconfig.warmup_epoch = ["lfw", "cfp_fp"]\n', ["lfw", "cfp_fp"]),
    ],
)
def test_arithmetic_on_the_files_own_earlier_values(tmp_path, body, value):
    assert read_arcface_config(job(tmp_path, body)).value("warmup_epoch") == value


@pytest.mark.parametrize(
    "body, line, named",
    [
        ("import os\n", 4, "an import"),
        ("config.rec = os.path.join('/data', 'ms1m')\n", 4, "a function call"),
        ("config.lr = 0.1\nfor i in range(3):\n    config.lr *= 2\n", 5, "a loop"),
        ("config.lr = 0.1\nif True:\n    config.lr = 0.2\n", 5, "an if statement"),
        ("config.lr = base_lr\n", 4, "a name"),
        ("def lr():\n    return 0.1\n", 4, "a function definition"),
        ("config.lr = 10 ** 100\n", 4, "an exponent above 64"),
        ("config.val_targets = {'lfw': 1}\n", 4, "a dict"),
        ("config.lr += 0.1\n", 4, "an augmented assignment"),
        ("print(config)\n", 4, "a function call"),
        ("config.lr = 0.1\ndel config.lr\n", 5, "a statement (Delete)"),
        ("config = dict()\n", 4, "`config = ...` other than `config = edict()`"),
    ],
)
def test_anything_but_literals_and_arithmetic_is_refused_by_line(tmp_path, capsys, body, line, named):
    path = job(tmp_path, body)
    assert main(["config", str(path), "--out", str(tmp_path / "out.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"python -m partialfc.migrate: error: {path} line {line}: {named} is not read here: "
        "a config is `config.KEY = VALUE` lines of literals and arithmetic, and the file is "
        "never executed"
    ], err
    assert not (tmp_path / "out.yaml").exists()


@pytest.mark.parametrize(
    "body, message",
    [
        ("config.lr = config.base_lr * 2\n", "line 4: config.base_lr is used before this file sets it"),
        ("config.lr = 1 / 0\n", "line 4: division by zero"),
        ("config.lr = 'a' * 3\n", "line 4: arithmetic on 'a': only numbers are computed here"),
        ("config.lr = (\n", "line 4: not valid Python"),
    ],
)
def test_values_that_cannot_be_computed_are_refused_by_line(tmp_path, body, message):
    path = job(tmp_path, body)
    with pytest.raises(MigrationError, match=f"^{re.escape(str(path))} {message}"):
        read_arcface_config(path)


def test_a_base_value_is_not_visible_in_the_job(tmp_path):
    """Each file is a module of its own in get_config: the job's ``config`` starts empty."""
    path = job(tmp_path, "config.warmup_epoch = config.num_epoch // 10\n")
    with pytest.raises(MigrationError, match=r"config\.num_epoch is used before this file sets it"):
        read_arcface_config(path)


def test_a_config_without_base_beside_it_names_the_missing_file(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(HEADER)
    with pytest.raises(MigrationError, match=f"^{re.escape(str(path))}: no base.py beside it"):
        read_arcface_config(path)
