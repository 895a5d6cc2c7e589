#!/usr/bin/env bash
# Installs partialfc from a source tree into the current Python environment: the one install step of
# docker/Dockerfile, also run by CI (.ci/run via `make install-check`) in a throwaway venv, so a
# broken step fails CI although no Docker engine runs there.
#   usage: docker/install.sh SOURCE_DIR
# The environment's torch is kept: the image's base ships the CUDA build (CI: the CPU build), and
# `torch>=2.4` in pyproject.toml is satisfied by it, so pip never pulls another one.
set -euo pipefail
source_dir=${1:?usage: install.sh SOURCE_DIR}
python=$(command -v "${PYTHON:-python}")
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # absolute, symlink kept (a venv's python)

"$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
# The package with its [dali] extra (nvidia-dali-cuda120: CUDA 12 wheels; DALI's GPU operators need
# a CUDA 12 driver, its CPU operators run anywhere).
"$python" -m pip install --no-cache-dir --disable-pip-version-check "${source_dir}[dali]"
# Fail here, not in the first training job, if an import or the entrypoint is broken. From / so
# that the installed package is imported, not the source tree.
cd /
"$python" -c 'import partialfc, launcher, nvidia.dali; print("partialfc", partialfc.__version__, "DALI", nvidia.dali.__version__)'
"$python" -m launcher --help >/dev/null
