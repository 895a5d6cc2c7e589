# Two entry points, both on a fresh machine with Python 3.11 and no GPU:
#   make test        set up .venv and run the whole test suite (what CI runs)
#   make quickstart  set up .venv and train on the embedded synthetic dataset
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU build of torch that lies on local disk; installed before the package so that
# resolving `torch>=2.4` never pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# MXNet is only a test oracle for .rec byte compatibility; it pins numpy<1.24, so it lives in
# its own venv and is never imported by the package.
MXNET_VENV ?= .venv-mxnet

.PHONY: setup test quickstart oracle clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

setup: $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,dali]"

$(MXNET_VENV)/bin/python:
	$(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q "mxnet==1.9.1" "numpy==1.23.5"

oracle: $(MXNET_VENV)/bin/python

test: setup oracle
	PARTIALFC_MXNET_PYTHON=$(MXNET_VENV)/bin/python $(PY) -m pytest -q $(PYTEST_ARGS)

quickstart: setup
	$(VENV)/bin/torchrun --nproc_per_node 2 -m partialfc.train --config configs/quickstart.yaml

clean:
	rm -rf $(VENV) $(MXNET_VENV) .pytest_cache
