# MoCo-Matryoshka. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_INSTALL := $(VENV)/bin/pip install --disable-pip-version-check -q
EXTRAS ?= cpu,train,serve,dev
# An extra package index for torch, e.g. https://download.pytorch.org/whl/cpu for the CPU-only
# build (README: "The CPU build of torch"); empty = PyPI's torch (the CUDA build, ~6 GB venv).
TORCH_INDEX ?=
HELP_TORCH_INDEX := extra index for torch (CPU build: https://download.pytorch.org/whl/cpu)

# Training knobs (any trainer flag can also go through ARGS="--flag value").
DATASET ?= shapes
HELP_DATASET := shapes | imagenet-100 | a Hugging Face id | a folder of class sub-folders
ARCH ?= convnet
HELP_ARCH := convnet (CPU) | resnet18 | resnet50
EPOCHS ?=
HELP_EPOCHS := training epochs (empty: the trainer's default, 40)
OUTPUT ?= runs/default
HELP_OUTPUT := the run folder: checkpoint.pt, eval.json, index/
NPROC ?= 2
HELP_NPROC := processes for train-ddp
ARGS ?=
HELP_ARGS := any other trainer flags, e.g. ARGS='--batch-size 64'
TRAIN ?=
HELP_TRAIN := 1: eval/serve train a run that does not exist yet (runs/default always does)
TRAIN_FLAGS := --dataset $(DATASET) --arch $(ARCH) --output-dir $(OUTPUT) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help setup train train-ddp eval rotate ablate compare serve test test-slow test-ui fuzz lint bench gpu-wheels \
	k8s-validate k8s-train k8s-eval k8s-serve k8s-logs docker-build docker-test k8s-podman-test clean

# `make help` lists these with their values as this command line sets them.
HELP_VARS := DATASET ARCH EPOCHS OUTPUT ARGS NPROC INDEX SPLIT SERVE_HOST SERVE_PORT TRAIN \
	TORCH_INDEX OVERLAY RUNTIME VARIANT GRID SEEDS
help: ## list the targets and the variables they read
	@echo "targets:"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/\$$(\([A-Z_]*\))/\1/g' | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo "variables (make <target> NAME=value), with their values now:"
	@$(foreach v,$(HELP_VARS),printf "  %-12s = %-20s %s\n" "$(v)" "$(if $($(v)),$($(v)),(empty))" "$(HELP_$(v))";)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (pip install -e '.[cpu,train,serve,dev]')

train: $(STAMP) ## train (default: built-in shapes, small CNN, CPU, a few minutes)
	$(PY) -m trainer.train $(TRAIN_FLAGS)

train-ddp: $(STAMP) ## train with NPROC local processes through torchrun (gloo on CPU)
	$(PY) -m trainer.train_distributed --num-gpus $(NPROC) $(TRAIN_FLAGS)

# A missing checkpoint is trained only for the default run or when asked (TRAIN=1): a typo in
# OUTPUT must not start a 40-epoch training.
$(OUTPUT)/checkpoint.pt:
	@if [ "$(OUTPUT)" != runs/default ] && [ "$(TRAIN)" != 1 ]; then \
		echo "make: $(OUTPUT)/checkpoint.pt does not exist; train it first with" \
			"\`make train OUTPUT=$(OUTPUT)\`, or add TRAIN=1 to train it now" >&2; exit 2; fi
	$(MAKE) train

eval: $(STAMP) $(OUTPUT)/checkpoint.pt ## kNN + mAP@k at every nesting dim -> $(OUTPUT)/eval.json + plot
	$(PY) -m trainer.evaluate --checkpoint $(OUTPUT)/checkpoint.pt --output $(OUTPUT)/eval.json

rotate: $(STAMP) $(OUTPUT)/checkpoint.pt ## post hoc: fit the PCA rotation (--rotation pca) on any finished checkpoint, in place
	$(PY) -m trainer.rotation $(OUTPUT)/checkpoint.pt

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint ## lint + fast tests (slow ones: make test-slow)
	$(PY) -m pytest -q

test-slow: $(STAMP) ## the slow tests (multi-process DDP, fault injection, real training)
	$(PY) -m pytest -q -m slow

# make fuzz: Schemathesis, all checks, against a real server with an index and an API key.
FUZZ_EXAMPLES ?= 50
FUZZ_TIME ?= 90
FUZZ_OUT ?=
fuzz: $(STAMP) ## schema-driven fuzzing of a real `python -m server` (FUZZ_EXAMPLES per operation, FUZZ_TIME s)
	$(PY) tests/fuzz_server.py --max-examples $(FUZZ_EXAMPLES) --max-time $(FUZZ_TIME) \
		$(if $(FUZZ_OUT),--out $(FUZZ_OUT))

# Debian's browser and driver (Selenium is pointed at them: no driver download).
UI_APT := chromium chromium-driver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

test-ui: $(STAMP) ## the search page in headless Chromium against a real server (installs chromium via apt)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "test-ui: installing $(UI_APT) with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			$(SUDO) apt-get install -y -qq --no-install-recommends $(UI_APT) >/dev/null; }
	$(PY) -m pytest -q -m ui --durations=5

clean: ## remove the venv and runs/
	rm -rf $(VENV) runs

# Containers and Kubernetes (docs/KUBERNETES.md). OVERLAY picks k8s/overlays/<name>, RUNTIME=trainjob
# k8s/overlays/trainjob/<name> (training as a Kubeflow Trainer TrainJob).
VARIANT ?= cpu
HELP_VARIANT := image variant: cpu | gpu
IMAGE_REPO ?= moco-matryoshka
DOCKERFILES := docker/trainer.Dockerfile docker/server.Dockerfile
OVERLAY ?= cpu
HELP_OVERLAY := k8s overlay: cpu | gpu | mig | dra/gpu | dra/mig (DRA claims)
RUNTIME ?= job
HELP_RUNTIME := k8s training: job (Indexed Job) | trainjob (Kubeflow Trainer >= v2.2)
K8S_OVERLAYS := gpu mig cpu
# Checked by k8s/validate.py: custom resources against the CRDs in k8s/crds/.
K8S_TRAINJOB_OVERLAYS := trainjob/gpu trainjob/mig trainjob/cpu trainjob/kueue
K8S_DRA_OVERLAYS := dra/gpu dra/mig
# Oldest supported (Job pod failure policy GA) and newest the offline schemas know.
K8S_VERSIONS ?= 1.31.0 1.37.0
# resource.k8s.io/v1 (DRA): v1.35 has it on by default.
K8S_DRA_VERSIONS ?= 1.35.0 1.37.0
K8S_NS ?=
K8S_WAIT ?= 30m
COMPONENT ?= train
KUBECTL ?= kubectl
KCTL := $(KUBECTL) $(if $(K8S_NS),--namespace $(K8S_NS))
K8S_DIR = k8s/overlays/$(if $(filter trainjob,$(RUNTIME)),trainjob/)$(OVERLAY)
KAPPLY = $(KCTL) apply -k $(K8S_DIR) -l 'app.kubernetes.io/component in (config,storage,$(1))'
K8S_CHECK = $(KUBECTL) kustomize $(1) | $(PY) k8s/validate.py --label $(1) $(foreach v,$(2),-k $(v)) -

k8s-validate: $(STAMP) ## render every k8s overlay, validate it offline (strict), hadolint the Dockerfiles
	@command -v $(KUBECTL) >/dev/null || { echo "k8s-validate: '$(KUBECTL)' not found; it renders the overlays (kubectl kustomize)" >&2; exit 1; }
	@set -eo pipefail; for o in $(K8S_OVERLAYS); do for v in $(K8S_VERSIONS); do \
		$(KUBECTL) kustomize k8s/overlays/$$o | \
			$(VENV)/bin/kubernetes-validate --strict --quiet -k $$v -; \
		echo "k8s/overlays/$$o: valid (Kubernetes $$v, strict)"; \
	done; done
	@set -eo pipefail; $(foreach o,$(K8S_TRAINJOB_OVERLAYS),$(call K8S_CHECK,k8s/overlays/$(o),$(K8S_VERSIONS));) \
		$(foreach o,$(K8S_DRA_OVERLAYS),$(call K8S_CHECK,k8s/overlays/$(o),$(K8S_DRA_VERSIONS));) \
		$(call K8S_CHECK,k8s/kueue,$(K8S_VERSIONS))
	$(VENV)/bin/hadolint $(DOCKERFILES)
	@echo "hadolint: $(DOCKERFILES) clean"

k8s-train: ## train on Kubernetes (OVERLAY, RUNTIME=job|trainjob); a rerun restarts the run, which resumes
	@case "$(RUNTIME)" in job|trainjob) ;; *) echo "k8s-train: RUNTIME must be job or trainjob, not '$(RUNTIME)'" >&2; exit 2;; esac
	$(KCTL) delete $(if $(filter trainjob,$(RUNTIME)),trainjob,job) moco-train --ignore-not-found --wait
	$(call KAPPLY,train)

