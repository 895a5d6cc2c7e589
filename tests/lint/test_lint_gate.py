"""The code lint gate: CI runs `make lint` no later than the tests, and the pinned import-linter, ruff
and mypy with the project's settings refuse what they are there to refuse: an import across the
layers (docs/architecture.md), unsorted imports, code mypy cannot type against torch's annotations."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from training_run import REPO

LINT = REPO / ".venv-lint" / "bin"
SETTINGS = REPO / "pyproject.toml"


@pytest.fixture(scope="module")
def lint() -> Path:
    if not all((LINT / tool).exists() for tool in ("ruff", "mypy", "lint-imports")):
        if os.environ.get("PARTIALFC_REQUIRE_LINT"):
            pytest.fail(f"{LINT} lacks ruff, mypy or lint-imports: run `make lint-venv`")
        pytest.skip("ruff, mypy and import-linter are not installed: `make lint-venv`")
    return LINT


def run(*command: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ci_lints_no_later_than_it_tests_and_lint_runs_all_four_checks() -> None:
    """.ci/run stops at the first failing command (set -e), and a make with several targets fails when any
    does: lint in the tests' make or an earlier one fails CI."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    steps = [  # the targets of each make command
        [word for word in line.split()[1:] if not word.startswith("-")]
        for line in ci.splitlines()
        if re.match(r"make( -\S+)* \w", line)
    ]
    lint_step = next(i for i, targets in enumerate(steps) if "lint" in targets)
    test_step = next(i for i, targets in enumerate(steps) if "test" in targets)
    assert lint_step <= test_step, steps
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has no lint target"
    checks = (
        "lint-imports",
        "ruff check $(LINT_PATHS)",
        "ruff format --check $(LINT_PATHS)",
        "mypy --python-executable $(PY)",
    )
    for check in checks:
        assert check in recipe.group(1), check


def test_ruff_refuses_unsorted_and_unused_imports_and_unformatted_code(lint: Path, tmp_path: Path) -> None:
    source = tmp_path / "planted.py"
    source.write_text("import sys\nimport os\n\nanswer=os.sep\n")
    result = run(lint / "ruff", "check", "--config", SETTINGS, "--output-format", "concise", "--no-cache", source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert {"I001", "F401"} <= set(re.findall(r": ([A-Z]+\d+) ", result.stdout)), result.stdout
    result = run(lint / "ruff", "format", "--check", "--config", SETTINGS, "--no-cache", source)
    assert result.returncode == 1, result.stdout + result.stderr


def test_mypy_checks_against_torchs_annotations(lint: Path, tmp_path: Path) -> None:
    source = tmp_path / "planted.py"
    source.write_text("import torch\n\n\ndef total(x: torch.Tensor) -> int:\n    return x.sum()\n")
    result = run(
        lint / "mypy",
        "--config-file",
        SETTINGS,
        "--python-executable",
        sys.executable,
        "--cache-dir",  # make lint's cache (CI lints first): torch's annotations are read once
        REPO / ".mypy_cache",
        source,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible return value type (got "Tensor", expected "int")' in result.stdout, result.stdout


def test_mypy_covers_the_benchmarks_as_their_scripts_import_each_other() -> None:
    """`make lint` runs mypy on its configured files: the studies and benchmarks are code users run too."""
    settings = tomllib.loads(SETTINGS.read_text())["tool"]["mypy"]
    assert {"partialfc", "launcher", "benchmarks"} <= set(settings["files"])
    assert "benchmarks" in settings["mypy_path"]  # study_report, study_stats and sample_rate import by name


# Imports the layers forbid, each added to a copy of the package: (file, line appended, what the report names).
PLANTED_IMPORTS = {
    "data imports the checkpoint": (
        "partialfc/data/progress.py",
        "from partialfc.training.checkpoint import Checkpointer\n\n__all__ = ['Checkpointer']\n",
        "partialfc.data.progress -> partialfc.training.checkpoint",
    ),
    "a cycle through an annotation": (
        "partialfc/training/train_step.py",
        "if TYPE_CHECKING:\n    from partialfc.training.log_window import LogWindow\n",
        "No cycles are allowed in partialfc.training",
    ),
    "the launcher imports a command": (
        "launcher/environment.py",
        "from partialfc.train import main\n\n__all__ = ['main']\n",
        "launcher.environment -> partialfc.train",
    ),
}


@pytest.mark.parametrize("planted", list(PLANTED_IMPORTS))
def test_make_lint_fails_on_an_import_the_layers_forbid(lint: Path, tmp_path: Path, planted: str) -> None:
    """`make lint` in a copy of the tree with one forbidden import added fails, naming the import."""
    for tree in ("partialfc", "launcher"):
        shutil.copytree(REPO / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    unplanted = run(lint / "lint-imports", "--no-logo", "--no-cache", cwd=tmp_path)
    assert unplanted.returncode == 0, unplanted.stdout  # the copy itself keeps every contract
    path, line, reported = PLANTED_IMPORTS[planted]
    source = tmp_path / path
    text = source.read_text()
    if "TYPE_CHECKING" in line and "TYPE_CHECKING" not in text:
        text = text.replace(
            "from __future__ import annotations\n",
            "from __future__ import annotations\n\nfrom typing import TYPE_CHECKING\n",
            1,
        )
    source.write_text(text + "\n" + line)
    make = [
        "make",
        "-o",
        "setup",
        "-o",
        "lint-venv",
        "lint",
        f"LINT_VENV={REPO / '.venv-lint'}",
        f"PY={sys.executable}",
    ]
    result = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and reported in result.stdout, result.stdout + result.stderr
