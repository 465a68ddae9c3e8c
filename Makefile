# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create/refresh .venv. torch==2.13.0 is installed explicitly first: a bare
# `torch` requirement could pull a multi-GB CUDA build from the registry.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.inductor-quant-installed

.PHONY: venv demo test test-slow accuracy clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,accuracy]" "$(TORCH)"
	touch $(STAMP)

demo: venv
	$(PY) -m inductor_quant demo

test: venv
	$(PY) -m pytest -q -m "not slow" tests

accuracy: venv   # both real-model accuracy tables (data: sh benchmarks/accuracy/install.sh)
	$(PY) -m inductor_quant.benchmarks.accuracy

test-slow: venv
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build dist *.egg-info
