# The two set-up commands of the README:
#   make demo   install into .venv and run the main job
#   make test   install into .venv (with test extras) and run lint + the test suite (what CI runs)
# `make test` requires the compiled kernels: a missing or broken build fails the kernel tests
# instead of skipping them. Without a C++ compiler: `make test REQUIRE_KERNELS=0` (the kernel
# tests then skip with the loader's reason; see docs/testing.md).
# torch is pinned here, not in pyproject.toml: users bring their own torch, while our own
# machines must take the CPU build that lies on disk (a loose pin resolves to a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
REQUIRE_KERNELS ?= 1
PIP = $(VENV)/bin/pip --disable-pip-version-check -q
BIN = $(VENV)/bin

.PHONY: demo test lint install install-test kernels clean postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e . "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-base
	$(PIP) install -e ".[test]" "$(TORCH_PIN)"
	touch $@

# The compiled CPU kernels, ahead of time into the per-user kernel cache ($RNNDROP_KERNEL_DIR, else
# ~/.cache/rnndrop/kernels; a no-op when up to date), so no test pays the first-use compile. Without
# a compiler the layers still work on the reference path, so only a warning here; the kernel
# tests then fail under `make test` (RNNDROP_REQUIRE_KERNELS=1) and CI.
kernels: $(VENV)/.installed-base
	$(BIN)/rnndrop build-kernels --allow-failure

install: $(VENV)/.installed-base kernels
install-test: $(VENV)/.installed-test kernels

$(VENV)/.installed-cli: pyproject.toml $(VENV)/.installed-base
	$(PIP) install -e ".[cli]" "$(TORCH_PIN)"
	touch $@

demo: $(VENV)/.installed-cli kernels
	$(BIN)/rnndrop compare

lint: install-test
	$(BIN)/ruff check src tests benchmarks

# The PostgreSQL server binaries for the multi-worker study test (installed with apt-get when missing and root).
postgres:
	scripts/ensure-postgres.sh

test: install-test lint postgres
	RNNDROP_REQUIRE_KERNELS=$(REQUIRE_KERNELS) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
