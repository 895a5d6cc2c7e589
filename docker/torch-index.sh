#!/bin/sh
# Where pip should take the pinned torch from, as pip options on stdout (nothing: pip's own indexes).
#   usage: docker/torch-index.sh 'torch==VERSION'      (the Makefile passes the pin of docker/constraints.txt)
# PyPI's Linux torch is the CUDA build (multi-GB, with the NVIDIA libraries): right on a GPU machine, waste on a
# CPU one. So: an NVIDIA GPU (nvidia-smi lists one) -> pip's indexes; a CPU build of the pinned version in a
# folder pip already searches (PIP_FIND_LINKS or find-links in pip's config) -> pip's indexes, which find it;
# otherwise PyTorch's CPU wheel index. PYTHON (default python3) is the interpreter whose pip config is read.
set -u
pin=${1:?usage: torch-index.sh 'torch==VERSION'}
version=${pin#torch==}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exit 0
fi
configured=$("${PYTHON:-python3}" -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p")
for folder in ${PIP_FIND_LINKS:-} $configured; do
  for wheel in "${folder#file://}"/torch-"$version"+cpu-*.whl; do
    [ -e "$wheel" ] && exit 0
  done
done
echo "--index-url https://download.pytorch.org/whl/cpu"