k8s-eval: ## evaluate the run's checkpoint on Kubernetes -> /runs/<name>/eval.json
	$(KCTL) delete job moco-eval --ignore-not-found --wait
	$(call KAPPLY,eval)
	$(KCTL) wait --for=condition=complete --timeout=$(K8S_WAIT) job/moco-eval
	$(KCTL) logs job/moco-eval --tail=40

k8s-serve: ## build the index, then deploy the server (API key Secret created if missing)
	@$(KCTL) get secret moco-api-key >/dev/null 2>&1 || \
		$(KCTL) create secret generic moco-api-key \
			--from-literal=api-key="$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(32))')"
	$(KCTL) delete job moco-index --ignore-not-found --wait
	$(call KAPPLY,index)
	$(KCTL) wait --for=condition=complete --timeout=$(K8S_WAIT) job/moco-index
	$(call KAPPLY,server)
	$(KCTL) rollout status deployment/moco-server --timeout=$(K8S_WAIT)
	$(KCTL) rollout status deployment/moco-server-writer --timeout=$(K8S_WAIT)

k8s-logs: ## follow the logs of COMPONENT=train|eval|index|server on Kubernetes
	$(KCTL) logs -f --prefix --tail=100 --max-log-requests=32 \
		-l app.kubernetes.io/component=$(COMPONENT)

