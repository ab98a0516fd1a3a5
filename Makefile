# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A CPU wheel of this torch is on these machines; an unpinned torch pulls gigabytes of CUDA.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test install test-services clean

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

clean:
	rm -rf $(VENV) .test-services.env
