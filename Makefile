# Quick start: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

# the runtime alone (what `make demo` needs); the test and lint tools on top for the rest
$(RUNTIME): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: $(RUNTIME)
	$(VENV)/bin/swav demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP) typecheck
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PIP) -e '.[bench]'
	$(PY) benchmarks/perf.py --memory && $(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) runs .pytest_cache
