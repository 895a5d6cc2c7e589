"""The code lint gate: CI runs `make lint` before the tests, and the pinned ruff and mypy with the
project's settings refuse what they are there to refuse (mypy against torch's own annotations)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from training_run import REPO

LINT = REPO / ".venv-lint" / "bin"
SETTINGS = REPO / "pyproject.toml"


@pytest.fixture(scope="module")
def lint() -> Path:
    if not (LINT / "ruff").exists() or not (LINT / "mypy").exists():
        if os.environ.get("PARTIALFC_REQUIRE_LINT"):
            pytest.fail(f"{LINT} lacks ruff or mypy: run `make lint-venv`")
        pytest.skip("ruff and mypy are not installed: `make lint-venv`")
    return LINT


def run(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ci_lints_no_later_than_it_tests_and_lint_runs_all_three_checks() -> None:
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
    for check in ("ruff check $(LINT_PATHS)", "ruff format --check $(LINT_PATHS)", "mypy --python-executable $(PY)"):
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
