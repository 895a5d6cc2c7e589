"""The loss section as a newcomer writes it: ArcFace, CosFace and SphereFace by name, a parameter of a family
the run does not use refused naming that family, and each family's own rules checked when the config loads
(before any process group or dataset)."""

from __future__ import annotations

import pytest
from training_run import REPO

from partialfc.config import ConfigError, load_config
from partialfc.core.margins import COMBINED_PRESETS
from partialfc.train import main


@pytest.mark.parametrize(("family", "margins"), COMBINED_PRESETS.items())
def test_a_named_margin_is_combined_with_its_published_margins(family, margins):
    loss = load_config(None, {"loss.family": family}).loss
    assert loss.family == "combined" and (loss.combined.m1, loss.combined.m2, loss.combined.m3) == margins


def test_a_named_margin_refuses_another_margin_beside_it():
    with pytest.raises(ConfigError, match=r"loss\.combined\.m2=0\.2 conflicts with loss\.family=cosface"):
        load_config(None, {"loss.family": "cosface", "loss.combined.m2": 0.2})
    assert load_config(None, {"loss.family": "sphereface", "loss.combined.m1": 1.35}).loss.combined.m2 == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"loss.family": "adaface", "loss.combined.m2": 0.2},
            r"command line: loss\.combined\.m2=0\.2 is a parameter of loss\.family combined, but the family "
            r"chosen there is adaface",
        ),
        (
            {"loss.magface.l_a": 12.0},
            r"loss\.magface\.l_a=12\.0 is a parameter of loss\.family magface, but the family chosen there is combined",
        ),
    ],
)
def test_a_parameter_of_a_family_not_in_use_is_refused_naming_the_family(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_file_is_read_with_the_family_it_chooses(tmp_path):
    """A file's parameters belong to its own family: another family on the command line switches, and a
    parameter of a third family in the file is refused naming the file."""
    path = tmp_path / "run.yaml"
    path.write_text("loss:\n  family: curricularface\n  curricularface:\n    m: 0.4\n")
    assert load_config(path, {"loss.family": "adaface"}).loss.family == "adaface"
    path.write_text("loss:\n  family: curricularface\n  elasticface:\n    m: 0.4\n")
    with pytest.raises(
        ConfigError, match=rf"{path}: loss\.elasticface\.m=0\.4 is a parameter of loss\.family elasticface"
    ):
        load_config(path)


def test_each_familys_own_rules_are_checked_when_the_config_loads(capsys):
    """MagFace needs l_a < u_a: the dry run (no process group, no dataset) already says so, in one line."""
    argv = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--dry-run", "--loss.family", "magface"]
    assert main([*argv, "--loss.magface.l_a", "200"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["partialfc.train: config error: loss.magface: need l_a < u_a, got l_a=200.0, u_a=110.0"]
