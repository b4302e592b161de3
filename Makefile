# Set-up and the two commands of the README. Everything is installed into .venv from this repo's
# own files (pyproject.toml + constraints.txt, the committed lock of every version).
#
#   make repro   install what the pipeline needs, then `dvc repro` the default pipeline
#   make test    install what the tests need, then run the test suite (fast tests by default)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The package asks for torch>=2.2 (CUDA, MPS and CPU builds all fit). Where no NVIDIA GPU is
# visible, pin the CPU build; on a GPU machine keep whatever torch is there, or let pip choose.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install repro test test-all lint bench bench-pipeline check-lock clean-venv plots-diff check-remote pod

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m ehrseq.ops.offline_plots .dvc/plots-offline.html >/dev/null
	$(BIN)/python -m ehrseq.evaluate.umap_cache   # compile umap-learn's numba code once
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src stages tests bench docs/tools

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/ingest.py

# The whole default DAG from a fresh clone, stage by stage, against the 15-minute budget
bench-pipeline: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/pipeline.py

# A fresh clone of HEAD recomputes the data stages and compares them with the committed dvc.lock
# (docs/architecture.md, Reproducibility): make check-lock CHECK_LOCK_ARGS="--rev main"
CHECK_LOCK_ARGS ?=
check-lock: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/check_lock.py $(CHECK_LOCK_ARGS)

check-remote: install
	$(BIN)/python -m ehrseq.ops.pod check-remote

# On a rented GPU machine: make pod POD_ARGS="-S model.size=large --require-gpu"
pod: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m ehrseq.ops.pod run $(POD_ARGS)

# Compare plots with another revision, rendered offline (Vega inlined): make plots-diff REV=main
REV ?= HEAD
plots-diff: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc plots diff $(REV) -o plots-diff
	@echo "open plots-diff/index.html (works without network)"

clean-venv:
	rm -rf $(VENV)