# Image builds and container runs: docker or podman, whichever answers (ENGINE=... to pick).
# Passed through from the command line or environment: PYTHON_BASE (debian: a base built from
# Debian packages), TORCH_INDEX_URL, PIP_CA, BUILD_FLAGS, RUN_FLAGS, CONTAINERS_CONF.
CONTAINER_ENV = VARIANT=$(VARIANT) IMAGE_REPO=$(IMAGE_REPO)

docker-build: ## build the trainer and server images (VARIANT=cpu|gpu) with docker or podman
	$(CONTAINER_ENV) ONLY_BUILD=1 docker/docker-test.sh

docker-test: ## build both images, then train/SIGTERM/resume/eval/index/serve in containers, timed
	$(CONTAINER_ENV) docker/docker-test.sh

k8s-podman-test: $(STAMP) ## run the OVERLAY's rendered pods (RUNTIME=job|trainjob) under podman kube play (images built)
	OVERLAY=$(OVERLAY) RUNTIME=$(RUNTIME) KUBECTL=$(KUBECTL) PY=$(PY) docker/k8s-podman-test.sh

# make ablate / make compare: a grid of trainer variants x seeds -> one table + plot (experiments.ablate).
GRID ?= grids/compare.toml
HELP_GRID := the ablation grid for make ablate
SEEDS ?=
HELP_SEEDS := seeds for make ablate/compare, e.g. 0,1,2
JOBS ?=
ABLATE_OUT ?=
set_by_user = $(filter command line environment,$(origin $(1)))
# Only knobs given on the command line reach the grid's runs (the grid file holds the rest).
ABLATE_TRAIN_ARGS = $(if $(call set_by_user,DATASET),--dataset $(DATASET)) \
	$(if $(call set_by_user,ARCH),--arch $(ARCH)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)
