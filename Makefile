# Set-up on a fresh machine is part of every target: `.venv` is created when
# missing and the project is (re)installed when its metadata changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: install lint test test-slow demo bench bench-compare clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# a venv made before 0.2 had tensorflow-cpu: remove it, or it would overlay the full tensorflow
	$(PY) -m pip uninstall --quiet --yes tensorflow-cpu 2>/dev/null || true
	$(PY) -m pip install --quiet -e ".[all,test,lint]"
	touch $(STAMP)

install: $(STAMP)

# ruff (lint + format check) and mypy; `make test` runs them first
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# lint, type check, then the suite with every docstring example (--doctest-modules, see pyproject.toml)
test: lint
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/prox_scaling.py
	$(PY) benchmarks/step_overhead.py

bench-compare: $(STAMP)
	$(PY) benchmarks/compare.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
