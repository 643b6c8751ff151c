# MoCo-Matryoshka. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_INSTALL := $(VENV)/bin/pip install --disable-pip-version-check -q
EXTRAS ?= cpu,dev

# Training knobs (any trainer flag can also go through ARGS="--flag value").
DATASET ?= shapes
ARCH ?= convnet
EPOCHS ?=
OUTPUT ?= runs/default
NPROC ?= 2
ARGS ?=
TRAIN_FLAGS := --dataset $(DATASET) --arch $(ARCH) --output-dir $(OUTPUT) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help setup train train-ddp eval compare serve test test-slow lint bench \
	k8s-validate k8s-train k8s-eval k8s-serve k8s-logs docker-build clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (pip install -e '.[cpu,dev]')

train: $(STAMP) ## train (default: built-in shapes, small CNN, CPU, a few minutes)
	$(PY) -m trainer.train $(TRAIN_FLAGS)

train-ddp: $(STAMP) ## train with NPROC local processes through torchrun (gloo on CPU)
	$(PY) -m trainer.train_distributed --num-gpus $(NPROC) $(TRAIN_FLAGS)

$(OUTPUT)/checkpoint.pt:
	$(MAKE) train

eval: $(STAMP) $(OUTPUT)/checkpoint.pt ## kNN + mAP@k at every nesting dim -> $(OUTPUT)/eval.json + plot
	$(PY) -m trainer.evaluate --checkpoint $(OUTPUT)/checkpoint.pt --output $(OUTPUT)/eval.json

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint ## lint + fast tests (slow ones: make test-slow)
	$(PY) -m pytest -q

test-slow: $(STAMP) ## the slow tests (multi-process DDP, fault injection, real training)
	$(PY) -m pytest -q -m slow

clean: ## remove the venv and runs/
	rm -rf $(VENV) runs