ABLATE_FLAGS = $(if $(SEEDS),--seeds $(SEEDS)) $(if $(JOBS),--jobs $(JOBS)) \
	$(if $(strip $(ABLATE_TRAIN_ARGS)),--train-args="$(strip $(ABLATE_TRAIN_ARGS))")

ablate: $(STAMP) ## GRID=grids/x.toml variants x SEEDS=0,1,2, parallel + resumable -> table.md/json/png
	$(PY) -m experiments.ablate $(GRID) $(ABLATE_FLAGS) $(if $(ABLATE_OUT),--out $(ABLATE_OUT))

COMPARE_DIR ?= runs/compare
compare: $(STAMP) ## Matryoshka vs truncated baseline vs FF-8/FF-32 vs random init (grids/compare.toml)
	$(PY) -m experiments.ablate grids/compare.toml $(ABLATE_FLAGS) --out $(COMPARE_DIR)
	$(PY) -m experiments.dtype_report grids/compare.toml --runs $(COMPARE_DIR) --out $(COMPARE_DIR)/dtypes

# Serving (docs/SERVING.md): index the training split once, then serve on 127.0.0.1:8000.
INDEX ?= $(OUTPUT)/index
HELP_INDEX := the index folder make serve builds and serves
SERVE_HOST ?= 127.0.0.1
HELP_SERVE_HOST := the address make serve listens on
SERVE_PORT ?= 8000
HELP_SERVE_PORT := the port make serve listens on

SPLIT ?= train
HELP_SPLIT := which part of the trainer's split make index/serve index: train | test | all
INDEX_FLAGS = --checkpoint $(OUTPUT)/checkpoint.pt --dataset $(DATASET) --split $(SPLIT) \
	--out $(INDEX)

$(INDEX)/manifest.json: | $(STAMP) $(OUTPUT)/checkpoint.pt
	$(PY) -m trainer.build_index $(INDEX_FLAGS)

.PHONY: index
index: $(STAMP) $(OUTPUT)/checkpoint.pt ## index SPLIT=train|test|all of DATASET with OUTPUT's checkpoint -> INDEX
	$(PY) -m trainer.build_index $(INDEX_FLAGS)

serve: $(STAMP) $(OUTPUT)/checkpoint.pt $(INDEX)/manifest.json ## serve embeddings + search (builds the index if missing)
	$(PY) -m server --checkpoint $(OUTPUT)/checkpoint.pt --index-dir $(INDEX) \
		--host $(SERVE_HOST) --port $(SERVE_PORT)

# The GPU machine (docs/GPU.md) has Python 3.12 with torch, torchvision, numpy, pillow, pyarrow,
# tensorboard, httpx... but no registry: the project's other needs travel as wheels, at the
# versions this venv runs.
GPU_WHEELS := datasets dill multiprocess fastapi starlette pydantic pydantic-core \
	pydantic-settings python-dotenv annotated-types typing-inspection uvicorn python-multipart \
	faiss-cpu opentelemetry-api typing-extensions
GPU_PY ?= 3.12
WHEEL_DIR ?= .whl

gpu-wheels: $(STAMP) ## wheels (Python $(GPU_PY), x86_64) the offline GPU machine lacks -> $(WHEEL_DIR)/
	mkdir -p $(WHEEL_DIR)
	$(PY) -c 'import sys; from importlib.metadata import version; \
		print("\n".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $(GPU_WHEELS) \
		> $(WHEEL_DIR)/requirements.txt
	$(VENV)/bin/pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
		--python-version $(GPU_PY) --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(WHEEL_DIR) -r $(WHEEL_DIR)/requirements.txt
	@ls $(WHEEL_DIR)/*.whl | wc -l | xargs echo "wheels in $(WHEEL_DIR):"

bench: $(STAMP) ## run the benchmarks in bench/ (ratios on stdout, JSON in bench/results/)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done
