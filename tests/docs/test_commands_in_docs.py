"""Commands the README and the guides tell a user to paste, checked against what they depend on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("guide", GUIDES, ids=[g.name for g in GUIDES])
def test_the_dataset_load_starts_only_after_the_volume_owner_job_completed(guide):
    """k8s/data/10-load-dataset.yaml writes as UID 10001 into volumes that 00-volume-owner.yaml chowns: applying
    the folder at once starts both Jobs together and the load fails on a volume it may not write yet."""
    text = guide.read_text().replace("\\\n", " ")
    assert not re.search(r"kubectl apply[^\n]* -f k8s/data/?(\s|$)", text), f"{guide.name} applies k8s/data/ at once"
    for load in re.finditer(r"kubectl apply -f k8s/data/10-load-dataset\.yaml", text):
        before = text[: load.start()]
        assert "wait --for=condition=complete job/partialfc-volume-owner" in before, (guide.name, load.start())


def _launcher_section() -> str:
    text = (REPO / "docs" / "deploy.md").read_text()
    return text.split("## The launcher", 1)[1].split("\n## ", 1)[0]


def test_the_launcher_synopsis_shows_every_option_as_its_parser_takes_it():
    from launcher.__main__ import build_parser

    synopsis = _launcher_section().split("```", 2)[1]
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option in ("-h", "--help"):
                continue
            value = action.metavar or "|".join(action.choices or ())
            shown = option if action.nargs == 0 else f"{option} {value}"
            assert f"[{shown}]" in synopsis, f"docs/deploy.md's launcher synopsis lacks [{shown}]"


def test_the_slurm_row_names_every_variable_the_launcher_reads_there():
    source = (REPO / "launcher" / "environment.py").read_text()
    slurm = source.split("def from_slurm", 1)[1].split("\ndef ", 1)[0]
    read = set(re.findall(r'"((?:SLURM|MASTER)_[A-Z_]+)"', slurm))
    assert {"SLURM_STEP_NODELIST", "MASTER_ADDR"} <= read, read  # what the row must not leave out again
    (row,) = [line for line in _launcher_section().splitlines() if line.startswith("| SLURM |")]
    assert all(f"`{name}`" in row for name in read), sorted(name for name in read if f"`{name}`" not in row)


def test_no_guide_says_the_launcher_execs_torchrun():
    """It stays torchrun's parent (launcher/supervise.py): an exec would lose the restart after a lost store."""
    for path in [*GUIDES, *sorted((REPO / "launcher").glob("*.py"))]:
        assert not re.search(r"\bexecs? `?torchrun", path.read_text()), path.name


def test_the_alert_table_is_the_rules_file():
    """docs/observability.md's table lists every alert of k8s/monitoring/partialfc-rules.yaml, with its hold time
    (`for`, — for none) and severity."""
    import yaml

    rules = yaml.safe_load((REPO / "k8s" / "monitoring" / "partialfc-rules.yaml").read_text())
    alerts = {
        rule["alert"]: (rule.get("for", "—"), rule["labels"]["severity"])
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    text = (REPO / "docs" / "observability.md").read_text()
    rows = {
        cells[0].strip("`"): (cells[2], cells[3])
        for line in text.splitlines()
        if line.startswith("| `PartialFC")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert rows == alerts
