#!/usr/bin/env bash
# Installs partialfc from a source tree into the current Python environment, with every runtime
# dependency at the version in docker/constraints.txt: the one install step of docker/Dockerfile,
# also run by CI (.ci/run via `make install-check`) in a throwaway venv, so a broken step fails CI
# although no Docker engine runs there.
#   usage: docker/install.sh SOURCE_DIR
# torch comes from the constraints too: an environment that already holds torch 2.13.0 keeps it (CI:
# the CPU build), an empty one (the image) gets PyPI's Linux build of 2.13.0 (CUDA 13.0).
set -euo pipefail
source_dir=$(cd "${1:?usage: install.sh SOURCE_DIR}" && pwd)
python=$(command -v "${PYTHON:-python}")
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # absolute, symlink kept (a venv's python)

"$python" -m pip install --no-cache-dir --disable-pip-version-check \
    --constraint "${source_dir}/docker/constraints.txt" "${source_dir}[dali]"
# Fail here, not in the first training job, if an import, a pin or the entrypoint is broken. From /
# so that the installed package is imported, not the source tree.
cd /
"$python" - "${source_dir}" <<'PY'
import sys
from importlib.metadata import version

import torch
import launcher  # noqa: F401
import nvidia.dali
import partialfc

source_dir = sys.argv[1]
lines = open(f"{source_dir}/docker/constraints.txt").read().splitlines()
pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
installed = {name: version(name).split("+")[0] for name in pins}
wrong = {name: (installed[name], pin) for name, pin in pins.items() if installed[name] != pin}
assert not wrong, f"installed versions differ from docker/constraints.txt: {wrong}"
assert not partialfc.__file__.startswith(source_dir + "/"), f"imported the source tree: {partialfc.__file__}"
print("partialfc", partialfc.__version__, "torch", torch.__version__, "CUDA", torch.version.cuda,
      "DALI", nvidia.dali.__version__)
PY
"$python" -m launcher --help >/dev/null
