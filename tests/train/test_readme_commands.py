"""The README's training commands, read as a newcomer pastes them: each trains into its own output directory,
or the second would resume the first (``checkpoint.resume auto``) and be refused for its changed options."""

from __future__ import annotations

import shlex
from pathlib import Path

from partialfc.config import load_config

REPO = Path(__file__).resolve().parents[2]


def training_commands() -> list[list[str]]:
    """The partialfc.train commands of README's Training section that train (not --dry-run or --help)."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Training", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    return [c for c in commands if "partialfc.train" in c and "--dry-run" not in c and "--help" not in c]


def output_of(command: list[str]) -> str:
    args = command[command.index("partialfc.train") + 1 :]
    flags = dict(zip(args[::2], args[1::2]))
    return flags.get("--output") or load_config(REPO / flags["--config"]).output


def test_each_training_command_has_its_own_output():
    commands = training_commands()
    assert len(commands) >= 2
    outputs = [output_of(command) for command in commands]
    assert len(set(outputs)) == len(outputs), outputs
