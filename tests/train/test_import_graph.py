"""Loading the config or the data tools does not pull in the metrics stack.

The imports between partialfc's own modules (layers, no cycles) are import-linter's contracts, run by
`make lint` (pyproject.toml, tests/lint/test_lint_gate.py); this checks a third-party package they do not
cover, as the running interpreter sees it.
"""

from __future__ import annotations

import subprocess
import sys

from training_run import REPO


def test_importing_the_data_tools_leaves_prometheus_client_out():
    code = (
        "import sys, partialfc.data, partialfc.config; "
        "print(sorted(name for name in sys.modules if name.startswith('prometheus_client')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
