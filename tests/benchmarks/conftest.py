"""The studies under benchmarks/ are scripts that import their shared modules by name, as when run."""

import sys

from training_run import REPO

if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))
